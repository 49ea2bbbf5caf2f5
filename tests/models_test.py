"""Tests of the networks and their custom layers."""

from __future__ import annotations

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from cdt_tf import models, network_layers
from cdt_tf.models import (
    FusedBatchNormalization,
    ZeroPadShortcut,
    cifar_resnet,
    digits_convnet,
    feature_extractor,
)
from conftest import run_command


def _trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _non_trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)


def _reference_resnet_params(depth, num_classes):
    """Trainable parameters of He et al.'s CIFAR ResNet, option-A shortcuts (convs, BN gamma/beta, Dense)."""
    n = (depth - 2) // 6
    total = 3 * 3 * 3 * 16 + 2 * 16  # stem conv + BN
    width_in = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += 9 * width_in * width + 2 * width + 9 * width * width + 2 * width
            width_in = width
    return total + 64 * num_classes + num_classes


@pytest.fixture(scope="module")
def resnet32():
    keras.utils.set_random_seed(0)
    return cifar_resnet(32, 10)


def test_reference_formula_matches_the_known_count():
    assert _reference_resnet_params(32, 10) == 464154
    assert _reference_resnet_params(20, 10) == 269722
    assert _reference_resnet_params(56, 10) == 853018


def test_resnet32_parameter_count(resnet32):
    assert _trainable_count(resnet32) == 464154
    # BN moving mean and variance: 2 per channel of the 31 BN layers.
    assert _non_trainable_count(resnet32) == 2 * (16 + 10 * 16 + 10 * 32 + 10 * 64)
    assert resnet32.name == "resnet32"


def test_resnet32_output_on_uint8_range_input(resnet32):
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    logits = resnet32(images.astype(np.float32), training=False)
    logits = keras.ops.convert_to_numpy(logits)
    assert logits.shape == (2, 10)
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()
    predicted = resnet32.predict(images, verbose=0)
    assert predicted.shape == (2, 10)
    np.testing.assert_allclose(predicted, logits, rtol=1e-4, atol=1e-5)


def test_resnet_classifier_and_feature_layer_names(resnet32):
    classifier = resnet32.get_layer("classifier")
    assert classifier.units == 10
    assert tuple(classifier.kernel.shape) == (64, 10)


def test_model_normalizes_its_inputs(resnet32):
    normalized = keras.Model(resnet32.inputs, resnet32.get_layer("normalize").output)
    images = np.array([[[[0, 127.5, 255]]]], np.float32) * np.ones((1, 32, 32, 3), np.float32)
    got = keras.ops.convert_to_numpy(normalized(images))
    # (x / 255 - 0.5) / 0.25 for 0, 0.5, 1.
    np.testing.assert_allclose(got[0, 0, 0], [-2.0, 0.0, 2.0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depth", [20, 56])
def test_other_depths_build(depth):
    model = cifar_resnet(depth, 7)
    assert _trainable_count(model) == _reference_resnet_params(depth, 7)
    out = model(np.zeros((1, 32, 32, 3), np.float32))
    assert tuple(out.shape) == (1, 7)
    # 3 stages of (depth - 2) / 6 blocks of two convolutions, plus the stem.
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == depth - 1


@pytest.mark.parametrize("depth", [18, 21, 50, 0])
def test_invalid_depth_raises(depth):
    with pytest.raises(ValueError, match="depth"):
        cifar_resnet(depth, 10)


def test_build_model_by_name():
    assert models.build_model("resnet20", 4, (32, 32, 3), (0.5,) * 3, (0.25,) * 3).name == "resnet20"
    assert (
        models.build_model("digits_convnet", 4, (8, 8, 3), (0.5,) * 3, (0.25,) * 3).name == "digits_convnet"
    )
    with pytest.raises(ValueError, match="unknown model"):
        models.build_model("vgg16", 4, (32, 32, 3), (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(ValueError):
        models.build_model("resnet33", 4, (32, 32, 3), (0.5,) * 3, (0.25,) * 3)


def test_feature_extractor_resnet32(resnet32):
    extractor = feature_extractor(resnet32)
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    features = keras.ops.convert_to_numpy(extractor(images))
    assert features.shape == (3, 64)
    # The classifier applied to the features gives the model's logits.
    classifier = resnet32.get_layer("classifier")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(classifier(features)),
        keras.ops.convert_to_numpy(resnet32(images)),
        rtol=1e-4,
        atol=1e-4,
    )
    # After the final ReLU and average pooling the features are non-negative.
    assert (features >= 0).all()


def test_digits_convnet_builds():
    model = digits_convnet(10)
    assert tuple(model.input.shape) == (None, 8, 8, 3)
    out = keras.ops.convert_to_numpy(model(np.full((2, 8, 8, 3), 255.0, np.float32)))
    assert out.shape == (2, 10)
    assert tuple(feature_extractor(model).output.shape) == (None, 64)


# --------------------------------------------------------------------------- ZeroPadShortcut


def test_zero_pad_shortcut_values_even():
    x = np.arange(1 * 4 * 4 * 2, dtype=np.float32).reshape(1, 4, 4, 2)
    layer = ZeroPadShortcut(3)
    got = keras.ops.convert_to_numpy(layer(x))
    assert got.shape == (1, 2, 2, 8)
    np.testing.assert_array_equal(got[..., :3], 0)
    np.testing.assert_array_equal(got[..., 5:], 0)
    np.testing.assert_array_equal(got[..., 3:5], x[:, ::2, ::2, :])
    # Spot check: output (i, j) is input (2i, 2j).
    np.testing.assert_array_equal(got[0, 1, 1, 3:5], x[0, 2, 2])


def test_zero_pad_shortcut_odd_size_and_output_shape():
    x = np.random.default_rng(0).normal(size=(2, 5, 7, 4)).astype(np.float32)
    layer = ZeroPadShortcut(2)
    got = keras.ops.convert_to_numpy(layer(x))
    assert got.shape == (2, 3, 4, 8)
    assert layer.compute_output_shape((2, 5, 7, 4)) == (2, 3, 4, 8)
    assert layer.compute_output_shape((None, None, 6, 4)) == (None, None, 3, 8)
    expected = np.pad(x[:, ::2, ::2, :], [(0, 0), (0, 0), (0, 0), (2, 2)])
    np.testing.assert_array_equal(got, expected)


def test_zero_pad_shortcut_config_round_trip():
    layer = ZeroPadShortcut(8, name="sc")
    restored = ZeroPadShortcut.from_config(layer.get_config())
    assert restored.pad_channels == 8
    assert restored.name == "sc"
    assert not restored.weights


# --------------------------------------------------------------------------- FusedBatchNormalization


def _bn_pair(channels, seed):
    rng = np.random.default_rng(seed)
    fused = FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
    plain = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    fused.build((None, 4, 4, channels))
    plain.build((None, 4, 4, channels))
    weights = [
        rng.normal(1.0, 0.3, channels).astype(np.float32),  # gamma
        rng.normal(0.0, 0.5, channels).astype(np.float32),  # beta
        rng.normal(0.0, 1.0, channels).astype(np.float32),  # moving mean
        rng.uniform(0.5, 2.0, channels).astype(np.float32),  # moving variance
    ]
    fused.set_weights(weights)
    plain.set_weights(weights)
    return fused, plain, weights


def test_fused_bn_training_matches_keras_and_pytorch_running_stats():
    fused, plain, weights = _bn_pair(3, 0)
    x = np.random.default_rng(1).normal(2.0, 3.0, (6, 4, 4, 3)).astype(np.float32)
    y_fused = keras.ops.convert_to_numpy(fused(x, training=True))
    y_plain = keras.ops.convert_to_numpy(plain(x, training=True))
    np.testing.assert_allclose(y_fused, y_plain, rtol=1e-5, atol=1e-5)
    # Normalisation uses the biased batch variance.
    pixels = x.reshape(-1, 3).astype(np.float64)
    expected = (x - pixels.mean(0)) / np.sqrt(pixels.var(0) + 1e-5) * weights[0] + weights[1]
    np.testing.assert_allclose(y_fused, expected, rtol=1e-5, atol=1e-5)
    # Moving mean as Keras; moving variance with the unbiased batch variance (PyTorch).
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fused.moving_mean),
        keras.ops.convert_to_numpy(plain.moving_mean),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fused.moving_mean),
        0.9 * weights[2] + 0.1 * pixels.mean(0),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fused.moving_variance),
        0.9 * weights[3] + 0.1 * pixels.var(0, ddof=1),
        rtol=1e-5,
        atol=1e-5,
    )


def test_fused_bn_inference_matches_keras():
    fused, plain, weights = _bn_pair(5, 2)
    x = np.random.default_rng(3).normal(size=(2, 4, 4, 5)).astype(np.float32)
    y_fused = keras.ops.convert_to_numpy(fused(x, training=False))
    y_plain = keras.ops.convert_to_numpy(plain(x, training=False))
    np.testing.assert_allclose(y_fused, y_plain, rtol=1e-5, atol=1e-5)
    expected = (x - weights[2]) / np.sqrt(weights[3] + 1e-5) * weights[0] + weights[1]
    np.testing.assert_allclose(y_fused, expected, rtol=1e-5, atol=1e-5)
    # Inference leaves the moving statistics alone.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fused.moving_mean), weights[2])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fused.moving_variance), weights[3])


def test_fused_bn_gradients_match_keras():
    fused, plain, _ = _bn_pair(3, 4)
    x = tf.constant(np.random.default_rng(5).normal(size=(4, 4, 4, 3)).astype(np.float32))
    target = tf.constant(np.random.default_rng(6).normal(size=(4, 4, 4, 3)).astype(np.float32))
    grads = []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) * target)
        grads.append(tape.gradient(loss, [x, layer.gamma, layer.beta]))
    for g_fused, g_plain in zip(*grads):
        np.testing.assert_allclose(g_fused.numpy(), g_plain.numpy(), rtol=1e-4, atol=1e-4)


def test_fused_bn_frozen_layer_uses_moving_statistics():
    fused, plain, weights = _bn_pair(3, 7)
    fused.trainable = False
    plain.trainable = False
    x = np.random.default_rng(8).normal(1.0, 2.0, (2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fused(x, training=True)),
        keras.ops.convert_to_numpy(plain(x, training=True)),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fused.moving_mean), weights[2])


def test_fused_bn_config_equals_keras_config():
    fused = FusedBatchNormalization(momentum=0.9, epsilon=1e-5, name="bn")
    plain = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="bn")
    assert fused.get_config() == plain.get_config()


# --------------------------------------------------------------------------- saving


def test_saved_model_reloads_with_identical_predictions(tmp_path):
    keras.utils.set_random_seed(1)
    model = cifar_resnet(20, 5)
    images = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    # One training-mode pass so the moving statistics are not at their initial values.
    model(images, training=True)
    path = os.path.join(tmp_path, "resnet20.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored.get_layer("stem_bn"), FusedBatchNormalization)
    assert isinstance(restored.get_layer("stage2_block1_shortcut"), ZeroPadShortcut)
    np.testing.assert_array_equal(restored.predict(images, verbose=0), model.predict(images, verbose=0))
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_layers_of_the_same_shape_start_from_different_kernels():
    # A shared, construction-seeded initializer once gave every block the same kernel.
    model = models.cifar_resnet(32, 10)
    first = model.get_layer("stage1_block1_1_conv").kernel.numpy()
    second = model.get_layer("stage1_block2_1_conv").kernel.numpy()
    assert np.abs(first - second).max() > 0.1
    assert first.std() == pytest.approx(np.sqrt(2.0 / (3 * 3 * 16)), rel=0.1)


def test_same_global_seed_same_initial_weights_in_fresh_processes():
    code = (
        "import keras, numpy as np; from cdt_tf import models; keras.utils.set_random_seed(3); "
        "print(float(np.abs(models.cifar_resnet(20, 10).get_weights()[0]).sum()))"
    )
    outputs = [run_command(sys.executable, "-c", code).stdout.strip().splitlines()[-1] for _ in range(2)]
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("padding, centre_offset", [("symmetric", 0), ("same", 1)])
def test_strided_convolutions_are_centred_where_the_shortcut_samples(padding, centre_offset):
    """With a centre-tap kernel a stride-2 conv returns the input pixel its window is centred on.

    symmetric: output (i, j) sees input (2i, 2j), the pixel ZeroPadShortcut keeps (x[::2, ::2]);
    Keras "same" (the padding of runs before conv_padding existed) sees (2i + 1, 2j + 1).
    """
    inputs = keras.Input((8, 8, 1))
    x = network_layers.conv_bn(inputs, 1, 3, 2, "probe", padding, relu=False)
    model = keras.Model(inputs, x)
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[1, 1, 0, 0] = 1.0
    model.get_layer("probe_conv").set_weights([kernel])
    image = np.arange(64, dtype=np.float32).reshape(1, 8, 8, 1)
    out = model(image, training=False).numpy()[0, :, :, 0]
    bn = 1.0 / np.sqrt(1.0 + models.BN_EPSILON)  # Inference BN: mean 0, variance 1.
    expected = image[0, centre_offset::2, centre_offset::2, 0] * bn
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    shortcut = ZeroPadShortcut(0)(image).numpy()[0, :, :, 0]
    assert np.array_equal(shortcut, image[0, ::2, ::2, 0])
    assert (centre_offset == 0) == np.allclose(out, shortcut * bn, rtol=1e-5)


@pytest.mark.parametrize(
    "name, shape", [("resnet32", (32, 32, 3)), ("resnet18", (64, 64, 3)), ("resnet50", (64, 64, 3))]
)
def test_padding_keeps_shapes_and_parameters(name, shape):
    built = {
        padding: models.build_model(name, 5, shape, (0.5,) * 3, (0.25,) * 3, padding=padding)
        for padding in models.CONV_PADDINGS
    }
    assert built["symmetric"].output_shape == built["same"].output_shape == (None, 5)
    assert _trainable_count(built["symmetric"]) == _trainable_count(built["same"])
    pads = [
        layer.name for layer in built["symmetric"].layers if isinstance(layer, keras.layers.ZeroPadding2D)
    ]
    assert pads and not any(isinstance(layer, keras.layers.ZeroPadding2D) for layer in built["same"].layers)
    with pytest.raises(ValueError, match="padding"):
        models.build_model(name, 5, shape, (0.5,) * 3, (0.25,) * 3, padding="reflect")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_fused_bn_takes_low_precision_inputs_without_casts(dtype):
    """Mixed precision: bf16/f16 go into the fused kernel as they are; statistics stay float32-exact."""
    x = np.random.default_rng(2).normal(2.0, 3.0, (16, 4, 4, 3)).astype(np.float32)
    low = tf.cast(x, dtype)
    outputs = {}
    _, _, weights = _bn_pair(3, 0)
    for cast in (False, True):
        layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-5, dtype=f"mixed_{dtype}")
        layer.build((None, 4, 4, 3))
        layer.set_weights(weights)
        layer.cast_to_float32 = cast
        outputs[cast] = (layer(low, training=True), layer)
    direct, cast_path = outputs[False], outputs[True]
    assert direct[0].dtype == low.dtype
    casts = {}
    for cast, (_, layer) in outputs.items():
        graph = tf.function(lambda t, layer=layer: layer(t, training=True)).get_concrete_function(low).graph
        casts[cast] = sum(op.type == "Cast" for op in graph.get_operations())
    assert casts == {False: 0, True: 2}
    np.testing.assert_allclose(
        tf.cast(direct[0], tf.float32).numpy(), tf.cast(cast_path[0], tf.float32).numpy(), atol=0.05
    )
    # The moving statistics of the low-precision input, computed in float32 by the kernel.
    pixels = tf.cast(low, tf.float64).numpy().reshape(-1, 3)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(direct[1].moving_mean), 0.9 * weights[2] + 0.1 * pixels.mean(0), rtol=1e-4
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(direct[1].moving_variance),
        0.9 * weights[3] + 0.1 * pixels.var(0, ddof=1),
        rtol=1e-4,
    )


def test_reestimated_batch_norm_statistics_are_the_average_over_the_batches():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 3))
    x = models.FusedBatchNormalization(momentum=0.9, epsilon=1e-5, name="bn1")(inputs)
    x = keras.layers.Conv2D(2, 1, name="conv")(x)
    outputs = models.FusedBatchNormalization(momentum=0.9, epsilon=1e-5, name="bn2")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("bn1").moving_mean.assign([50.0, -50.0, 9.0])  # Stale statistics: must not survive.
    kernel_before = keras.ops.convert_to_numpy(model.get_layer("conv").kernel).copy()
    rng = np.random.default_rng(1)
    batches = [rng.normal(c, 1 + c, (8, 4, 4, 3)).astype(np.float32) for c in (0.0, 1.0, 3.0)]
    dataset = tf.data.Dataset.from_tensor_slices((np.stack(batches), np.zeros(3))).repeat()
    assert models.reestimate_batch_norm(model, dataset, steps=3) == 3
    # Layer 1: the plain average of the batch means and of the unbiased batch variances.
    pixels = [b.reshape(-1, 3).astype(np.float64) for b in batches]
    statistics = models.batch_norm_statistics(model)
    np.testing.assert_allclose(statistics["bn1"][0], np.mean([p.mean(0) for p in pixels], 0), atol=1e-4)
    np.testing.assert_allclose(
        statistics["bn1"][1], np.mean([p.var(0, ddof=1) for p in pixels], 0), rtol=1e-4
    )
    # Layer 2 sees layer 1's batch-normalised output (training mode), through the unchanged conv.
    second = []
    for b in batches:
        normalised = (b - b.reshape(-1, 3).mean(0)) / np.sqrt(b.reshape(-1, 3).var(0) + 1e-5)
        second.append(keras.ops.convert_to_numpy(model.get_layer("conv")(normalised)).reshape(-1, 2))
    np.testing.assert_allclose(statistics["bn2"][0], np.mean([s.mean(0) for s in second], 0), atol=1e-4)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("conv").kernel), kernel_before)
    assert model.get_layer("bn1").momentum == 0.9  # Restored.
    # The statistics round-trip onto another copy of the network; a mismatch is refused.
    other = keras.models.clone_model(model)
    models.set_batch_norm_statistics(other, statistics)
    np.testing.assert_array_equal(models.batch_norm_statistics(other)["bn2"][1], statistics["bn2"][1])
    with pytest.raises(ValueError, match="batch-norm statistics"):
        models.set_batch_norm_statistics(other, {"bn1": statistics["bn1"]})


def test_with_classifier_replaces_the_head_and_refuses_a_wrong_width(resnet32):
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(0, 1, (64, 10)).astype(np.float32), rng.normal(0, 1, 10).astype(np.float32)
    images = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    replaced = models.with_classifier(resnet32, kernel, bias)
    features = models.feature_extractor(resnet32).predict(images, verbose=0)
    np.testing.assert_allclose(
        replaced.predict(images, verbose=0), features @ kernel + bias, rtol=1e-4, atol=1e-4
    )
    assert replaced.get_layer("classifier").kernel.shape == (64, 10)
    with pytest.raises(ValueError, match="do not fit 64 features"):
        models.with_classifier(resnet32, kernel[:10], bias)
