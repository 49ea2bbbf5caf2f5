"""cdt_tf: long-tailed image classification with Class-Dependent Temperatures (TensorFlow / Keras 3).

Public API:
  imbalanced_counts, class_temperatures, shot_groups   pure NumPy class statistics
  reweighting_weights, effective_number_weights,       class weights and margins of the baselines
  ldam_margins
  CDTLoss, cdt_cross_entropy                           the CDT objective
  ReweightedCrossEntropy, FocalLoss, ClassBalancedLoss,
  LDAMLoss, LogitAdjustedLoss, WeightedCrossEntropy    the baselines' objectives (Keras losses)
  CoupledDecaySGD, WarmupStepDecay, WarmupCosineDecay  the paper's optimizer and schedule, and cosine
  cifar_resnet, build_model, CosineClassifier          networks
  NcTauCalibration, nc_tau_calibrate                   post-hoc calibration logits / N_c^tau (eq. 5)

Importing the package registers every cdt_tf Keras object (layers, losses, optimizer, schedule) with
Keras, so that `keras.saving.load_model("model.keras")` works after `import cdt_tf`; the pure NumPy
part (`cdt_tf.class_stats`) still imports without TensorFlow: the registration happens when Keras
is (or has been) imported.
"""

import importlib.abc
import importlib.util
import sys

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
    "WarmupCosineDecay",
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
    if name in ("WarmupStepDecay", "WarmupCosineDecay"):
        from cdt_tf import schedules

        return getattr(schedules, name)
    if name in ("NcTauCalibration", "nc_tau_calibrate"):
        from cdt_tf import calibration

        return getattr(calibration, name)
    if name in ("cifar_resnet", "build_model", "CosineClassifier"):
        from cdt_tf import models

        return getattr(models, name)
    raise AttributeError(f"module 'cdt_tf' has no attribute {name!r}")


def _register_keras_objects() -> None:
    # Each module registers its objects with keras.saving.register_keras_serializable on import.
    from cdt_tf import calibration, losses, models, optimizers, schedules  # noqa: F401


class _RegisterAfterKerasImport(importlib.abc.MetaPathFinder):
    """Runs `_register_keras_objects` right after the first `import keras` of the process."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)  # Once; and find_spec below must not find this finder again.
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _register_keras_objects()

        spec.loader.exec_module = exec_module
        return spec


if "keras" in sys.modules:
    _register_keras_objects()
elif not any(isinstance(finder, _RegisterAfterKerasImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKerasImport())
