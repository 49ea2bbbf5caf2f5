"""Training objectives: Class-Dependent Temperatures (CDT), as a pure function and a Keras loss."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from cdt_tf import class_stats


def cdt_cross_entropy(labels, logits, temperatures):
    """Per-example softmax cross-entropy of logits divided per class by temperatures.

    loss_n = -log softmax(z_n / a)[y_n], with z_n = W^T f(x_n) (paper eq. 3).

    Args:
      labels: int [B], class indices.
      logits: float [B, C], the undivided decision values w_c^T f(x).
      temperatures: float [C], a_c >= 1.

    Returns:
      float32 [B].
    """
    logits = ops.cast(logits, "float32")
    scaled = logits / ops.cast(temperatures, "float32")
    return ops.sparse_categorical_crossentropy(
        ops.cast(ops.reshape(labels, (-1,)), "int32"), scaled, from_logits=True
    )


@keras.saving.register_keras_serializable(package="cdt_tf")
class CDTLoss(keras.losses.Loss):
    """Class-Dependent Temperatures loss (Ye et al., "Identifying and Compensating for
    Feature Deviation in Imbalanced Deep Learning", eq. 3).

        L = -log( exp(z_y / a_y) / sum_c exp(z_c / a_c) ),  a_c = (N_max / N_c)^gamma

    Minor classes get larger temperatures, so training pushes their decision values
    up by a_c to compensate for the feature deviation they will suffer at test time.
    Predict with the plain argmax of the undivided logits. gamma = 0 is exactly
    sparse softmax cross-entropy.

    gamma lives in a non-trainable `keras.Variable` (`loss.gamma`) so a callback can
    `assign` it during training (for example 0 for the first half of training).

    Args:
      class_counts: N_c, training images per class, [C].
      gamma: the exponent, >= 0.
      reduction, name: as for `keras.losses.Loss`.

    Example:
      model.compile(optimizer="sgd", loss=CDTLoss([5000, 500, 50], gamma=0.3),
                    metrics=["sparse_categorical_accuracy"])
    """

    def __init__(
        self,
        class_counts: Sequence[int],
        gamma: float = 0.0,
        reduction: str = "sum_over_batch_size",
        name: str = "cdt_loss",
        **kwargs,
    ):
        super().__init__(name=name, reduction=reduction, **kwargs)
        class_stats.class_temperatures(class_counts, gamma)  # Validates both.
        self.class_counts = [int(c) for c in class_counts]
        counts = ops.convert_to_tensor(self.class_counts, dtype="float32")
        self._size_ratios = ops.max(counts) / counts
        self.gamma = keras.Variable(float(gamma), dtype="float32", trainable=False, name="gamma")

    def temperatures(self):
        """a_c = (N_max / N_c)^gamma for the current gamma, float32 [C]."""
        return ops.power(self._size_ratios, self.gamma)

    def call(self, y_true, y_pred):
        return cdt_cross_entropy(y_true, y_pred, self.temperatures())

    def get_config(self):
        return {
            **super().get_config(),
            "class_counts": self.class_counts,
            "gamma": float(ops.convert_to_numpy(self.gamma)),
        }
