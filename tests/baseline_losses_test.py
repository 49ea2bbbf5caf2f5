"""Baseline losses (re-weighting, focal, CB, LDAM, logit-adjusted, weighted CE) against NumPy references."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cdt_tf import catalog, class_stats, losses, schedules
from cdt_tf.callbacks import VariableSchedule

COUNTS = [400, 100, 25, 16]
LABELS = np.array([0, 1, 2, 3, 2, 1, 0, 0], np.int64)
RNG = np.random.default_rng(3)
LOGITS = RNG.normal(size=(len(LABELS), len(COUNTS))).astype(np.float32)
COSINES = np.tanh(LOGITS).astype(np.float32)  # In [-1, 1], like a cosine classifier's output.
SAMPLE_WEIGHT = np.array([1.0, 0.5, 2.0, 0.0, 1.0, 1.5, 1.0, 0.25], np.float32)


def log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def nll(z, labels):
    return -log_softmax(z)[np.arange(len(labels)), labels]


def reduce(per_example, labels, class_weights, weight_reduction, sample_weight=None):
    """Keras "sum_over_batch_size" of w_y * l (per weight_reduction) times sample weights."""
    w = np.asarray(class_weights, np.float64)[labels]
    values = per_example * w
    if weight_reduction == "weights":
        values = values / w.mean()
    if sample_weight is not None:
        values = values * sample_weight
    return values.sum() / len(labels)


def keras_value(loss, y_pred, sample_weight=None):
    return float(keras.ops.convert_to_numpy(loss(LABELS, y_pred, sample_weight=sample_weight)))


# ----------------------------------------------------------------------------- class weights


def test_reweighting_weights_average_one_and_follow_counts():
    weights = class_stats.reweighting_weights(COUNTS, 0.5)
    np.testing.assert_allclose(weights.mean(), 1.0)
    np.testing.assert_allclose(weights[0] / weights[3], (16 / 400) ** 0.5)
    np.testing.assert_allclose(class_stats.reweighting_weights(COUNTS, 0.0), np.ones(4))


def test_effective_number_weights_match_cui_formula():
    beta = 0.999
    effective = (1 - beta ** np.asarray(COUNTS, np.float64)) / (1 - beta)
    expected = (1 / effective) / (1 / effective).sum() * len(COUNTS)
    np.testing.assert_allclose(class_stats.effective_number_weights(COUNTS, beta), expected)
    assert class_stats.effective_number_weights(COUNTS, beta).sum() == pytest.approx(4.0)
    np.testing.assert_allclose(class_stats.effective_number_weights(COUNTS, 0.0), np.ones(4))


def test_ldam_margins_largest_for_smallest_class():
    margins = class_stats.ldam_margins(COUNTS, 0.5)
    assert margins.max() == pytest.approx(0.5) and margins.argmax() == 3
    np.testing.assert_allclose(margins[0], 0.5 * (16 / 400) ** 0.25)


@pytest.mark.parametrize(
    "call",
    [
        lambda: class_stats.reweighting_weights(COUNTS, -1.0),
        lambda: class_stats.effective_number_weights(COUNTS, 1.0),
        lambda: class_stats.ldam_margins([10, 0], 0.5),
    ],
)
def test_bad_class_weight_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


# ----------------------------------------------------------------------------- each loss


@pytest.mark.parametrize("weight_reduction", ["weights", "batch_size"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_reweighted_cross_entropy(gamma, weight_reduction):
    loss = losses.ReweightedCrossEntropy(COUNTS, gamma, weight_reduction=weight_reduction)
    weights = class_stats.reweighting_weights(COUNTS, gamma)
    expected = reduce(nll(LOGITS, LABELS), LABELS, weights, weight_reduction, SAMPLE_WEIGHT)
    assert keras_value(loss, LOGITS, SAMPLE_WEIGHT) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("focal_gamma", [0.0, 1.0, 2.0])
def test_focal_loss(focal_gamma):
    loss = losses.FocalLoss(COUNTS, focal_gamma)
    p = np.exp(-nll(LOGITS, LABELS))
    expected = reduce((1 - p) ** focal_gamma * nll(LOGITS, LABELS), LABELS, np.ones(4), "weights")
    assert keras_value(loss, LOGITS) == pytest.approx(expected, rel=1e-5)


def test_focal_gamma_zero_is_cross_entropy():
    plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert keras_value(losses.FocalLoss(COUNTS, 0.0), LOGITS) == pytest.approx(
        keras_value(plain, LOGITS), rel=1e-6
    )


@pytest.mark.parametrize("focal_gamma", [0.0, 1.0])
@pytest.mark.parametrize("weight_reduction", ["weights", "batch_size"])
def test_class_balanced_loss(focal_gamma, weight_reduction):
    beta = 0.999
    loss = losses.ClassBalancedLoss(COUNTS, beta, focal_gamma, weight_reduction=weight_reduction)
    p = np.exp(-nll(LOGITS, LABELS))
    per_example = (1 - p) ** focal_gamma * nll(LOGITS, LABELS)
    weights = class_stats.effective_number_weights(COUNTS, beta)
    expected = reduce(per_example, LABELS, weights, weight_reduction, SAMPLE_WEIGHT)
    assert keras_value(loss, LOGITS, SAMPLE_WEIGHT) == pytest.approx(expected, rel=1e-5)


def test_ldam_loss_subtracts_the_margin_from_the_true_class_only():
    loss = losses.LDAMLoss(COUNTS, max_margin=0.5, scale=30.0)
    margins = class_stats.ldam_margins(COUNTS, 0.5)
    adjusted = COSINES.astype(np.float64).copy()
    adjusted[np.arange(len(LABELS)), LABELS] -= margins[LABELS]
    expected = nll(30.0 * adjusted, LABELS).mean()
    assert keras_value(loss, COSINES) == pytest.approx(expected, rel=1e-5)


def test_ldam_with_drw_weights():
    weights = class_stats.effective_number_weights(COUNTS, 0.9999)
    loss = losses.LDAMLoss(COUNTS, class_weights=weights.tolist())
    margins = class_stats.ldam_margins(COUNTS, 0.5)
    adjusted = COSINES.astype(np.float64).copy()
    adjusted[np.arange(len(LABELS)), LABELS] -= margins[LABELS]
    expected = reduce(nll(30.0 * adjusted, LABELS), LABELS, weights, "weights", SAMPLE_WEIGHT)
    assert keras_value(loss, COSINES, SAMPLE_WEIGHT) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("tau", [0.0, 1.0, 1.5])
def test_logit_adjusted_loss(tau):
    loss = losses.LogitAdjustedLoss(COUNTS, tau)
    prior = np.asarray(COUNTS, np.float64) / sum(COUNTS)
    expected = nll(LOGITS + tau * np.log(prior), LABELS).mean()
    assert keras_value(loss, LOGITS) == pytest.approx(expected, rel=1e-5)


def test_weighted_cross_entropy_all_ones_is_plain_cross_entropy():
    plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    ours = losses.WeightedCrossEntropy(COUNTS)
    assert keras_value(ours, LOGITS, SAMPLE_WEIGHT) == pytest.approx(
        keras_value(plain, LOGITS, SAMPLE_WEIGHT), rel=1e-6
    )


def test_cdt_loss_with_class_weights():
    weights = [0.5, 1.0, 2.0, 0.5]
    loss = losses.CDTLoss(COUNTS, 0.3, class_weights=weights)
    temperatures = class_stats.class_temperatures(COUNTS, 0.3)
    expected = reduce(nll(LOGITS / temperatures, LABELS), LABELS, weights, "weights")
    assert keras_value(loss, LOGITS) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: losses.WeightedCrossEntropy(COUNTS, class_weights=[1.0, 2.0]),
        lambda: losses.WeightedCrossEntropy(COUNTS, weight_reduction="sum"),
        lambda: losses.FocalLoss(COUNTS, -1.0),
        lambda: losses.LDAMLoss(COUNTS, scale=0.0),
        lambda: losses.ReweightedCrossEntropy([10, 0, 3], 1.0),
    ],
)
def test_bad_loss_arguments_raise(make):
    with pytest.raises(ValueError):
        make()


def test_weight_reductions_match_config_vocabulary():

    assert catalog.WEIGHT_REDUCTIONS == losses.WEIGHT_REDUCTIONS


# ----------------------------------------------------------------------------- soft labels [B, C]
# A mixed pair q = lam e_a + (1 - lam) e_b per row (plus one-hot rows and one spread row).
SOFT_LABELS = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.7, 0.0, 0.3],
        [0.25, 0.25, 0.25, 0.25],
        [0.0, 0.0, 0.6, 0.4],
        [0.1, 0.0, 0.9, 0.0],
        [0.0, 0.5, 0.5, 0.0],
        [0.0, 0.0, 0.0, 1.0],
        [0.8, 0.2, 0.0, 0.0],
    ],
    np.float32,
)
ONE_HOT = np.eye(len(COUNTS), dtype=np.float32)[LABELS]


def soft_nll(z, targets):
    return -(np.asarray(targets, np.float64) * log_softmax(z)).sum(1)


def reduce_soft(per_example, targets, class_weights, weight_reduction, sample_weight=None):
    """`reduce` with the soft label's weight w_n = sum_c q_nc w_c."""
    w = np.asarray(targets, np.float64) @ np.asarray(class_weights, np.float64)
    values = per_example * w
    if weight_reduction == "weights":
        values = values / w.mean()
    if sample_weight is not None:
        values = values * sample_weight
    return values.sum() / len(targets)


def ldam_per_target(z, counts, max_margin, scale):
    """[B, C]: LDAM's loss of each example with target c (margin m_c on logit c), by brute force."""
    margins = class_stats.ldam_margins(counts, max_margin)
    out = np.zeros(z.shape)
    for c in range(z.shape[1]):
        adjusted = np.asarray(z, np.float64).copy()
        adjusted[:, c] -= margins[c]
        out[:, c] = -log_softmax(scale * adjusted)[:, c]
    return out


EFFECTIVE = class_stats.effective_number_weights(COUNTS, 0.999)
DRW_WEIGHTS = [0.5, 1.0, 2.0, 0.5]

# name -> (loss factory, NumPy soft-label per-example loss (targets, z), its class weights).
SOFT_CASES = {
    "weighted_ce": (
        lambda **kw: losses.WeightedCrossEntropy(COUNTS, class_weights=DRW_WEIGHTS, **kw),
        lambda q, z: soft_nll(z, q),
        DRW_WEIGHTS,
    ),
    "cdt": (
        lambda **kw: losses.CDTLoss(COUNTS, 0.3, class_weights=DRW_WEIGHTS, **kw),
        lambda q, z: soft_nll(z / class_stats.class_temperatures(COUNTS, 0.3), q),
        DRW_WEIGHTS,
    ),
    "reweight": (
        lambda **kw: losses.ReweightedCrossEntropy(COUNTS, 0.5, **kw),
        lambda q, z: soft_nll(z, q),
        class_stats.reweighting_weights(COUNTS, 0.5),
    ),
    "focal": (
        lambda **kw: losses.FocalLoss(COUNTS, 2.0, **kw),
        lambda q, z: -(q * (1 - np.exp(log_softmax(z))) ** 2.0 * log_softmax(z)).sum(1),
        np.ones(4),
    ),
    "cb": (
        lambda **kw: losses.ClassBalancedLoss(COUNTS, 0.999, 1.0, **kw),
        lambda q, z: -(q * (1 - np.exp(log_softmax(z))) * log_softmax(z)).sum(1),
        EFFECTIVE,
    ),
    "ldam": (
        lambda **kw: losses.LDAMLoss(COUNTS, 0.5, 30.0, class_weights=DRW_WEIGHTS, **kw),
        lambda q, z: (q * ldam_per_target(z, COUNTS, 0.5, 30.0)).sum(1),
        DRW_WEIGHTS,
    ),
    "la": (
        lambda **kw: losses.LogitAdjustedLoss(COUNTS, 1.0, **kw),
        lambda q, z: soft_nll(z + np.log(np.asarray(COUNTS, np.float64) / sum(COUNTS)), q),
        np.ones(4),
    ),
}


def _inputs(name):
    return COSINES if name == "ldam" else LOGITS  # LDAM's z come from a cosine classifier.


@pytest.mark.parametrize("weight_reduction", ["weights", "batch_size"])
@pytest.mark.parametrize("name", sorted(SOFT_CASES))
def test_soft_labels_against_numpy(name, weight_reduction):
    make, per_example, class_weights = SOFT_CASES[name]
    z = _inputs(name)
    loss = make(weight_reduction=weight_reduction)
    expected = reduce_soft(
        per_example(SOFT_LABELS, z), SOFT_LABELS, class_weights, weight_reduction, SAMPLE_WEIGHT
    )
    got = float(keras.ops.convert_to_numpy(loss(SOFT_LABELS, z, sample_weight=SAMPLE_WEIGHT)))
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("weight_reduction", ["weights", "batch_size"])
@pytest.mark.parametrize("name", sorted(SOFT_CASES))
def test_one_hot_soft_labels_give_the_sparse_loss(name, weight_reduction):
    z = _inputs(name)
    loss = SOFT_CASES[name][0](weight_reduction=weight_reduction)
    for sample_weight in (None, SAMPLE_WEIGHT):
        sparse = loss(LABELS, z, sample_weight=sample_weight)
        soft = loss(ONE_HOT, z, sample_weight=sample_weight)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(soft), keras.ops.convert_to_numpy(sparse), rtol=1e-6
        )


@pytest.mark.parametrize("name", sorted(SOFT_CASES))
def test_soft_labels_with_sum_reduction(name):
    make, per_example, class_weights = SOFT_CASES[name]
    z = _inputs(name)
    weights = SOFT_LABELS.astype(np.float64) @ np.asarray(class_weights, np.float64)
    expected = (per_example(SOFT_LABELS, z) * weights / weights.mean()).sum()
    got = float(keras.ops.convert_to_numpy(make(reduction="sum")(SOFT_LABELS, z)))
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "loss",
    [
        losses.LDAMLoss(COUNTS, 0.5, 30.0),
        losses.FocalLoss(COUNTS, 2.0),
        losses.CDTLoss(COUNTS, 0.3),
        losses.LogitAdjustedLoss(COUNTS, 1.0),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_a_mixed_label_gives_the_mixed_loss_of_the_reference_codes(loss):
    """Unit weights: loss(lam e_a + (1 - lam) e_b) = lam loss(a) + (1 - lam) loss(b), as mixup_criterion."""
    z, lam = (COSINES if isinstance(loss, losses.LDAMLoss) else LOGITS), 0.3
    partner = LABELS[::-1].copy()
    mixed = lam * ONE_HOT + (1 - lam) * np.eye(4, dtype=np.float32)[partner]
    expected = lam * float(loss(LABELS, z)) + (1 - lam) * float(loss(partner, z))
    assert float(loss(mixed, z)) == pytest.approx(expected, rel=1e-5)


# Logits with a confident row (softmax near one-hot at LDAM's scale 30) and a tie, and their mixed labels.
EXTREME_LOGITS = np.array([[1.0, -1.0, -1.0, -1.0], [0.5, 0.5, 0.5, 0.5]], np.float32)
EXTREME_A, EXTREME_B = np.array([0, 3]), np.array([1, 0])


def _gradient(loss, labels, z):
    import tensorflow as tf

    logits = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        value = loss(labels, logits)
    return tape.gradient(value, logits).numpy()


@pytest.mark.parametrize("name", sorted(SOFT_CASES))
def test_soft_label_gradients_are_finite(name):
    loss = SOFT_CASES[name][0]()
    z = np.concatenate([_inputs(name), EXTREME_LOGITS])
    labels = np.concatenate([SOFT_LABELS, [[0.3, 0.7, 0, 0], [0.3, 0, 0, 0.7]]]).astype(np.float32)
    assert np.isfinite(_gradient(loss, labels, z)).all()


@pytest.mark.parametrize(
    "loss",
    [
        losses.LDAMLoss(COUNTS, 0.5, 30.0),
        losses.FocalLoss(COUNTS, 2.0),
        losses.CDTLoss(COUNTS, 0.3),
        losses.LogitAdjustedLoss(COUNTS, 1.0),
        losses.WeightedCrossEntropy(COUNTS),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_soft_label_gradients_are_the_mixed_gradients(loss):
    """Unit weights: d loss(mixed) / dz = lam d loss(a) / dz + (1 - lam) d loss(b) / dz."""
    lam = 0.3
    z = np.concatenate([COSINES if isinstance(loss, losses.LDAMLoss) else LOGITS, EXTREME_LOGITS])
    labels_a = np.concatenate([LABELS, EXTREME_A])
    labels_b = np.concatenate([LABELS[::-1], EXTREME_B])
    mixed = lam * np.eye(4, dtype=np.float32)[labels_a] + (1 - lam) * np.eye(4, dtype=np.float32)[labels_b]
    expected = lam * _gradient(loss, labels_a, z) + (1 - lam) * _gradient(loss, labels_b, z)
    np.testing.assert_allclose(_gradient(loss, mixed, z), expected, atol=1e-6)


def test_plain_cross_entropy_takes_soft_labels_when_batches_are_mixed():
    from cdt_tf import objective
    from cdt_tf.config import Config

    plain = Config(dataset="digits", model_dir="/tmp/run").validate()
    mixed = Config(dataset="digits", model_dir="/tmp/run", mixup_alpha=0.2).validate()
    assert isinstance(objective.build_loss(plain, COUNTS), keras.losses.SparseCategoricalCrossentropy)
    loss = objective.build_loss(mixed, COUNTS)
    assert isinstance(loss, losses.WeightedCrossEntropy)
    keras_ce = keras.losses.CategoricalCrossentropy(from_logits=True)
    assert float(loss(SOFT_LABELS, LOGITS)) == pytest.approx(float(keras_ce(SOFT_LABELS, LOGITS)), rel=1e-6)
    sparse_ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert float(loss(LABELS, LOGITS)) == pytest.approx(float(sparse_ce(LABELS, LOGITS)), rel=1e-6)


# ----------------------------------------------------------------------------- serialisation


@pytest.mark.parametrize(
    "loss",
    [
        losses.WeightedCrossEntropy(COUNTS, class_weights=[1.0, 2.0, 3.0, 4.0]),
        losses.ReweightedCrossEntropy(COUNTS, 0.7, weight_reduction="batch_size"),
        losses.FocalLoss(COUNTS, 2.0),
        losses.ClassBalancedLoss(COUNTS, 0.99, 1.0),
        losses.LDAMLoss(COUNTS, 0.3, 10.0),
        losses.LogitAdjustedLoss(COUNTS, 0.8),
        losses.CDTLoss(COUNTS, 0.4, class_weights=[1.0, 1.0, 2.0, 2.0]),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_losses_round_trip_through_keras_serialization(loss):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    for y_pred in (LOGITS, COSINES):
        assert keras_value(restored, y_pred, SAMPLE_WEIGHT) == pytest.approx(
            keras_value(loss, y_pred, SAMPLE_WEIGHT), rel=1e-6
        )


# ----------------------------------------------------------------------------- switch points


def test_gamma_schedules():
    assert [schedules.gamma_at(e, 0.4, "step", 3) for e in range(5)] == [0, 0, 0, 0.4, 0.4]
    assert [schedules.gamma_at(e, 0.4, "linear", 4) for e in range(6)] == pytest.approx(
        [0, 0.1, 0.2, 0.3, 0.4, 0.4]
    )
    assert schedules.gamma_at(7, 0.4) == 0.4
    with pytest.raises(ValueError):
        schedules.gamma_at(0, 0.4, "step", 0)


def test_deferred_weights_switch_at_drw_epoch():
    weights = [0.5, 2.0]
    assert schedules.deferred_weights_at(2, weights, 3) == [1.0, 1.0]
    assert schedules.deferred_weights_at(3, weights, 3) == weights
    assert schedules.deferred_weights_at(0, weights, 0) == weights  # 0: off, weights from the start.


def _fit_epochs(loss, callback, epochs):
    """Fits a tiny model; returns the mean training loss Keras logs per epoch."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)  # lr 0: the weights stay put.
    history = model.fit(
        LOGITS, LABELS, batch_size=len(LABELS), epochs=epochs, callbacks=[callback], verbose=0
    )
    return model, history.history["loss"]


def test_drw_callback_switches_the_loss_at_its_epoch():
    """With a frozen model the logged loss equals the NumPy loss with the weights in force that epoch."""
    weights = class_stats.effective_number_weights(COUNTS, 0.999).tolist()
    loss = losses.LDAMLoss(COUNTS, class_weights=[1.0] * 4)
    callback = VariableSchedule(loss.class_weights, lambda e: schedules.deferred_weights_at(e, weights, 2))
    model, logged = _fit_epochs(loss, callback, 4)
    z = keras.ops.convert_to_numpy(model(LOGITS)).astype(np.float64)
    margins = class_stats.ldam_margins(COUNTS, 0.5)
    adjusted = z.copy()
    adjusted[np.arange(len(LABELS)), LABELS] -= margins[LABELS]
    per_example = nll(30.0 * adjusted, LABELS)
    before = reduce(per_example, LABELS, np.ones(4), "weights")
    after = reduce(per_example, LABELS, weights, "weights")
    assert logged == pytest.approx([before, before, after, after], rel=1e-4)
    assert before != pytest.approx(after, rel=1e-3)


def test_gamma_callback_moves_cdt_temperatures_at_its_epoch():
    loss = losses.CDTLoss(COUNTS, 0.0)
    callback = VariableSchedule(loss.gamma, lambda e: schedules.gamma_at(e, 0.5, "step", 1))
    model, logged = _fit_epochs(loss, callback, 3)
    z = keras.ops.convert_to_numpy(model(LOGITS)).astype(np.float64)
    before = nll(z, LABELS).mean()
    after = nll(z / class_stats.class_temperatures(COUNTS, 0.5), LABELS).mean()
    assert logged == pytest.approx([before, after, after], rel=1e-4)


def test_public_api_exports_every_name():
    import cdt_tf

    for name in cdt_tf.__all__:
        assert getattr(cdt_tf, name) is not None, name
    assert cdt_tf.LDAMLoss is losses.LDAMLoss and cdt_tf.ldam_margins is class_stats.ldam_margins
