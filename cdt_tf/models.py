"""Networks by name (`build_model`): the CIFAR ResNet family (ResNet-20/32/44/56/110), the small digits
ConvNet and, from `imagenet_resnets`, ResNet-18/50; the batch-norm and classifier surgery of trained ones.

Every model takes uint8-range images [batch, H, W, 3] (any real dtype) and
normalises them itself, so the exported graph needs no outside preprocessing.
The last layer is named "classifier": a Dense layer (linear, with bias) or a
`CosineClassifier`; its input is the penultimate feature f(x) of the paper and
its kernel [D, C] holds the w_c.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from cdt_tf import catalog
from cdt_tf.imagenet_resnets import IMAGENET_RESNETS, resnet18, resnet50  # noqa: F401  (models.resnet18)
from cdt_tf.network_layers import (  # noqa: F401  (the layers stay importable from models)
    BN_EPSILON,
    BN_MOMENTUM,
    CLASSIFIERS,
    CosineClassifier,
    FusedBatchNormalization,
    classifier_output,
    conv_bn,
    normalize_images,
)

CIFAR_RESNET_DEPTHS = catalog.CIFAR_RESNET_DEPTHS
CONV_PADDINGS = catalog.CONV_PADDINGS


@keras.saving.register_keras_serializable(package="cdt_tf")
class ZeroPadShortcut(layers.Layer):
    """He et al.'s option-A shortcut: subsample by 2 and zero-pad the channels.

    [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C + 2 * pad]; parameter-free, as in
    the reference CIFAR ResNet (`F.pad(x[:, :, ::2, ::2], (..., planes // 4, planes // 4))`).
    """

    def __init__(self, pad_channels: int, **kwargs):
        super().__init__(**kwargs)
        self.pad_channels = pad_channels

    def call(self, inputs):
        subsampled = inputs[:, ::2, ::2, :]
        return keras.ops.pad(subsampled, [[0, 0], [0, 0], [0, 0], [self.pad_channels, self.pad_channels]])

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        half = lambda size: None if size is None else (size + 1) // 2  # noqa: E731
        return (batch, half(height), half(width), channels + 2 * self.pad_channels)

    def get_config(self):
        return {**super().get_config(), "pad_channels": self.pad_channels}


def _conv_bn_relu(x, filters: int, strides: int, name: str, padding: str, relu: bool = True):
    """3x3 conv (no bias), batch norm, optional ReLU: the CIFAR ResNet's unit."""
    return conv_bn(x, filters, 3, strides, name, padding, relu=relu)


def _basic_block(x, filters: int, strides: int, name: str, padding: str):
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = ZeroPadShortcut((filters - x.shape[-1]) // 2, name=f"{name}_shortcut")(x)
    y = _conv_bn_relu(x, filters, strides, f"{name}_1", padding)
    y = _conv_bn_relu(y, filters, 1, f"{name}_2", padding, relu=False)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def cifar_resnet(
    depth: int,
    num_classes: int,
    input_shape: Sequence[int] = (32, 32, 3),
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.25, 0.25, 0.25),
    classifier: str = "linear",
    padding: str = "symmetric",
) -> keras.Model:
    """He et al.'s CIFAR ResNet: 3 stages of (depth - 2) / 6 basic blocks, widths 16/32/64.

    Args:
      depth: 6n + 2; 32 gives ResNet-32 (about 0.46 M parameters for 10 classes).
      num_classes: width of the classifier.
      input_shape: [H, W, 3] of the uint8-range input.
      mean, std: per-channel statistics of images scaled to [0, 1].
      classifier: "linear" (Dense) or "cosine" (`CosineClassifier`).
      padding: how strided convolutions pad (`conv_padding`): "symmetric" or Keras' "same".

    Returns:
      A functional model: [B, H, W, 3] -> logits [B, num_classes] (float32).
    """
    if depth not in CIFAR_RESNET_DEPTHS:
        raise ValueError(f"CIFAR ResNet depth must be one of {CIFAR_RESNET_DEPTHS}, got {depth}")
    blocks_per_stage = (depth - 2) // 6
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = _conv_bn_relu(normalize_images(inputs, mean, std), 16, 1, "stem", padding)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks_per_stage):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, filters, strides, f"stage{stage + 1}_block{block + 1}", padding)
    features = layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, classifier_output(features, num_classes, classifier), name=f"resnet{depth}")


def digits_convnet(
    num_classes: int,
    input_shape: Sequence[int] = (8, 8, 3),
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.25, 0.25, 0.25),
    classifier: str = "linear",
    padding: str = "symmetric",
) -> keras.Model:
    """A small ConvNet for the 8x8 digits demo: 2 conv-BN-ReLU blocks, global pooling, Dense."""
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = _conv_bn_relu(normalize_images(inputs, mean, std), 32, 1, "block1", padding)
    x = _conv_bn_relu(x, 64, 2, "block2", padding)
    features = layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, classifier_output(features, num_classes, classifier), name="digits_convnet")


MODEL_NAMES = catalog.MODEL_NAMES


def build_model(
    name: str,
    num_classes: int,
    input_shape,
    mean,
    std,
    classifier: str = "linear",
    padding: str = "symmetric",
) -> keras.Model:
    """Builds a model by name (one of MODEL_NAMES) with a linear or cosine classifier.

    padding: how strided convolutions pad, one of CONV_PADDINGS (`network_layers.conv_bn`).
    """
    if padding not in CONV_PADDINGS:
        raise ValueError(f"unknown padding {padding!r}; use one of {CONV_PADDINGS}")
    if name == "digits_convnet":
        return digits_convnet(num_classes, input_shape, mean, std, classifier, padding)
    if name in IMAGENET_RESNETS:
        return IMAGENET_RESNETS[name](num_classes, input_shape, mean, std, classifier, padding)
    if name.startswith("resnet") and name[len("resnet") :].isdigit():
        depth = int(name[len("resnet") :])
        return cifar_resnet(depth, num_classes, input_shape, mean, std, classifier, padding)
    raise ValueError(f"unknown model {name!r}; use one of {MODEL_NAMES}")


def feature_extractor(model: keras.Model) -> keras.Model:
    """The same network cut before the classifier: images -> penultimate features [B, D]."""
    return keras.Model(model.inputs, model.get_layer("classifier").input)


def batch_norm_layers(model: keras.Model) -> list:
    """The model's batch-norm layers, in order."""
    return [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]


def batch_norm_statistics(model: keras.Model) -> dict:
    """{layer name: (moving mean [C], moving variance [C])} of every batch norm, as NumPy."""
    numpy = keras.ops.convert_to_numpy
    return {
        layer.name: (numpy(layer.moving_mean), numpy(layer.moving_variance))
        for layer in batch_norm_layers(model)
    }


def set_batch_norm_statistics(model: keras.Model, statistics: dict) -> None:
    """Assigns `batch_norm_statistics` output to the model's batch norms; ValueError if they differ."""
    bns = {layer.name: layer for layer in batch_norm_layers(model)}
    if set(bns) != set(statistics):
        raise ValueError(
            f"batch-norm statistics for {len(statistics)} layers, the model has {len(bns)} others"
        )
    for name, (mean, variance) in statistics.items():
        if tuple(bns[name].moving_mean.shape) != tuple(mean.shape):
            raise ValueError(
                f"batch-norm statistics of shape {mean.shape} for {name} {bns[name].moving_mean.shape}"
            )
        bns[name].moving_mean.assign(mean)
        bns[name].moving_variance.assign(variance)


def _affine_layers(model: keras.Model) -> dict:
    """{name: layer} of the batch norms with both a scale gamma and a shift beta (all of cdt_tf's)."""
    return {
        layer.name: layer
        for layer in batch_norm_layers(model)
        if layer.gamma is not None and layer.beta is not None
    }


def batch_norm_affine(model: keras.Model) -> dict:
    """{layer name: (gamma [C], beta [C])} of every batch norm with both, as NumPy."""
    numpy = keras.ops.convert_to_numpy
    return {name: (numpy(layer.gamma), numpy(layer.beta)) for name, layer in _affine_layers(model).items()}


def set_batch_norm_affine(model: keras.Model, affine: dict) -> None:
    """Assigns `batch_norm_affine` output to the model's batch norms; ValueError if they differ."""
    bns = _affine_layers(model)
    if set(bns) != set(affine):
        raise ValueError(
            f"batch-norm gamma and beta for {len(affine)} layers, the model has {len(bns)} others"
        )
    for name, (gamma, beta) in affine.items():
        if tuple(bns[name].gamma.shape) != tuple(gamma.shape) or tuple(bns[name].beta.shape) != tuple(
            beta.shape
        ):
            raise ValueError(
                f"batch-norm gamma and beta of shape {gamma.shape} for {name} {bns[name].gamma.shape}"
            )
        bns[name].gamma.assign(gamma)
        bns[name].beta.assign(beta)


def reestimate_batch_norm(model: keras.Model, batches, steps: int) -> int:
    """Replaces every batch norm's moving statistics by their average over `steps` batches.

    Training-mode forward passes over (images, ...) batches: each batch norm normalises with its
    batch's statistics, whatever its moving ones, and the moving mean and variance become the plain
    average of the batch means and variances (the cumulative average of PyTorch's momentum=None, as
    torch.optim.swa_utils.update_bn). No weight changes. Returns the number of batches used.
    """
    bns = batch_norm_layers(model)
    momenta = [layer.momentum for layer in bns]
    used = 0
    try:
        for used, batch in enumerate(batches.take(steps), start=1):
            for layer in bns:
                layer.momentum = (used - 1) / used  # 0 for the first batch: the old statistics go.
            model(keras.ops.cast(batch[0], "float32"), training=True)  # Eager: reads each momentum.
    finally:
        for layer, momentum in zip(bns, momenta, strict=True):
            layer.momentum = momentum
    if not used:
        raise ValueError("no batches to re-estimate the batch-norm statistics on")
    return used


def with_classifier(model: keras.Model, kernel, bias) -> keras.Model:
    """The same network with a new linear classifier: f(x) @ kernel + bias (e.g. a cRT head).

    kernel [D, C] and bias [C] replace the "classifier" layer (any kind); the feature layers and
    their weights are shared with `model`. Raises ValueError when kernel does not fit the features.
    """
    kernel = keras.ops.convert_to_numpy(kernel).astype("float32")
    bias = keras.ops.convert_to_numpy(bias).astype("float32")
    features = model.get_layer("classifier").input
    width = features.shape[-1]
    if kernel.ndim != 2 or kernel.shape[0] != width or bias.shape != (kernel.shape[1],):
        raise ValueError(
            f"a classifier kernel {kernel.shape} and bias {bias.shape} do not fit {width} features"
        )
    classifier = layers.Dense(kernel.shape[1], name="classifier", dtype="float32")
    outputs = classifier(features)
    classifier.set_weights([kernel, bias])
    return keras.Model(model.inputs, outputs, name=model.name)
