"""cdt_tf: long-tailed image classification with Class-Dependent Temperatures (TensorFlow / Keras 3).

Public API:
  imbalanced_counts, class_temperatures, shot_groups   pure NumPy class statistics
  reweighting_weights, effective_number_weights,       class weights and margins of the baselines
  ldam_margins
  CDTLoss, cdt_cross_entropy                           the CDT objective
  ReweightedCrossEntropy, FocalLoss, ClassBalancedLoss,
  LDAMLoss, LogitAdjustedLoss, WeightedCrossEntropy    the baselines' objectives (Keras losses)
  CoupledDecaySGD, WarmupStepDecay                     the paper's optimizer and schedule
  cifar_resnet, build_model, CosineClassifier          networks
  NcTauCalibration, nc_tau_calibrate                   post-hoc calibration logits / N_c^tau (eq. 5)
"""

from cdt_tf.class_stats import (
    class_temperatures,
    effective_number_weights,
    imbalanced_counts,
    ldam_margins,
    reweighting_weights,
    shot_groups,
)

_LOSSES = (
    "CDTLoss",
    "cdt_cross_entropy",
    "ReweightedCrossEntropy",
    "FocalLoss",
    "ClassBalancedLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "WeightedCrossEntropy",
)

__all__ = [
    "imbalanced_counts",
    "class_temperatures",
    "shot_groups",
    "reweighting_weights",
    "effective_number_weights",
    "ldam_margins",
    *_LOSSES,
    "CoupledDecaySGD",
    "WarmupStepDecay",
    "cifar_resnet",
    "build_model",
    "CosineClassifier",
    "NcTauCalibration",
    "nc_tau_calibrate",
]


def __getattr__(name):
    # Keras-dependent names load lazily, so the pure NumPy part imports without TensorFlow.
    if name in _LOSSES:
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
    if name in ("cifar_resnet", "build_model", "CosineClassifier"):
        from cdt_tf import models

        return getattr(models, name)
    raise AttributeError(f"module 'cdt_tf' has no attribute {name!r}")
