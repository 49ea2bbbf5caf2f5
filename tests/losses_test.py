"""Tests of the CDT loss against a NumPy reference implementation."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cdt_tf.losses import CDTLoss, cdt_cross_entropy

COUNTS = [400, 100, 25, 16]
LABELS = np.array([0, 1, 2, 3, 2, 1], np.int64)
LOGITS = np.array(
    [
        [2.0, -1.0, 0.5, 0.1],
        [0.3, 1.2, -0.7, 2.2],
        [-1.5, 0.0, 3.0, 1.0],
        [0.9, 0.9, -2.0, 0.4],
        [1.0, 2.0, 3.0, 4.0],
        [-0.2, -0.1, 0.0, 0.1],
    ],
    np.float32,
)


def reference_temperatures(counts, gamma):
    counts = np.asarray(counts, np.float64)
    return (counts.max() / counts) ** gamma


def reference_per_example(labels, logits, counts, gamma):
    """-log softmax(z / a)[y], in float64."""
    scaled = np.asarray(logits, np.float64) / reference_temperatures(counts, gamma)
    scaled = scaled - scaled.max(1, keepdims=True)
    log_probs = scaled - np.log(np.exp(scaled).sum(1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def reference_loss(labels, logits, counts, gamma, sample_weight=None):
    """Mean reduction ("sum_over_batch_size"): sum(w * l) / batch size."""
    per_example = reference_per_example(labels, logits, counts, gamma)
    if sample_weight is not None:
        per_example = per_example * np.asarray(sample_weight, np.float64)
    return per_example.sum() / len(labels)


def test_reference_sanity():
    # With gamma = 0 and uniform logits the loss is log(C).
    got = reference_loss(np.array([0, 3]), np.zeros((2, 4)), COUNTS, 0.0)
    np.testing.assert_allclose(got, np.log(4.0), rtol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.5, 1.0])
def test_cdt_cross_entropy_per_example(gamma):
    temperatures = reference_temperatures(COUNTS, gamma).astype(np.float32)
    got = keras.ops.convert_to_numpy(cdt_cross_entropy(LABELS, LOGITS, temperatures))
    assert got.shape == (len(LABELS),)
    assert got.dtype == np.float32
    np.testing.assert_allclose(
        got, reference_per_example(LABELS, LOGITS, COUNTS, gamma), rtol=1e-5, atol=1e-6
    )


def test_cdt_cross_entropy_accepts_column_labels():
    temperatures = reference_temperatures(COUNTS, 0.5).astype(np.float32)
    got = keras.ops.convert_to_numpy(cdt_cross_entropy(LABELS[:, None], LOGITS, temperatures))
    np.testing.assert_allclose(got, reference_per_example(LABELS, LOGITS, COUNTS, 0.5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.5, 1.0])
def test_loss_mean_reduction(gamma):
    loss = CDTLoss(COUNTS, gamma=gamma)
    got = float(loss(LABELS, LOGITS))
    np.testing.assert_allclose(got, reference_loss(LABELS, LOGITS, COUNTS, gamma), rtol=1e-5)


def test_loss_with_sample_weight():
    weights = np.array([1.0, 0.0, 2.0, 0.5, 1.0, 3.0], np.float32)
    loss = CDTLoss(COUNTS, gamma=0.5)
    got = float(loss(LABELS, LOGITS, sample_weight=weights))
    np.testing.assert_allclose(got, reference_loss(LABELS, LOGITS, COUNTS, 0.5, weights), rtol=1e-5)
    # And the weighting actually matters.
    assert abs(got - reference_loss(LABELS, LOGITS, COUNTS, 0.5)) > 1e-3


def test_loss_sum_reduction():
    loss = CDTLoss(COUNTS, gamma=0.3, reduction="sum")
    got = float(loss(LABELS, LOGITS))
    np.testing.assert_allclose(got, reference_per_example(LABELS, LOGITS, COUNTS, 0.3).sum(), rtol=1e-5)


def test_gamma_zero_equals_sparse_categorical_crossentropy():
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(LABELS, LOGITS)
    got = CDTLoss(COUNTS, gamma=0.0)(LABELS, LOGITS)
    np.testing.assert_allclose(float(got), float(expected), rtol=0, atol=1e-6)


def test_temperatures_method():
    loss = CDTLoss(COUNTS, gamma=0.5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loss.temperatures()), [1.0, 2.0, 4.0, 5.0], rtol=1e-6
    )


def test_larger_gamma_penalises_minor_class_more_when_uncertain():
    # Equal positive logits: dividing the minor classes' logits by a_c > 1 makes the major class
    # the most probable, so an example of the rarest class costs more with gamma > 0.
    logits = np.array([[1.0, 1.0, 1.0, 1.0]], np.float32)
    labels = np.array([3])
    assert float(CDTLoss(COUNTS, 1.0)(labels, logits)) > float(CDTLoss(COUNTS, 0.0)(labels, logits))


def test_gamma_assign_changes_value_eagerly():
    loss = CDTLoss(COUNTS, gamma=0.0)
    before = float(loss(LABELS, LOGITS))
    loss.gamma.assign(0.5)
    after = float(loss(LABELS, LOGITS))
    assert abs(after - before) > 1e-3
    np.testing.assert_allclose(after, reference_loss(LABELS, LOGITS, COUNTS, 0.5), rtol=1e-5)


def test_gamma_assign_is_seen_by_compiled_function():
    loss = CDTLoss(COUNTS, gamma=0.0)
    traces = []

    @tf.function
    def compute(labels, logits):
        traces.append(1)
        return loss(labels, logits)

    labels = tf.constant(LABELS)
    logits = tf.constant(LOGITS)
    first = float(compute(labels, logits))
    np.testing.assert_allclose(first, reference_loss(LABELS, LOGITS, COUNTS, 0.0), rtol=1e-5)
    loss.gamma.assign(0.5)
    second = float(compute(labels, logits))
    assert len(traces) == 1, "the function was retraced; the test would not show the variable is read"
    np.testing.assert_allclose(second, reference_loss(LABELS, LOGITS, COUNTS, 0.5), rtol=1e-5)
    assert abs(second - first) > 1e-3


def test_gamma_is_a_non_trainable_variable():
    loss = CDTLoss(COUNTS, gamma=0.25)
    assert isinstance(loss.gamma, keras.Variable)
    assert not loss.gamma.trainable
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(loss.gamma)), 0.25)


def test_negative_gamma_raises():
    with pytest.raises(ValueError, match="gamma"):
        CDTLoss(COUNTS, gamma=-0.1)


def test_zero_count_raises():
    with pytest.raises(ValueError):
        CDTLoss([10, 0, 3], gamma=0.5)


def _assert_same_loss(restored, counts, gamma):
    assert isinstance(restored, CDTLoss)
    assert restored.class_counts == list(counts)
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(restored.gamma)), gamma, rtol=1e-6)
    np.testing.assert_allclose(
        float(restored(LABELS, LOGITS)), reference_loss(LABELS, LOGITS, counts, gamma), rtol=1e-5
    )


def test_get_config_from_config_round_trip():
    loss = CDTLoss(np.array(COUNTS, np.int64), gamma=0.3, name="my_cdt")
    config = loss.get_config()
    assert config["class_counts"] == COUNTS
    assert all(type(c) is int for c in config["class_counts"])
    assert config["gamma"] == pytest.approx(0.3)
    assert config["name"] == "my_cdt"
    restored = CDTLoss.from_config(config)
    assert restored.name == "my_cdt"
    _assert_same_loss(restored, COUNTS, 0.3)


def test_config_reflects_assigned_gamma():
    loss = CDTLoss(COUNTS, gamma=0.0)
    loss.gamma.assign(0.5)
    assert loss.get_config()["gamma"] == pytest.approx(0.5)


def test_keras_serialize_deserialize_round_trip():
    loss = CDTLoss(COUNTS, gamma=0.7)
    serialized = keras.losses.serialize(loss)
    restored = keras.losses.deserialize(serialized)
    _assert_same_loss(restored, COUNTS, 0.7)


def test_model_saved_with_cdt_loss_reloads_with_loss_config(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    model.compile(optimizer="sgd", loss=CDTLoss(COUNTS, gamma=0.4))
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    model.train_on_batch(x, y)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored.loss, CDTLoss)
    _assert_same_loss(restored.loss, COUNTS, 0.4)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


# ----------------------------------------------------------------------------- soft labels [B, C]

# Mixup-style rows (one-hot, pairs, a spread) summing to 1.
SOFT_LABELS = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.7, 0.0, 0.3],
        [0.25, 0.25, 0.25, 0.25],
        [0.0, 0.0, 0.6, 0.4],
        [0.1, 0.0, 0.9, 0.0],
        [0.0, 0.5, 0.5, 0.0],
    ],
    np.float32,
)


def reference_soft_per_example(targets, logits, counts, gamma):
    """-sum_c q_c log softmax(z / a)_c, in float64."""
    scaled = np.asarray(logits, np.float64) / reference_temperatures(counts, gamma)
    scaled = scaled - scaled.max(1, keepdims=True)
    log_probs = scaled - np.log(np.exp(scaled).sum(1, keepdims=True))
    return -(np.asarray(targets, np.float64) * log_probs).sum(1)


def test_soft_label_cdt_exact_values():
    # a = (400 / N_c)^0.5 = [1, 2, 4, 5]; z = a * log([1, 2, 3, 4]) makes softmax(z / a) = [1, 2, 3, 4] / 10.
    temperatures = np.array([1.0, 2.0, 4.0, 5.0])
    logits = (temperatures * np.log([1.0, 2.0, 3.0, 4.0]))[None].repeat(2, 0).astype(np.float32)
    targets = np.array([[0.5, 0.0, 0.5, 0.0], [0.0, 0.2, 0.0, 0.8]], np.float32)
    expected = [-(0.5 * np.log(0.1) + 0.5 * np.log(0.3)), -(0.2 * np.log(0.2) + 0.8 * np.log(0.4))]
    got = keras.ops.convert_to_numpy(cdt_cross_entropy(targets, logits, temperatures.astype(np.float32)))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(
        float(CDTLoss(COUNTS, gamma=0.5)(targets, logits)), np.mean(expected), rtol=1e-6
    )
    # Uniform logits: log C whatever the (normalised) label.
    np.testing.assert_allclose(
        float(CDTLoss(COUNTS, gamma=0.5)(SOFT_LABELS, np.zeros_like(LOGITS))), np.log(4.0), rtol=1e-6
    )


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_soft_label_cdt_against_reference(gamma):
    expected = reference_soft_per_example(SOFT_LABELS, LOGITS, COUNTS, gamma)
    temperatures = reference_temperatures(COUNTS, gamma).astype(np.float32)
    got = keras.ops.convert_to_numpy(cdt_cross_entropy(SOFT_LABELS, LOGITS, temperatures))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(CDTLoss(COUNTS, gamma)(SOFT_LABELS, LOGITS)), expected.mean(), rtol=1e-5)


def test_soft_label_cdt_sample_weight_and_sum_reduction():
    weights = np.array([1.0, 0.0, 2.0, 0.5, 1.0, 3.0], np.float32)
    per_example = reference_soft_per_example(SOFT_LABELS, LOGITS, COUNTS, 0.5)
    got = float(CDTLoss(COUNTS, gamma=0.5)(SOFT_LABELS, LOGITS, sample_weight=weights))
    np.testing.assert_allclose(got, (per_example * weights).sum() / len(weights), rtol=1e-5)
    got = float(CDTLoss(COUNTS, gamma=0.5, reduction="sum")(SOFT_LABELS, LOGITS))
    np.testing.assert_allclose(got, per_example.sum(), rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_one_hot_soft_labels_give_the_sparse_cdt_loss(gamma):
    one_hot = np.eye(4, dtype=np.float32)[LABELS]
    loss = CDTLoss(COUNTS, gamma=gamma)
    np.testing.assert_allclose(float(loss(one_hot, LOGITS)), float(loss(LABELS, LOGITS)), rtol=1e-6)


def test_soft_labels_in_a_compiled_training_step():
    """model.fit with float [B, C] labels: the loss Keras logs is the soft-label CDT of the model's logits."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=CDTLoss(COUNTS, gamma=0.5))
    history = model.fit(LOGITS, SOFT_LABELS, batch_size=len(LOGITS), epochs=1, verbose=0)
    z = keras.ops.convert_to_numpy(model(LOGITS))
    expected = reference_soft_per_example(SOFT_LABELS, z, COUNTS, 0.5).mean()
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)
