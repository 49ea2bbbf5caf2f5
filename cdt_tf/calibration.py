"""Post-hoc calibration of decision values, applied after training (no retraining).

N_c^tau (Ye et al., "Identifying and Compensating for Feature Deviation in Imbalanced Deep
Learning", §4.1, eq. 5) divides the decision value of class c by its training-set size raised
to tau:

    y_hat = argmax_c  w_c^T f(x) / N_c^tau

tau = 0 leaves the decision values unchanged; a larger tau shrinks the values of the major
classes more than those of the minor ones, so more test images go to minor classes (the
paper's Fig. 13). Our classifier has a bias, so its decision values are w_c^T f(x) + b_c and
the whole value is divided.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np


def _checked_counts(class_counts: Sequence[int]) -> np.ndarray:
    counts = np.asarray(class_counts, np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"class_counts must be a non-empty list of per-class counts, got {class_counts!r}")
    if not (counts >= 1).all():
        raise ValueError(f"every class count N_c must be >= 1, got {class_counts!r}")
    return counts


def nc_tau_calibrate(logits: np.ndarray, class_counts: Sequence[int], tau: float) -> np.ndarray:
    """The N_c^tau rule of eq. 5 in NumPy: logits / N_c^tau.

    Args:
      logits: decision values [..., C].
      class_counts: training images per class N_c [C], each >= 1.
      tau: the exponent; 0 returns the logits unchanged.

    Returns:
      float64 [..., C].
    """
    counts = _checked_counts(class_counts)
    return np.asarray(logits, np.float64) / counts**tau


@keras.saving.register_keras_serializable(package="cdt_tf")
class NcTauCalibration(keras.layers.Layer):
    """Divides decision values by N_c^tau (eq. 5 of Ye et al., §4.1): logits [B, C] -> [B, C] float32.

    The prediction of the calibrated rule is the argmax of the output. tau lives in a
    non-trainable `keras.Variable` (`layer.tau.assign(0.5)` moves along the head/tail
    trade-off without rebuilding the layer), or is passed per call: `layer(logits, tau=t)`.

    Args:
      class_counts: training images per class N_c [C], each >= 1 (results.json's class_counts).
      tau: the default exponent (float; 0 is the plain argmax of the logits).

    Example:
      calibrated = NcTauCalibration([5000, 2997, ..., 50], tau=0.5)(model.output)
    """

    def __init__(self, class_counts: Sequence[int], tau: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        counts = _checked_counts(class_counts)
        self.class_counts = [int(c) for c in counts]
        # N_c^-tau = exp(-tau * log N_c): one exp per class instead of a pow.
        self._log_counts = np.log(counts).astype(np.float32)
        self.tau = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(float(tau)),
            trainable=False,
            dtype="float32",
            name="tau",
        )

    def call(self, logits, tau=None):
        """logits [B, C] -> logits / N_c^tau [B, C] (float32); tau: an optional float32 scalar."""
        tau = self.tau if tau is None else keras.ops.cast(tau, "float32")
        log_counts = keras.ops.convert_to_tensor(self._log_counts)
        scale = keras.ops.exp(-tau * log_counts)
        return keras.ops.cast(logits, "float32") * scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "class_counts": list(self.class_counts),
            "tau": float(keras.ops.convert_to_numpy(self.tau)),
        }
