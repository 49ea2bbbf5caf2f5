"""He et al. (2016)'s ImageNet ResNets: ResNet-18 for Tiny-ImageNet and ResNet-50 for iNaturalist.

Written with the conventions of `network_layers` (FusedBatchNormalization with PyTorch's momentum
and eps, He-normal fan-in init) and projection shortcuts (1x1 convolution + BN) where the shape
changes. `models.build_model` builds them by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from cdt_tf import catalog
from cdt_tf.network_layers import classifier_output, conv_bn, normalize_images

IMAGENET_MEAN, IMAGENET_STD = catalog.IMAGENET_MEAN, catalog.IMAGENET_STD  # The defaults of both.
WIDTHS = (64, 128, 256, 512)


def _residual_output(residual, x, filters: int, strides: int, name: str, padding: str):
    """ReLU(residual + shortcut): x itself, or a projection (1x1 conv, stride, BN) where the shape changes."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv_bn(x, filters, 1, strides, f"{name}_shortcut", padding, relu=False)
    y = layers.Add(name=f"{name}_add")([residual, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def _projection_basic_block(x, filters: int, strides: int, name: str, padding: str):
    """ResNet-18's block: 3x3 (stride) -> 3x3, plus the shortcut."""
    y = conv_bn(x, filters, 3, strides, f"{name}_1", padding)
    y = conv_bn(y, filters, 3, 1, f"{name}_2", padding, relu=False)
    return _residual_output(y, x, filters, strides, name, padding)


def _bottleneck_block(x, filters: int, strides: int, name: str, padding: str):
    """ResNet-50's block: 1x1 -> 3x3 (stride) -> 1x1 to 4 * filters, plus the shortcut.

    The stride sits on the 3x3 convolution ("ResNet v1.5", as torchvision and the TPU ResNet-50
    of the paper's iNaturalist code [8]); the last BN starts with gamma = 0 (as there), so each
    block starts as the identity.
    """
    y = conv_bn(x, filters, 1, 1, f"{name}_1", padding)
    y = conv_bn(y, filters, 3, strides, f"{name}_2", padding)
    y = conv_bn(y, 4 * filters, 1, 1, f"{name}_3", padding, relu=False, zero_gamma=True)
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
    x = conv_bn(normalize_images(inputs, mean, std), WIDTHS[0], 3, 1, "stem", padding)
    for stage, filters in enumerate(WIDTHS):
        for block in range(2):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _projection_basic_block(x, filters, strides, f"stage{stage + 1}_block{block + 1}", padding)
    features = layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, classifier_output(features, num_classes, classifier), name="resnet18")


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
    x = conv_bn(normalize_images(inputs, mean, std), WIDTHS[0], 7, 2, "stem", padding)
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
    return keras.Model(inputs, classifier_output(features, num_classes, classifier), name="resnet50")


IMAGENET_RESNETS = {"resnet18": resnet18, "resnet50": resnet50}
