"""SAM and ImbSAM (cdt_tf/sam.py) against a NumPy reference; the MaxNorm classifier (cdt_tf/max_norm.py)."""

from __future__ import annotations

import json
import sys
import textwrap

import keras
import numpy as np
import pytest

from cdt_tf import class_stats, max_norm, models, sam
from cdt_tf.optimizers import CoupledDecaySGD
from conftest import TWO_LOGICAL_CPUS, digits_run, run_command

RHO, LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.5, 0.1, 0.9, 0.01
NUM_FEATURES, NUM_CLASSES = 4, 3
RNG = np.random.default_rng(0)
X = RNG.normal(size=(6, NUM_FEATURES)).astype(np.float32)
KERNEL = RNG.normal(size=(NUM_FEATURES, NUM_CLASSES)).astype(np.float32)
BIAS = RNG.normal(size=NUM_CLASSES).astype(np.float32)
TAIL = np.array([0.0, 0.0, 1.0], np.float32)  # Class 2 is the tail.


# ----------------------------------------------------------------------------- NumPy reference


def _gradients(kernel, bias, x, y, weights):
    """d/d(kernel, bias) of sum_n weights_n CE_n / B for a linear softmax model (float64)."""
    logits = x @ kernel + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d_logits = (p - np.eye(NUM_CLASSES)[y]) * weights[:, None] / len(y)
    return x.T @ d_logits, d_logits.sum(0)


def _reference_step(y, tail=None, rho=RHO):
    """One step of SAM (tail None) or ImbSAM, then SGD with coupled weight decay, from (KERNEL, BIAS)."""
    x, kernel, bias = X.astype(np.float64), KERNEL.astype(np.float64), BIAS.astype(np.float64)
    share = np.ones(len(y)) if tail is None else tail[y].astype(np.float64)
    g_kernel, g_bias = _gradients(kernel, bias, x, y, share)
    norm = np.sqrt((g_kernel**2).sum() + (g_bias**2).sum())
    scale = rho / norm if norm > 0 else 0.0
    s_kernel, s_bias = _gradients(kernel + scale * g_kernel, bias + scale * g_bias, x, y, share)
    if tail is not None:  # The head part at w, as it is.
        h_kernel, h_bias = _gradients(kernel, bias, x, y, 1.0 - share)
        s_kernel, s_bias = s_kernel + h_kernel, s_bias + h_bias
    # First SGD step: the momentum buffer is 0, so w <- w - lr (g + wd w).
    return (
        kernel - LEARNING_RATE * (s_kernel + WEIGHT_DECAY * kernel),
        bias - LEARNING_RATE * (s_bias + WEIGHT_DECAY * bias),
    )


# ----------------------------------------------------------------------------- Keras


def _linear_model(rho=RHO, tail=None, learning_rate=LEARNING_RATE):
    inputs = keras.Input((NUM_FEATURES,))
    outputs = keras.layers.Dense(NUM_CLASSES, name="classifier")(inputs)
    base = keras.Model(inputs, outputs)
    base.get_layer("classifier").set_weights([KERNEL, BIAS])
    model = base if rho is None else sam.SharpnessAwareModel.wrap(base, rho, tail)
    model.compile(
        optimizer=CoupledDecaySGD(WEIGHT_DECAY, learning_rate=learning_rate, momentum=MOMENTUM),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _step(model, y, x=X):
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    return [w.numpy() for w in model.get_layer("classifier").weights]


def test_one_sam_step_matches_numpy():
    y = np.array([0, 1, 2, 0, 1, 2])
    kernel, bias = _step(_linear_model(), y)
    expected_kernel, expected_bias = _reference_step(y)
    np.testing.assert_allclose(kernel, expected_kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, expected_bias, rtol=1e-5, atol=1e-6)
    # Not the plain step: the perturbation changed the gradient.
    assert np.abs(_step(_linear_model(rho=None), y)[0] - expected_kernel).max() > 1e-4


def test_one_imbsam_step_matches_numpy():
    y = np.array([0, 1, 2, 0, 2, 2])
    kernel, bias = _step(_linear_model(tail=TAIL), y)
    expected_kernel, expected_bias = _reference_step(y, TAIL)
    np.testing.assert_allclose(kernel, expected_kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, expected_bias, rtol=1e-5, atol=1e-6)


def test_imbsam_on_head_examples_is_the_plain_step():
    y = np.array([0, 1, 0, 1, 1, 0])
    plain = _step(_linear_model(rho=None), y)
    for ours, theirs in zip(_step(_linear_model(tail=TAIL), y), plain, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


def test_imbsam_on_tail_examples_is_the_sam_step():
    y = np.array([2, 2, 2, 2, 2, 2])
    whole = _step(_linear_model(), y)
    for ours, theirs in zip(_step(_linear_model(tail=TAIL), y), whole, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


def test_the_weights_come_back_exactly():
    """With learning rate 0 the step changes nothing, though it moved the weights by eps and back."""
    kernel, bias = _step(_linear_model(learning_rate=0.0), np.array([0, 1, 2, 0, 1, 2]))
    assert np.array_equal(kernel, KERNEL) and np.array_equal(bias, BIAS)


def test_soft_labels_give_the_sparse_step():
    y = np.array([0, 1, 2, 0, 2, 2])
    sparse = _step(_linear_model(tail=TAIL), y)
    model = _linear_model(tail=TAIL)
    model.compile(
        optimizer=CoupledDecaySGD(WEIGHT_DECAY, learning_rate=LEARNING_RATE, momentum=MOMENTUM),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    soft = _step(model, np.eye(NUM_CLASSES, dtype=np.float32)[y])
    for ours, theirs in zip(soft, sparse, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


def test_tail_share_of_sparse_and_soft_labels():
    np.testing.assert_array_equal(sam.tail_share(np.array([0, 2, 1]), TAIL).numpy(), [0, 1, 0])
    np.testing.assert_array_equal(sam.tail_share(np.array([[2], [0]]), TAIL).numpy(), [1, 0])
    mixed = np.array([[0.7, 0.0, 0.3], [0.0, 0.0, 1.0]], np.float32)
    np.testing.assert_allclose(sam.tail_share(mixed, TAIL).numpy(), [0.3, 1.0])


def test_tail_classes_are_those_under_the_threshold():
    np.testing.assert_array_equal(sam.tail_classes([500, 100, 99, 5], 100), [0, 0, 1, 1])
    np.testing.assert_array_equal(class_stats.tail_mask([20, 19], 20), [False, True])


def test_batch_norm_keeps_the_first_pass_statistics():
    """The moving statistics after a SAM step are those of the plain step (one update, at w)."""

    def build(rho):
        keras.utils.set_random_seed(1)
        inputs = keras.Input((NUM_FEATURES,))
        hidden = keras.layers.BatchNormalization(momentum=0.5, name="bn")(keras.layers.Dense(5)(inputs))
        base = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, name="classifier")(hidden))
        model = base if rho is None else sam.SharpnessAwareModel.wrap(base, rho)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(True)
        )
        return model

    y = np.array([0, 1, 2, 0, 1, 2])
    plain, sharp = build(None), build(RHO)
    _step(plain, y), _step(sharp, y)
    for name in ("moving_mean", "moving_variance"):
        ours = getattr(sharp.get_layer("bn"), name).numpy()
        np.testing.assert_allclose(ours, getattr(plain.get_layer("bn"), name).numpy(), rtol=1e-6)
    assert not np.allclose(sharp.get_layer("bn").moving_mean.numpy(), 0.0)  # It was updated.
    kernel_plain = plain.get_layer("classifier").kernel.numpy()
    assert np.abs(sharp.get_layer("classifier").kernel.numpy() - kernel_plain).max() > 1e-5


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_steps_near_float32(policy):
    y = np.array([0, 1, 2, 0, 2, 2])
    expected = _reference_step(y, TAIL)
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = _linear_model(tail=TAIL)
        model.get_layer("classifier")  # Dense under the policy: bf16/f16 compute, float32 weights.
        ours = _step(model, y)
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for a, b in zip(ours, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=0.02)


def test_plain_model_shares_weights_and_optimizer_and_saves(tmp_path):
    model = _linear_model()
    _step(model, np.array([0, 1, 2, 0, 1, 2]))
    plain = model.plain_model()
    assert type(plain) is not sam.SharpnessAwareModel and plain.optimizer is model.optimizer
    assert plain.get_layer("classifier") is model.get_layer("classifier")
    path = str(tmp_path / "model.keras")
    plain.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(X, verbose=0), model.predict(X, verbose=0))
    assert int(loaded.optimizer.iterations.numpy()) == 1


MIRRORED = TWO_LOGICAL_CPUS + textwrap.dedent("""
    from cdt_tf import losses, sam

    def step(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            inputs = keras.Input((6,))
            hidden = keras.layers.Dense(16, activation="relu")(inputs)
            base = keras.Model(inputs, keras.layers.Dense(4)(hidden))
            model = sam.SharpnessAwareModel.wrap(base, 0.5, [0.0, 0.0, 1.0, 1.0])
            model.compile(optimizer=keras.optimizers.SGD(1.0), loss=losses.CDTLoss([40, 20, 10, 5], 0.5))
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        loss = model.fit(data, epochs=2, verbose=0, shuffle=False).history["loss"]
        return loss, [w.numpy() for w in model.weights], strategy.num_replicas_in_sync

    one = step(tf.distribute.OneDeviceStrategy("/cpu:0"))
    two = step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    print(json.dumps({
        "replicas": [one[2], two[2]],
        "loss": [one[0], two[0]],
        "max_weight_difference": max(float(np.abs(a - b).max()) for a, b in zip(one[1], two[1])),
    }))
    """)


def test_mirrored_on_two_cpus_takes_the_single_device_sam_step():
    """eps is that of the global batch (the first gradient is all-reduced): the same weights."""
    result = run_command(sys.executable, "-c", MIRRORED)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["replicas"] == [1, 2]
    np.testing.assert_allclose(record["loss"][0], record["loss"][1], rtol=1e-5)
    # No batch norm here: it normalises each replica's half of the batch, so its gradients differ.
    assert record["max_weight_difference"] < 1e-4


# ----------------------------------------------------------------------------- MaxNorm


def test_max_norm_keeps_class_weight_norms_below_the_threshold():
    keras.utils.set_random_seed(0)
    model = models.build_model("digits_convnet", NUM_CLASSES, (8, 8, 3), (0.5,) * 3, (0.25,) * 3)
    max_norm.constrain_classifier(model, 0.1)
    model.compile(optimizer=keras.optimizers.SGD(10.0), loss=keras.losses.SparseCategoricalCrossentropy(True))
    images = np.random.default_rng(0).uniform(0, 255, size=(12, 8, 8, 3)).astype(np.float32)
    kernel = model.get_layer("classifier").kernel
    assert np.linalg.norm(kernel.numpy(), axis=0).max() > 0.1  # Not yet: the constraint acts on updates.
    model.fit(images, np.arange(12) % NUM_CLASSES, batch_size=12, epochs=2, verbose=0)
    assert np.linalg.norm(kernel.numpy(), axis=0).max() <= 0.1 + 1e-6
    config = model.get_layer("classifier").get_config()["kernel_constraint"]
    assert config["config"] == {"max_value": 0.1, "axis": 0}


def test_max_norm_refuses_the_cosine_classifier():
    model = models.build_model("digits_convnet", NUM_CLASSES, (8, 8, 3), (0.5,) * 3, (0.25,) * 3, "cosine")
    with pytest.raises(ValueError, match="linear"):
        max_norm.constrain_classifier(model, 1.0)


# ----------------------------------------------------------------------------- End to end


def test_digits_run_with_imbsam_and_max_norm(tmp_path):
    model_dir = tmp_path / "run"
    flags = ("--sam_rho=0.05", "--sam_classes=tail", "--sam_tail_threshold=50", "--max_norm=1.0")
    results, epochs = digits_run(model_dir, *flags)
    assert results["config"]["sam_rho"] == 0.05 and 0.0 <= results["top1"] <= 1.0
    assert len(epochs) == 2 and all(np.isfinite(e["loss"]) for e in epochs)
    model = keras.models.load_model(model_dir / "model.keras")
    assert type(model) is not sam.SharpnessAwareModel  # model.keras holds the ordinary network.
    kernel = model.get_layer("classifier").kernel.numpy()
    assert np.linalg.norm(kernel, axis=0).max() <= 1.0 + 1e-5
