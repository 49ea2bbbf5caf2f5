"""Networks: the CIFAR ResNet family (ResNet-20/32/44/56/110), ResNet-18/50 and a small digits ConvNet.

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

# PyTorch's BatchNorm2d defaults, which the reference code (LDAM-DRW) trains with:
# running averages updated with weight 0.1 and eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _he_normal():
    """He et al. (2016) fan-in normal init, as `kaiming_normal_` in the reference code.

    A new instance per layer: one unseeded initializer shared by several layers would
    give every layer of the same shape the same initial kernel.
    """
    return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")


CIFAR_RESNET_DEPTHS = catalog.CIFAR_RESNET_DEPTHS
CONV_PADDINGS = catalog.CONV_PADDINGS


@keras.saving.register_keras_serializable(package="cdt_tf")
class FusedBatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that trains with TensorFlow's fused kernel.

    Keras 3 normalises with separate moment and normalisation ops; on CPUs the fused
    TensorFlow kernel makes ResNet-32 training faster (BENCHMARKS.md, "Throughput").
    Same weights, same config and the same inference path as the Keras layer, so
    checkpoints are interchangeable; other backends fall back to the Keras code.
    The moving variance is updated with the unbiased batch variance, as PyTorch's
    BatchNorm2d in the reference code.
    """

    # TensorFlow's fused kernel takes bfloat16 and float16 inputs with float32 scale and offset and
    # computes the batch statistics in float32, so mixed precision needs no casts around it. True
    # casts the input to float32 and back instead: the path before 2026-12-03, kept so that
    # tools/benchmark_throughput.py --bn_cast_float32 can time the difference.
    cast_to_float32 = False

    def call(self, inputs, training=None, mask=None):
        fusable = (
            training
            and self.trainable
            and mask is None
            and not self.renorm
            and keras.backend.backend() == "tensorflow"
            and self.axis in (-1, len(inputs.shape) - 1)
            and len(inputs.shape) == 4
        )
        if not fusable:
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # Only reached on the TensorFlow backend.

        x = inputs
        if self.cast_to_float32 or x.dtype not in (tf.float32, tf.bfloat16, tf.float16):
            x = tf.cast(x, tf.float32)
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x,
            scale=tf.cast(self.gamma, tf.float32) if self.scale else tf.ones(x.shape[-1]),
            offset=tf.cast(self.beta, tf.float32) if self.center else tf.zeros(x.shape[-1]),
            epsilon=self.epsilon,
            is_training=True,
        )
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)


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


def _normalize(inputs, mean: Sequence[float], std: Sequence[float]):
    x = layers.Rescaling(1.0 / 255.0, name="to_unit_range")(inputs)
    return layers.Normalization(mean=list(mean), variance=[s * s for s in std], name="normalize")(x)


def _conv_bn_relu(x, filters: int, strides: int, name: str, padding: str, relu: bool = True):
    """3x3 conv (no bias), batch norm, optional ReLU: the CIFAR ResNet's unit."""
    return _conv_bn(x, filters, 3, strides, name, padding, relu=relu)


def _basic_block(x, filters: int, strides: int, name: str, padding: str):
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = ZeroPadShortcut((filters - x.shape[-1]) // 2, name=f"{name}_shortcut")(x)
    y = _conv_bn_relu(x, filters, strides, f"{name}_1", padding)
    y = _conv_bn_relu(y, filters, 1, f"{name}_2", padding, relu=False)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


CLASSIFIERS = catalog.CLASSIFIERS


@keras.saving.register_keras_serializable(package="cdt_tf")
class CosineClassifier(layers.Layer):
    """Normalised linear classifier: z_c = <f / ||f||, w_c / ||w_c||>, in [-1, 1], no bias.

    The last layer of LDAM's reference code (its NormedLinear); the loss scales z. Kernel [D, C].
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.units), initializer=_he_normal(), name="kernel", dtype="float32"
        )

    def call(self, inputs):
        features = keras.ops.normalize(keras.ops.cast(inputs, "float32"), axis=-1)
        return keras.ops.matmul(features, keras.ops.normalize(self.kernel, axis=0))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _classifier(features, num_classes: int, kind: str = "linear"):
    if kind == "cosine":
        return CosineClassifier(num_classes, name="classifier", dtype="float32")(features)
    if kind != "linear":
        raise ValueError(f"unknown classifier {kind!r}; use one of {CLASSIFIERS}")
    return layers.Dense(num_classes, kernel_initializer=_he_normal(), name="classifier", dtype="float32")(
        features
    )


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
    x = _conv_bn_relu(_normalize(inputs, mean, std), 16, 1, "stem", padding)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks_per_stage):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, filters, strides, f"stage{stage + 1}_block{block + 1}", padding)
    features = layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, _classifier(features, num_classes, classifier), name=f"resnet{depth}")


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
    x = _conv_bn_relu(_normalize(inputs, mean, std), 32, 1, "block1", padding)
    x = _conv_bn_relu(x, 64, 2, "block2", padding)
    features = layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, _classifier(features, num_classes, classifier), name="digits_convnet")


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

    padding: how strided convolutions pad, one of CONV_PADDINGS (`_conv_bn`).
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


# ----------------------------------------------------------------------------- ResNet-18 and ResNet-50
# He et al. (2016)'s ImageNet ResNets for Tiny-ImageNet (ResNet-18) and iNaturalist (ResNet-50),
# written with the conventions above (FusedBatchNormalization with PyTorch's momentum and eps,
# He-normal fan-in init) and projection shortcuts (1x1 convolution + BN) where the shape changes.

IMAGENET_MEAN, IMAGENET_STD = catalog.IMAGENET_MEAN, catalog.IMAGENET_STD  # The defaults of both.
WIDTHS = (64, 128, 256, 512)


def _conv_bn(
    x,
    filters: int,
    kernel_size: int,
    strides: int,
    name: str,
    padding: str,
    relu: bool = True,
    zero_gamma=False,
):
    """Conv (no bias) -> BN -> optional ReLU. Strided convolutions pad as `padding` says:

    "symmetric": (kernel_size - 1) // 2 zeros on every side, then a "valid" convolution, as PyTorch's
    `padding=k // 2` and the official TensorFlow ResNets' `fixed_padding`: output pixel i is centred
    on input pixel stride * i, where the option-A shortcut (`x[::2, ::2]`) and a strided 1x1
    projection also sample, so the two branches of a residual block stay aligned.
    "same": Keras' "same", which on even sizes pads 0 before and 1 after, centring output i on
    input 2i + 1: one pixel off the shortcut (the only choice before 2026-12-03; `conv_padding`).
    Stride-1 convolutions (odd kernels) pad symmetrically either way.
    """
    conv_padding = "same"
    if padding == "symmetric" and strides > 1:
        if kernel_size > 1:
            x = layers.ZeroPadding2D((kernel_size - 1) // 2, name=f"{name}_pad")(x)
        conv_padding = "valid"
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=conv_padding,
        use_bias=False,
        kernel_initializer=_he_normal(),
        name=f"{name}_conv",
    )(x)
    x = FusedBatchNormalization(
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=f"{name}_bn",
    )(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _residual_output(residual, x, filters: int, strides: int, name: str, padding: str):
    """ReLU(residual + shortcut): x itself, or a projection (1x1 conv, stride, BN) where the shape changes."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, strides, f"{name}_shortcut", padding, relu=False)
    y = layers.Add(name=f"{name}_add")([residual, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def _projection_basic_block(x, filters: int, strides: int, name: str, padding: str):
    """ResNet-18's block: 3x3 (stride) -> 3x3, plus the shortcut."""
    y = _conv_bn(x, filters, 3, strides, f"{name}_1", padding)
    y = _conv_bn(y, filters, 3, 1, f"{name}_2", padding, relu=False)
    return _residual_output(y, x, filters, strides, name, padding)


def _bottleneck_block(x, filters: int, strides: int, name: str, padding: str):
    """ResNet-50's block: 1x1 -> 3x3 (stride) -> 1x1 to 4 * filters, plus the shortcut.

    The stride sits on the 3x3 convolution ("ResNet v1.5", as torchvision and the TPU ResNet-50
    of the paper's iNaturalist code [8]); the last BN starts with gamma = 0 (as there), so each
    block starts as the identity.
    """
    y = _conv_bn(x, filters, 1, 1, f"{name}_1", padding)
    y = _conv_bn(y, filters, 3, strides, f"{name}_2", padding)
    y = _conv_bn(y, 4 * filters, 1, 1, f"{name}_3", padding, relu=False, zero_gamma=True)
    return _residual_output(y, x, 4 * filters, strides, name, padding)


def resnet18(
    num_classes: int,
    input_shape: Sequence[int] = (64, 64, 3),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    classifier: str = "linear",
    padding: str = "symmetric",
) -> keras.Model:
    """ResNet-18 for 64x64 Tiny-ImageNet (and other small) images.

    He et al.'s ImageNet ResNet-18 (basic blocks [2, 2, 2, 2], widths 64/128/256/512, stride 2 at
    the start of stages 2-4, projection shortcuts) with the stem of small-image ResNet-18s: one
    3x3 stride-1 convolution and no max-pool, instead of 7x7 stride 2 + 3x3 max-pool, which would
    leave a 64x64 image 2x2 at the last stage (here 8x8). This is the ResNet-18 of the CIFAR /
    Tiny-ImageNet code the paper's Table 4 follows (LDAM-DRW [5]). 11,173,962 trainable parameters
    for 10 classes; 11,271,432 for Tiny-ImageNet's 200.

    Args and returns: as `cifar_resnet` (no depth).
    """
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = _conv_bn(_normalize(inputs, mean, std), WIDTHS[0], 3, 1, "stem", padding)
    for stage, filters in enumerate(WIDTHS):
        for block in range(2):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _projection_basic_block(x, filters, strides, f"stage{stage + 1}_block{block + 1}", padding)
    features = layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, _classifier(features, num_classes, classifier), name="resnet18")


def resnet50(
    num_classes: int,
    input_shape: Sequence[int] = (224, 224, 3),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    classifier: str = "linear",
    padding: str = "symmetric",
) -> keras.Model:
    """ResNet-50 for 224x224 images (iNaturalist 2018).

    He et al.'s ImageNet ResNet-50: 7x7 stride-2 stem, 3x3 stride-2 max-pool, bottleneck blocks
    [3, 4, 6, 3] of widths 64/128/256/512 (outputs 4x), global average pooling to 2048 features
    (see `_bottleneck_block` for the stride placement and the zero-initialised BN). 25,557,032
    trainable parameters for 1,000 classes (as torchvision's); 40,190,990 for iNaturalist's 8,142.

    Args and returns: as `cifar_resnet` (no depth).
    """
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = _conv_bn(_normalize(inputs, mean, std), WIDTHS[0], 7, 2, "stem", padding)
    pool_padding = "same"
    if padding == "symmetric":  # 1 each side; zeros equal PyTorch's -inf padding after a ReLU.
        x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        pool_padding = "valid"
    x = layers.MaxPooling2D(3, strides=2, padding=pool_padding, name="stem_pool")(x)
    for stage, (filters, blocks) in enumerate(zip(WIDTHS, (3, 4, 6, 3), strict=True)):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _bottleneck_block(x, filters, strides, f"stage{stage + 1}_block{block + 1}", padding)
    features = layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, _classifier(features, num_classes, classifier), name="resnet50")


IMAGENET_RESNETS = {"resnet18": resnet18, "resnet50": resnet50}
