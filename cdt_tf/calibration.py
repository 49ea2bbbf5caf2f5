"""Post-hoc calibration of decision values, applied after training (no retraining): N_c^tau and
logit adjustment, as Keras layers for the exported graph.

N_c^tau (Ye et al., "Identifying and Compensating for Feature Deviation in Imbalanced Deep
Learning", §4.1, eq. 5) divides the decision value of class c by its training-set size raised
to tau:

    y_hat = argmax_c  w_c^T f(x) / N_c^tau

tau = 0 leaves the decision values unchanged; a larger tau shrinks the values of the major
classes more than those of the minor ones, so more test images go to minor classes (the
paper's Fig. 13). Our classifier has a bias, so its decision values are w_c^T f(x) + b_c and
the whole value is divided.

TAU_RANGE is the tau a deployed calibration accepts: NcTauCalibration, `cdt_tf.export --tau` and
the export's serve_with_tau signature refuse any other tau (the NumPy rule nc_tau_calibrate, a
float64 reference for post-hoc sweeps, takes any tau).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import keras
import numpy as np

# The tau NcTauCalibration, `cdt_tf.export --tau` and serve_with_tau accept: 0 (plain argmax) to 5.
# The paper selects tau in about [0, 0.5] and cdt_tf.post_hoc sweeps [0, 2]; at tau = 5 a class with
# twice the images is already divided by 32 more. Within it the float32 calibration stays finite and
# non-zero for any realistic class counts (see NcTauCalibration).
TAU_RANGE = (0.0, 5.0)

# NcTauCalibration keeps every class's factor e^(s - tau ln N_c) within [e^-60, e^60] (float32 holds
# e^+-87): logits of magnitude 1e-11 to 1e12 stay non-zero and finite.
_LOG_SCALE_LIMIT = 60.0


def check_tau(tau) -> float:
    """tau as a float; ValueError unless it is a finite number in TAU_RANGE."""
    low, high = TAU_RANGE
    try:
        value = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"tau must be a number in [{low:g}, {high:g}], got {tau!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"tau must be a finite number in [{low:g}, {high:g}], got {value:g}")
    return value


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
      tau: the exponent; 0 returns the logits unchanged. Any tau (no TAU_RANGE check): this is the
        float64 reference, exact while N_c^tau fits float64 (N_max^tau < 1e308).

    Returns:
      float64 [..., C].
    """
    counts = _checked_counts(class_counts)
    return np.asarray(logits, np.float64) / counts**tau


def nc_tau_scale(tau: float, class_counts: Sequence[int]) -> float:
    """The positive constant NcTauCalibration's output is logits / N_c^tau multiplied by (1 or more).

    1 (the output is exactly logits / N_c^tau) while tau * ln N_max <= 60, i.e. N_max^tau <= e^60
    (1.1e26): for every tau in TAU_RANGE when N_max <= 162,754. Beyond, e^(tau ln N_max - 60): the
    largest class is divided by e^60 instead of an N_max^tau whose reciprocal would underflow float32.
    """
    log_max = float(np.log(_checked_counts(class_counts)).max())
    return math.exp(max(tau * log_max - _LOG_SCALE_LIMIT, 0.0))


class _TauCalibration(keras.layers.Layer):
    """Base of the calibration layers: class counts, tau in a non-trainable variable or per call.

    Subclasses implement `calibrate(logits float32 [B, C], tau float32 []) -> [B, C] float32`.
    """

    def __init__(self, class_counts: Sequence[int], tau: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.class_counts = [int(c) for c in _checked_counts(class_counts)]
        self.tau = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(check_tau(tau)),
            trainable=False,
            dtype="float32",
            name="tau",
        )

    def call(self, logits, tau=None):
        """logits [B, C] -> calibrated logits [B, C] (float32); tau: an optional float32 scalar."""
        if tau is None:
            tau = self.tau
        elif isinstance(tau, numbers.Real):
            tau = check_tau(tau)
        return self.calibrate(keras.ops.cast(logits, "float32"), tau)

    def calibrate(self, logits, tau):
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "class_counts": list(self.class_counts),
            "tau": float(keras.ops.convert_to_numpy(self.tau)),
        }


@keras.saving.register_keras_serializable(package="cdt_tf")
class NcTauCalibration(_TauCalibration):
    """Divides decision values by N_c^tau (eq. 5 of Ye et al., §4.1): logits [B, C] -> [B, C] float32.

    The prediction of the calibrated rule is the argmax of the output. tau lives in a
    non-trainable `keras.Variable` (`layer.tau.assign(0.5)` moves along the head/tail
    trade-off without rebuilding the layer), or is passed per call: `layer(logits, tau=t)`.
    tau must lie in TAU_RANGE ([0, 5]): checked at construction and for a Python number passed
    per call; a tensor tau or a value assigned to `layer.tau` is the caller's to check (the
    export's serve_with_tau asserts it in the graph).

    The output is logits / N_c^tau exactly unless N_max^tau > e^60 (possible only for
    N_max > 162,754 images in a class): then it is logits / N_c^tau times the positive constant
    nc_tau_scale(tau, class_counts) = N_max^tau e^-60, i.e. logits * e^-60 (N_max / N_c)^tau,
    where the plain division would fall below float32's range (1e-38) and become 0 for every
    class. A constant factor keeps the argmax and the order of every row's values. The factors
    are computed in float64 as exp(s - tau ln N_c) and lie in [e^-60, e^60] for every tau in
    TAU_RANGE (the constructor refuses counts with N_max / N_min > e^24 = 2.6e10, which would
    need more), so calibrated values are finite and non-zero for logits of magnitude 1e-11..1e12.

    Args:
      class_counts: training images per class N_c [C], each >= 1 (results.json's class_counts).
      tau: the default exponent (a float in TAU_RANGE; 0 is the plain argmax of the logits).

    Example:
      calibrated = NcTauCalibration([5000, 2997, ..., 50], tau=0.5)(model.output)
    """

    def __init__(self, class_counts: Sequence[int], tau: float = 0.0, **kwargs):
        super().__init__(class_counts, tau, **kwargs)
        log_counts = np.log(np.asarray(self.class_counts, np.float64))
        spread = TAU_RANGE[1] * float(log_counts.max() - log_counts.min())
        if spread > 2 * _LOG_SCALE_LIMIT:
            limit = 2 * _LOG_SCALE_LIMIT / TAU_RANGE[1]
            raise ValueError(
                f"class counts from {min(self.class_counts)} to {max(self.class_counts)} images are too "
                f"imbalanced for N_c^tau in float32 (N_max / N_min must be at most e^{limit:g})"
            )
        # N_c^-tau = exp(-tau * log N_c), in float64: one exp per class instead of a pow.
        self._log_counts = log_counts
        self._log_max = float(log_counts.max())

    def calibrate(self, logits, tau):
        """logits / N_c^tau (times nc_tau_scale's constant where N_max^tau > e^60)."""
        tau = keras.ops.cast(tau, "float64")
        log_counts = keras.ops.convert_to_tensor(self._log_counts, "float64")
        # s = max(0, tau ln N_max - 60): 0 (exact division) unless N_max^tau would exceed e^60.
        shift = keras.ops.maximum(tau * self._log_max - _LOG_SCALE_LIMIT, 0.0)
        return logits * keras.ops.cast(keras.ops.exp(shift - tau * log_counts), "float32")


@keras.saving.register_keras_serializable(package="cdt_tf")
class LogitAdjustmentCalibration(_TauCalibration):
    """Post-hoc logit adjustment (Menon et al., ICLR 2021, "Long-tail learning via logit adjustment"):
    logits [B, C] -> logits - tau * log pi_c [B, C] float32, pi_c = N_c / sum_k N_k the training prior.

    The prediction argmax_c z_c - tau log pi_c moves images from the head classes (large pi_c, small
    -log pi_c) to the tail; tau = 1 is the Bayes-optimal rule for a balanced test set when the
    softmax estimates the training posterior. Same interface as NcTauCalibration: tau in a
    non-trainable `keras.Variable`, or per call `layer(logits, tau=t)`; tau in TAU_RANGE, checked at
    construction and for a Python number passed per call. The subtraction cannot underflow: the
    offsets are at most tau * ln(N / N_min) (under 5 * 60 for any realistic counts).

    Args:
      class_counts: training images per class N_c [C], each >= 1 (results.json's class_counts).
      tau: the default tau (a float in TAU_RANGE; 0 is the plain argmax of the logits).

    Example:
      calibrated = LogitAdjustmentCalibration([5000, 2997, ..., 50], tau=0.46)(model.output)
    """

    def __init__(self, class_counts: Sequence[int], tau: float = 0.0, **kwargs):
        super().__init__(class_counts, tau, **kwargs)
        counts = np.asarray(self.class_counts, np.float64)
        self._log_prior = np.log(counts / counts.sum()).astype(np.float32)

    def calibrate(self, logits, tau):
        """logits - tau log pi_c."""
        log_prior = keras.ops.convert_to_tensor(self._log_prior, "float32")
        return logits - keras.ops.cast(tau, "float32") * log_prior


# catalog.CALIBRATIONS (cdt_tf.export --calibration) -> the layer that applies it, (class_counts, tau).
CALIBRATION_LAYERS = {"nc_tau": NcTauCalibration, "logit_adjustment": LogitAdjustmentCalibration}
