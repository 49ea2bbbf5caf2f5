"""The layers every cdt_tf network is built from: batch norm, initialisation, conv-BN-ReLU, classifiers.

PyTorch's batch-norm defaults and He-normal fan-in init (as the reference code), the fused batch
norm, the input normalisation, the conv-BN-ReLU unit with its padding choice, and the last layer
("classifier": linear or cosine). `models` (the CIFAR ResNets, the digits ConvNet) and
`imagenet_resnets` (ResNet-18/50) build on these.
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


def he_normal():
    """He et al. (2016) fan-in normal init, as `kaiming_normal_` in the reference code.

    A new instance per layer: one unseeded initializer shared by several layers would
    give every layer of the same shape the same initial kernel.
    """
    return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")


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


def normalize_images(inputs, mean: Sequence[float], std: Sequence[float]):
    """uint8-range images [B, H, W, 3] -> (x / 255 - mean) / std, in the network: exports need none."""
    x = layers.Rescaling(1.0 / 255.0, name="to_unit_range")(inputs)
    return layers.Normalization(mean=list(mean), variance=[s * s for s in std], name="normalize")(x)


def conv_bn(
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
        kernel_initializer=he_normal(),
        name=f"{name}_conv",
    )(x)
    x = FusedBatchNormalization(
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=f"{name}_bn",
    )(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


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
            shape=(input_shape[-1], self.units), initializer=he_normal(), name="kernel", dtype="float32"
        )

    def call(self, inputs):
        features = keras.ops.normalize(keras.ops.cast(inputs, "float32"), axis=-1)
        return keras.ops.matmul(features, keras.ops.normalize(self.kernel, axis=0))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def classifier_output(features, num_classes: int, kind: str = "linear"):
    """The logits [B, num_classes] (float32) of the layer named "classifier" on features [B, D].

    kind: "linear" (Dense with bias, He-normal kernel) or "cosine" (`CosineClassifier`).
    """
    if kind == "cosine":
        return CosineClassifier(num_classes, name="classifier", dtype="float32")(features)
    if kind != "linear":
        raise ValueError(f"unknown classifier {kind!r}; use one of {CLASSIFIERS}")
    return layers.Dense(num_classes, kernel_initializer=he_normal(), name="classifier", dtype="float32")(
        features
    )
