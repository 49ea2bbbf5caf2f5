"""cdt_tf: long-tailed image classification with Class-Dependent Temperatures (TensorFlow / Keras 3).

Public API:
  imbalanced_counts, class_temperatures, shot_groups   pure NumPy class statistics
  CDTLoss, cdt_cross_entropy                           the CDT objective
  CoupledDecaySGD, WarmupStepDecay                     the paper's optimizer and schedule
  cifar_resnet, build_model                            networks
  NcTauCalibration, nc_tau_calibrate                   post-hoc calibration logits / N_c^tau (eq. 5)
"""

from cdt_tf.class_stats import class_temperatures, imbalanced_counts, shot_groups

__all__ = [
    "imbalanced_counts",
    "class_temperatures",
    "shot_groups",
    "CDTLoss",
    "cdt_cross_entropy",
    "CoupledDecaySGD",
    "WarmupStepDecay",
    "cifar_resnet",
    "build_model",
    "NcTauCalibration",
    "nc_tau_calibrate",
]


def __getattr__(name):
    # Keras-dependent names load lazily, so the pure NumPy part imports without TensorFlow.
    if name in ("CDTLoss", "cdt_cross_entropy"):
        from cdt_tf import losses

        return getattr(losses, name)
    if name == "CoupledDecaySGD":
        from cdt_tf.optimizers import CoupledDecaySGD

        return CoupledDecaySGD
    if name == "WarmupStepDecay":
        from cdt_tf.schedules import WarmupStepDecay

        return WarmupStepDecay
    if name in ("NcTauCalibration", "nc_tau_calibrate"):
        from cdt_tf import calibration

        return getattr(calibration, name)
    if name in ("cifar_resnet", "build_model"):
        from cdt_tf import models

        return getattr(models, name)
    raise AttributeError(f"module 'cdt_tf' has no attribute {name!r}")
