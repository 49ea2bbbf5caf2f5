"""Training objectives for class-imbalanced data, each a registered, serialisable Keras loss.

Every loss takes `class_counts` (N_c, training images per class) and returns per-example
values that Keras reduces ("sum_over_batch_size": the batch mean, times any sample_weight).

Class weights. Every loss here holds a non-trainable `class_weights` variable [C] (all ones
unless given) so that a callback can switch them on during training (deferred re-weighting,
DRW). How a weighted batch is reduced is `weight_reduction`:

  "weights"     L = sum_n w_{y_n} l_n / sum_n w_{y_n}  (PyTorch's F.cross_entropy(weight=...),
                the reference code of LDAM-DRW that the paper's CIFAR baselines come from);
  "batch_size"  L = sum_n w_{y_n} l_n / B              (Keras's class_weight convention).

With all-ones weights both are the plain batch mean. Class weights are normalised to average
1 over classes (sum C), which only changes the loss's scale under "batch_size".
"""

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


WEIGHT_REDUCTIONS = ("weights", "batch_size")


def _labels(y_true):
    return ops.cast(ops.reshape(y_true, (-1,)), "int32")


def _counts_tensor(class_counts):
    return ops.convert_to_tensor([float(c) for c in class_counts], dtype="float32")


class ClassWeightedLoss(keras.losses.Loss):
    """Base of the losses here: per-example loss l_n times w_{y_n}, reduced as `weight_reduction` says.

    Subclasses implement `unweighted(labels, logits) -> [B]` and may override `class_weight_vector()`.
    """

    def __init__(
        self,
        class_counts: Sequence[int],
        class_weights: Sequence[float] | None = None,
        weight_reduction: str = "weights",
        reduction: str = "sum_over_batch_size",
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, reduction=reduction, **kwargs)
        class_stats.class_temperatures(class_counts, 0.0)  # Validates the counts.
        if weight_reduction not in WEIGHT_REDUCTIONS:
            raise ValueError(f"weight_reduction must be one of {WEIGHT_REDUCTIONS}, got {weight_reduction!r}")
        self.class_counts = [int(c) for c in class_counts]
        self.weight_reduction = weight_reduction
        weights = (
            [1.0] * len(self.class_counts) if class_weights is None else [float(w) for w in class_weights]
        )
        if len(weights) != len(self.class_counts) or min(weights) < 0:
            raise ValueError(
                f"class_weights must be {len(self.class_counts)} non-negative numbers, got {class_weights!r}"
            )
        self.class_weights = keras.Variable(weights, dtype="float32", trainable=False, name="class_weights")

    def unweighted(self, labels, logits):
        raise NotImplementedError

    def class_weight_vector(self):
        """The weights w_c [C] in force now (float32)."""
        return ops.convert_to_tensor(self.class_weights)

    def call(self, y_true, y_pred):
        labels = _labels(y_true)
        losses = self.unweighted(labels, ops.cast(y_pred, "float32"))
        weights = ops.take(self.class_weight_vector(), labels)
        if self.weight_reduction == "weights":
            # sum(w l) / sum(w) after Keras's batch mean; a batch with all-zero weights gives 0.
            weights = weights / ops.maximum(ops.mean(weights), 1e-12)
        return losses * weights

    def get_config(self):
        return {
            **super().get_config(),
            "class_counts": self.class_counts,
            "class_weights": [float(w) for w in ops.convert_to_numpy(self.class_weights)],
            "weight_reduction": self.weight_reduction,
        }


@keras.saving.register_keras_serializable(package="cdt_tf")
class WeightedCrossEntropy(ClassWeightedLoss):
    """Softmax cross-entropy with class weights: L = w_y * -log softmax(z)[y] (ERM when the weights are 1).

    The loss for ERM with deferred re-weighting (CE-DRW): the weights start at 1 and a callback
    switches them on.
    """

    def __init__(self, class_counts: Sequence[int], name: str = "weighted_cross_entropy", **kwargs):
        super().__init__(class_counts, name=name, **kwargs)

    def unweighted(self, labels, logits):
        return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)


@keras.saving.register_keras_serializable(package="cdt_tf")
class CDTLoss(ClassWeightedLoss):
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
      class_weights, weight_reduction, reduction, name: as for `ClassWeightedLoss`.

    Example:
      model.compile(optimizer="sgd", loss=CDTLoss([5000, 500, 50], gamma=0.3),
                    metrics=["sparse_categorical_accuracy"])
    """

    def __init__(self, class_counts: Sequence[int], gamma: float = 0.0, name: str = "cdt_loss", **kwargs):
        super().__init__(class_counts, name=name, **kwargs)
        class_stats.class_temperatures(class_counts, gamma)  # Validates gamma.
        counts = _counts_tensor(self.class_counts)
        self._size_ratios = ops.max(counts) / counts
        self.gamma = keras.Variable(float(gamma), dtype="float32", trainable=False, name="gamma")

    def temperatures(self):
        """a_c = (N_max / N_c)^gamma for the current gamma, float32 [C]."""
        return ops.power(self._size_ratios, self.gamma)

    def unweighted(self, labels, logits):
        return cdt_cross_entropy(labels, logits, self.temperatures())

    def get_config(self):
        return {**super().get_config(), "gamma": float(ops.convert_to_numpy(self.gamma))}


@keras.saving.register_keras_serializable(package="cdt_tf")
class ReweightedCrossEntropy(ClassWeightedLoss):
    """The paper's re-weighting baseline: softmax cross-entropy with instance weight N_c^-gamma.

        L = w_y * -log softmax(z)[y],   w_c = C * N_c^-gamma / sum_k N_k^-gamma

    so the weights average 1 over classes (sum C); gamma = 1 is inverse class frequency,
    gamma = 0 is ERM. gamma is a `keras.Variable` (`loss.gamma`) like CDT's, so the same
    schedule callback defers it (a DRW-style switch). Any `class_weights` multiply these.
    """

    def __init__(
        self,
        class_counts: Sequence[int],
        gamma: float = 1.0,
        name: str = "reweighted_cross_entropy",
        **kwargs,
    ):
        super().__init__(class_counts, name=name, **kwargs)
        class_stats.reweighting_weights(class_counts, gamma)  # Validates gamma.
        self._log_counts = ops.log(_counts_tensor(self.class_counts))
        self.gamma = keras.Variable(float(gamma), dtype="float32", trainable=False, name="gamma")

    def class_weight_vector(self):
        powers = ops.exp(-self.gamma * self._log_counts)
        normalised = powers * (len(self.class_counts) / ops.sum(powers))
        return normalised * ops.convert_to_tensor(self.class_weights)

    def unweighted(self, labels, logits):
        return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)

    def get_config(self):
        return {**super().get_config(), "gamma": float(ops.convert_to_numpy(self.gamma))}


@keras.saving.register_keras_serializable(package="cdt_tf")
class FocalLoss(ClassWeightedLoss):
    """Softmax focal loss (Lin et al. 2017): L = w_y * (1 - p_y)^focal_gamma * -log p_y, p = softmax(z).

    focal_gamma = 0 is softmax cross-entropy.
    """

    def __init__(
        self, class_counts: Sequence[int], focal_gamma: float = 1.0, name: str = "focal_loss", **kwargs
    ):
        super().__init__(class_counts, name=name, **kwargs)
        if not focal_gamma >= 0:
            raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}")
        self.focal_gamma = float(focal_gamma)

    def unweighted(self, labels, logits):
        cross_entropy = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        if self.focal_gamma == 0:
            return cross_entropy
        p_true = ops.exp(-cross_entropy)
        return ops.power(ops.maximum(1.0 - p_true, 0.0), self.focal_gamma) * cross_entropy

    def get_config(self):
        return {**super().get_config(), "focal_gamma": self.focal_gamma}


@keras.saving.register_keras_serializable(package="cdt_tf")
class ClassBalancedLoss(FocalLoss):
    """Class-balanced loss (Cui et al., CVPR 2019): softmax CE or focal loss weighted by effective numbers.

        w_c = C * (1/E_c) / sum_k (1/E_k),  E_c = (1 - beta^N_c) / (1 - beta)   (sum_c w_c = C)
        L = w_y * (1 - p_y)^focal_gamma * -log p_y     (focal_gamma = 0: softmax cross-entropy)

    `class_weights`, when given, replaces the effective-number weights (DRW passes ones and
    switches them on later).
    """

    def __init__(
        self,
        class_counts: Sequence[int],
        beta: float = 0.9999,
        focal_gamma: float = 0.0,
        class_weights: Sequence[float] | None = None,
        name: str = "class_balanced_loss",
        **kwargs,
    ):
        weights = class_stats.effective_number_weights(class_counts, beta)
        if class_weights is None:
            class_weights = weights.tolist()
        super().__init__(
            class_counts, focal_gamma=focal_gamma, class_weights=class_weights, name=name, **kwargs
        )
        self.beta = float(beta)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package="cdt_tf")
class LDAMLoss(ClassWeightedLoss):
    """Label-distribution-aware margin loss (Cao et al., NeurIPS 2019).

        L = w_y * -log softmax(s * (z - m_y e_y))[y],  m_c = max_margin * (N_min / N_c)^(1/4)

    z are the decision values of a normalised (cosine) classifier, in [-1, 1], so the scale
    s (30) sets the softmax's sharpness; the margin is subtracted from the true class only.
    Prediction is the plain argmax of z. With DRW, the class weights switch on late in training.
    """

    def __init__(
        self,
        class_counts: Sequence[int],
        max_margin: float = 0.5,
        scale: float = 30.0,
        name: str = "ldam_loss",
        **kwargs,
    ):
        super().__init__(class_counts, name=name, **kwargs)
        if not scale > 0:
            raise ValueError(f"LDAM scale must be > 0, got {scale}")
        self.max_margin, self.scale = float(max_margin), float(scale)
        self._margins = ops.convert_to_tensor(
            class_stats.ldam_margins(self.class_counts, max_margin).astype("float32")
        )

    def unweighted(self, labels, logits):
        num_classes = len(self.class_counts)
        margins = ops.one_hot(labels, num_classes) * ops.take(self._margins, labels)[:, None]
        return ops.sparse_categorical_crossentropy(labels, self.scale * (logits - margins), from_logits=True)

    def get_config(self):
        return {**super().get_config(), "max_margin": self.max_margin, "scale": self.scale}


@keras.saving.register_keras_serializable(package="cdt_tf")
class LogitAdjustedLoss(ClassWeightedLoss):
    """Logit-adjusted loss (Menon et al., ICLR 2021): L = w_y * -log softmax(z + tau * log pi)[y].

    pi_c = N_c / sum_k N_k is the training label prior. Predict with the plain argmax of z.
    """

    def __init__(
        self, class_counts: Sequence[int], tau: float = 1.0, name: str = "logit_adjusted_loss", **kwargs
    ):
        super().__init__(class_counts, name=name, **kwargs)
        self.tau = float(tau)
        self._adjustment = ops.convert_to_tensor(
            (self.tau * class_stats.log_prior(self.class_counts)).astype("float32")
        )

    def unweighted(self, labels, logits):
        return ops.sparse_categorical_crossentropy(labels, logits + self._adjustment, from_logits=True)

    def get_config(self):
        return {**super().get_config(), "tau": self.tau}
