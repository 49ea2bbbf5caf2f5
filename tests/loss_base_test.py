"""--prior_tau, the prior adjustment every loss takes (loss_base), against NumPy references.

The training logits get tau * log pi_c added after the loss's own transform (CDT's z / a, LDAM's s z):
with tau = 1 plain cross-entropy is Balanced Softmax, -log(pi_y e^{z_y} / sum_c pi_c e^{z_c}).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

# The tiny arrays of the CDT loss's tests and the soft labels of the baselines' tests.
from baseline_losses_test import SOFT_LABELS as BASELINE_SOFT_LABELS
from losses_test import COUNTS, LABELS, LOGITS

from cdt_tf import class_stats, losses, objective
from cdt_tf.config import Config
from cdt_tf.errors import UserError

PRIOR = np.array(COUNTS, np.float64) / sum(COUNTS)  # pi_c = N_c / N.
COSINES = np.tanh(LOGITS).astype(np.float32)  # LDAM's z: a cosine classifier's output.
SOFT_LABELS = BASELINE_SOFT_LABELS[: len(LOGITS)]  # Mixed pairs, one-hot and spread rows.


def log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def value(loss, y_true, y_pred):
    return float(keras.ops.convert_to_numpy(loss(y_true, y_pred)))


def test_cross_entropy_with_prior_tau_one_is_balanced_softmax():
    # Ren et al. 2020: -log(pi_y e^{z_y} / sum_c pi_c e^{z_c}), written out without log-softmax.
    z = LOGITS.astype(np.float64)
    weighted = PRIOR * np.exp(z)
    expected = np.mean(-np.log(weighted[np.arange(len(LABELS)), LABELS] / weighted.sum(1)))
    loss = losses.WeightedCrossEntropy(COUNTS, prior_tau=1.0)
    assert value(loss, LABELS, LOGITS) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("gamma, tau", [(0.5, 1.0), (0.3, 0.7), (1.0, 2.0)])
def test_cdt_temperatures_and_the_prior_combine(gamma, tau):
    # -log softmax(z / a + tau log pi)[y]: the prior is added after the division, not divided by a.
    temperatures = class_stats.class_temperatures(COUNTS, gamma)
    adjusted = LOGITS / temperatures + tau * np.log(PRIOR)
    expected = np.mean(-log_softmax(adjusted)[np.arange(len(LABELS)), LABELS])
    loss = losses.CDTLoss(COUNTS, gamma, prior_tau=tau)
    assert value(loss, LABELS, LOGITS) == pytest.approx(expected, rel=1e-6)
    divided_prior = np.mean(-log_softmax((LOGITS + tau * np.log(PRIOR)) / temperatures)[np.arange(6), LABELS])
    assert value(loss, LABELS, LOGITS) != pytest.approx(divided_prior, rel=1e-3)


@pytest.mark.parametrize("weight_reduction", ["weights", "batch_size"])
def test_soft_labels_take_the_adjusted_cross_entropy(weight_reduction):
    # -sum_c q_c log softmax(z / a + tau log pi)_c, weighted by w_n = sum_c q_c w_c.
    weights = np.array([0.5, 1.0, 2.0, 0.5])
    temperatures = class_stats.class_temperatures(COUNTS, 0.5)
    per_example = -(SOFT_LABELS * log_softmax(LOGITS / temperatures + 0.8 * np.log(PRIOR))).sum(1)
    w = SOFT_LABELS @ weights
    if weight_reduction == "weights":
        w = w / w.mean()
    expected = np.mean(per_example * w)
    loss = losses.CDTLoss(
        COUNTS, 0.5, class_weights=weights.tolist(), weight_reduction=weight_reduction, prior_tau=0.8
    )
    assert value(loss, SOFT_LABELS, LOGITS) == pytest.approx(expected, rel=1e-6)


def test_focal_and_ldam_take_the_prior_on_the_softmax_input():
    tau, rows = 1.5, np.arange(len(LABELS))
    log_p = log_softmax(LOGITS + tau * np.log(PRIOR))[rows, LABELS]
    focal = np.mean((1 - np.exp(log_p)) ** 2.0 * -log_p)
    assert value(losses.FocalLoss(COUNTS, 2.0, prior_tau=tau), LABELS, LOGITS) == pytest.approx(
        focal, rel=1e-6
    )
    # LDAM: s (z - m_y e_y) + tau log pi, the prior after the scale.
    margins = np.eye(4)[LABELS] * class_stats.ldam_margins(COUNTS, 0.5)[LABELS][:, None]
    ldam = np.mean(-log_softmax(30.0 * (COSINES - margins) + tau * np.log(PRIOR))[rows, LABELS])
    loss = losses.LDAMLoss(COUNTS, 0.5, 30.0, prior_tau=tau)
    assert value(loss, LABELS, COSINES) == pytest.approx(ldam, rel=1e-6)


# Every loss (its --loss name) and its logit transform's inverse shift: loss(z) with prior_tau equals the
# same loss without it at z + shift, shift = tau log pi mapped back through t (a * for CDT, / s for LDAM).
EVERY_LOSS = {
    "ce": (lambda **kw: losses.WeightedCrossEntropy(COUNTS, **kw), 1.0),
    "cdt": (lambda **kw: losses.CDTLoss(COUNTS, 0.5, **kw), class_stats.class_temperatures(COUNTS, 0.5)),
    "reweight": (lambda **kw: losses.ReweightedCrossEntropy(COUNTS, 0.5, **kw), 1.0),
    "focal": (lambda **kw: losses.FocalLoss(COUNTS, 2.0, **kw), 1.0),
    "cb": (lambda **kw: losses.ClassBalancedLoss(COUNTS, 0.999, 1.0, **kw), 1.0),
    "ldam": (lambda **kw: losses.LDAMLoss(COUNTS, 0.5, 30.0, **kw), 1.0 / 30.0),
    "la": (lambda **kw: losses.LogitAdjustedLoss(COUNTS, 1.0, **kw), 1.0),
}


@pytest.mark.parametrize("labels", [LABELS, SOFT_LABELS], ids=["sparse", "soft"])
@pytest.mark.parametrize("name", sorted(EVERY_LOSS))
def test_every_loss_adds_the_prior_after_its_transform(name, labels):
    make, inverse = EVERY_LOSS[name]
    z = COSINES if name == "ldam" else LOGITS
    shifted = (z + inverse * 0.6 * np.log(PRIOR)).astype(np.float32)
    assert value(make(prior_tau=0.6), labels, z) == pytest.approx(value(make(), labels, shifted), rel=1e-5)


@pytest.mark.parametrize("name", sorted(EVERY_LOSS))
def test_prior_tau_zero_is_the_loss_unchanged(name):
    make, _ = EVERY_LOSS[name]
    z = COSINES if name == "ldam" else LOGITS
    for labels in (LABELS, SOFT_LABELS):
        assert value(make(prior_tau=0.0), labels, z) == value(make(), labels, z)
    assert make().prior_tau == 0.0 and make().get_config()["prior_tau"] == 0.0


@pytest.mark.parametrize("name", sorted(EVERY_LOSS))
def test_prior_tau_round_trips_through_get_config_and_keras_serialization(name):
    loss = EVERY_LOSS[name][0](prior_tau=1.25)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss) and restored.prior_tau == 1.25
    assert restored.get_config() == loss.get_config()
    assert type(loss).from_config(loss.get_config()).prior_tau == 1.25
    z = COSINES if name == "ldam" else LOGITS
    assert value(restored, LABELS, z) == pytest.approx(value(loss, LABELS, z), rel=1e-6)


def test_a_config_without_prior_tau_loads_with_it_off():
    config = losses.CDTLoss(COUNTS, 0.3).get_config()
    del config["prior_tau"]  # A loss saved before --prior_tau.
    assert losses.CDTLoss.from_config(config).prior_tau == 0.0


@pytest.mark.parametrize("tau", [-0.5, float("nan"), float("inf")])
def test_bad_prior_tau_raises(tau):
    with pytest.raises(ValueError, match="prior_tau"):
        losses.WeightedCrossEntropy(COUNTS, prior_tau=tau)


# ----------------------------------------------------------------------------- the flag


def _config(**overrides):
    return Config(dataset="digits", model_dir="/tmp/run", **overrides).validate()


@pytest.mark.parametrize("loss", ["ce", "cdt", "reweight", "focal", "cb", "ldam", "la"])
def test_build_loss_passes_prior_tau_to_every_loss(loss):
    built = objective.build_loss(_config(loss=loss, prior_tau=0.5, gamma=0.3), COUNTS)
    assert built.prior_tau == 0.5


def test_plain_ce_keeps_keras_cross_entropy_without_the_prior():
    assert isinstance(objective.build_loss(_config(), COUNTS), keras.losses.SparseCategoricalCrossentropy)
    built = objective.build_loss(_config(prior_tau=1.0), COUNTS)
    assert isinstance(built, losses.WeightedCrossEntropy)
    assert value(built, LABELS, LOGITS) == pytest.approx(
        value(losses.WeightedCrossEntropy(COUNTS, prior_tau=1.0), LABELS, LOGITS), rel=1e-7
    )


@pytest.mark.parametrize(
    "tau, message",
    [
        (-0.1, "--prior_tau must be >= 0"),
        (float("nan"), "--prior_tau must be a finite number"),
        (float("inf"), "--prior_tau must be a finite number"),
    ],
)
def test_config_refuses_a_bad_prior_tau_in_one_line(tau, message):
    with pytest.raises(UserError, match=message.replace("-", r"\-")) as error:
        _config(prior_tau=tau)
    assert "\n" not in str(error.value)


def test_prior_tau_is_a_flag_of_the_objective_and_changes_what_a_run_computes():
    from absl import flags

    from cdt_tf import config as config_lib

    values = flags.FlagValues()
    config_lib.define_flags(values)
    values(["prog", "--dataset=digits", "--model_dir=/tmp/run", "--prior_tau=1.0"])
    assert Config.from_flags(values).prior_tau == 1.0
    assert values["prior_tau"].default == 0.0
    stored = dataclasses.replace(_config(), prior_tau=0.0).to_dict()
    assert _config(prior_tau=1.0).differences(stored) == ["prior_tau"]
    del stored["prior_tau"]  # A run from before the flag trained without the prior.
    assert _config().differences(stored) == []
