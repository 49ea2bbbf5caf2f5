"""Training objectives for class-imbalanced data, each a registered, serialisable Keras loss.

Every loss here is a `loss_base.ClassWeightedLoss`: it takes `class_counts` (N_c, training images
per class), optional class weights (deferred re-weighting), sparse or soft (MixUp/CutMix) labels and a
`prior_tau` (the prior adjustment z -> t(z) + tau log pi, Menon et al. 2021), as `cdt_tf.loss_base`'s
docstring gives in full, and returns per-example values that Keras reduces.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from cdt_tf import class_stats

# Re-exported: callers and saved code name them as losses.*.
from cdt_tf.loss_base import (  # noqa: F401
    WEIGHT_REDUCTIONS,
    ClassWeightedLoss,
    counts_tensor,
    is_soft_labels,
    soft_cross_entropy,
)

# Stands for -inf where a logit is left out of a sum (exp gives 0 and gradients stay finite).
_VERY_NEGATIVE = -1e30


def cdt_cross_entropy(labels, logits, temperatures):
    """Per-example softmax cross-entropy of logits divided per class by temperatures.

    loss_n = -log softmax(z_n / a)[y_n], with z_n = W^T f(x_n) (paper eq. 3); with soft labels
    q_n, loss_n = -sum_c q_nc log softmax(z_n / a)_c.

    Args:
      labels: int [B] (or [B, 1]) class indices, or float [B, C] soft labels.
      logits: float [B, C], the undivided decision values w_c^T f(x).
      temperatures: float [C], a_c >= 1.

    Returns:
      float32 [B].
    """
    logits = ops.cast(logits, "float32")
    scaled = logits / ops.cast(temperatures, "float32")
    if is_soft_labels(labels, logits.shape[-1]):
        return soft_cross_entropy(labels, scaled)
    return ops.sparse_categorical_crossentropy(
        ops.cast(ops.reshape(labels, (-1,)), "int32"), scaled, from_logits=True
    )


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

    def unweighted_soft(self, targets, logits):
        return soft_cross_entropy(targets, logits)


@keras.saving.register_keras_serializable(package="cdt_tf")
class CDTLoss(ClassWeightedLoss):
    """Class-Dependent Temperatures loss (Ye et al., "Identifying and Compensating for
    Feature Deviation in Imbalanced Deep Learning", eq. 3).

        L = -log( exp(z_y / a_y) / sum_c exp(z_c / a_c) ),  a_c = (N_max / N_c)^gamma

    Minor classes get larger temperatures, so training pushes their decision values
    up by a_c to compensate for the feature deviation they will suffer at test time.
    Predict with the plain argmax of the undivided logits. gamma = 0 is exactly
    sparse softmax cross-entropy. Soft labels q [B, C] (MixUp/CutMix) give the
    cross-entropy against q: L = -sum_c q_c log softmax(z / a)_c. With `prior_tau` (module
    docstring) the softmax takes z_c / a_c + tau * log pi_c: temperatures and prior combine.

    gamma lives in a non-trainable `keras.Variable` (`loss.gamma`) so a callback can
    `assign` it during training (for example 0 for the first half of training).

    Args:
      class_counts: N_c, training images per class, [C].
      gamma: the exponent, >= 0.
      class_weights, weight_reduction, prior_tau, reduction, name: as for `ClassWeightedLoss`.

    Example:
      model.compile(optimizer="sgd", loss=CDTLoss([5000, 500, 50], gamma=0.3, prior_tau=1.0),
                    metrics=["sparse_categorical_accuracy"])
    """

    def __init__(self, class_counts: Sequence[int], gamma: float = 0.0, name: str = "cdt_loss", **kwargs):
        super().__init__(class_counts, name=name, **kwargs)
        class_stats.class_temperatures(class_counts, gamma)  # Validates gamma.
        counts = counts_tensor(self.class_counts)
        self._size_ratios = ops.max(counts) / counts
        self.gamma = keras.Variable(float(gamma), dtype="float32", trainable=False, name="gamma")

    def temperatures(self):
        """a_c = (N_max / N_c)^gamma for the current gamma, float32 [C]."""
        return ops.power(self._size_ratios, self.gamma)

    def transform_logits(self, logits):
        # z / a here, so that a prior_tau adds tau * log pi to the divided logits (z_c / a_c + tau log pi_c).
        return logits / self.temperatures()

    def unweighted(self, labels, logits):
        return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)

    def unweighted_soft(self, targets, logits):
        return soft_cross_entropy(targets, logits)

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
        self._log_counts = ops.log(counts_tensor(self.class_counts))
        self.gamma = keras.Variable(float(gamma), dtype="float32", trainable=False, name="gamma")

    def class_weight_vector(self):
        powers = ops.exp(-self.gamma * self._log_counts)
        normalised = powers * (len(self.class_counts) / ops.sum(powers))
        return normalised * ops.convert_to_tensor(self.class_weights)

    def unweighted(self, labels, logits):
        return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)

    def unweighted_soft(self, targets, logits):
        return soft_cross_entropy(targets, logits)

    def get_config(self):
        return {**super().get_config(), "gamma": float(ops.convert_to_numpy(self.gamma))}


@keras.saving.register_keras_serializable(package="cdt_tf")
class FocalLoss(ClassWeightedLoss):
    """Softmax focal loss (Lin et al. 2017): L = w_y * (1 - p_y)^focal_gamma * -log p_y, p = softmax(z).

    focal_gamma = 0 is softmax cross-entropy. Soft labels q: L = w_q * sum_c q_c (1 - p_c)^focal_gamma
    * -log p_c, the mixed loss lam L(a) + (1 - lam) L(b) of a mixup pair.
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

    def unweighted_soft(self, targets, logits):
        if self.focal_gamma == 0:
            return soft_cross_entropy(targets, logits)
        log_probs = ops.log_softmax(logits, axis=-1)
        focus = ops.power(ops.maximum(1.0 - ops.exp(log_probs), 0.0), self.focal_gamma)
        return -ops.sum(targets * focus * log_probs, axis=-1)

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
    With `prior_tau` the softmax takes s (z - m_y e_y) + tau * log pi: the prior after the scale.

    Soft labels q [B, C] (MixUp/CutMix) give the mixed loss of the mixup reference codes,
    lam L(z, a) + (1 - lam) L(z, b), generalised: L = w_q * sum_c q_c l(c), where l(c) =
    -log softmax(s * (z - m_c e_c))[c] is the loss with target c and its own margin m_c, so every
    target of a mixed pair gets its full margin and weighs in by q_c (rather than one logit vector
    z - q * m shared by all targets). Computed without a [B, C, C] tensor:
    l(c) = softplus(logsumexp_{k != c}(s z_k) - s (z_c - m_c)).
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

    def transform_logits(self, logits):
        # s z here, so that a prior_tau adds tau * log pi to the softmax's input, not to the cosine.
        return self.scale * logits

    def unweighted(self, labels, logits):
        num_classes = len(self.class_counts)
        margins = ops.one_hot(labels, num_classes) * ops.take(self._margins, labels)[:, None]
        return ops.sparse_categorical_crossentropy(labels, logits - self.scale * margins, from_logits=True)

    def unweighted_soft(self, targets, logits):
        # l(c) = softplus(r_c - s (z_c - m_c)), r_c = logsumexp_{k != c} s z_k: the loss with target c.
        # r_c is shifted by the largest other logit so that nothing large is ever subtracted (one-hot
        # labels then give the sparse loss to float32 precision): the top class's by the second largest.
        # logits are the training logits, s z (+ tau log pi with a prior_tau).
        scaled = logits
        is_top = ops.one_hot(ops.argmax(scaled, axis=-1), len(self.class_counts)) > 0
        first = ops.max(scaled, axis=-1, keepdims=True)
        shifted = ops.exp(scaled - first)  # The top class's term is 1: the others' sums stay >= 1.
        others = ops.sum(shifted, axis=-1, keepdims=True) - shifted
        rest_of_non_top = first + ops.log(ops.where(is_top, 1.0, others))
        second = ops.max(ops.where(is_top, _VERY_NEGATIVE, scaled), axis=-1, keepdims=True)
        without_top = ops.exp(ops.where(is_top, _VERY_NEGATIVE, scaled - second))
        rest_of_top = second + ops.log(ops.sum(without_top, axis=-1, keepdims=True))
        rest = ops.where(is_top, rest_of_top, rest_of_non_top)
        per_target = ops.softplus(rest - (scaled - self.scale * self._margins))  # l(c) [B, C].
        return ops.sum(targets * per_target, axis=-1)

    def get_config(self):
        return {**super().get_config(), "max_margin": self.max_margin, "scale": self.scale}


@keras.saving.register_keras_serializable(package="cdt_tf")
class LogitAdjustedLoss(ClassWeightedLoss):
    """Logit-adjusted loss (Menon et al., ICLR 2021): L = w_y * -log softmax(z + tau * log pi)[y].

    pi_c = N_c / sum_k N_k is the training label prior. Predict with the plain argmax of z.
    Soft labels q: the cross-entropy against q, -sum_c q_c log softmax(z + tau * log pi)_c.
    A `prior_tau` (every loss's prior adjustment) adds to tau: (tau + prior_tau) * log pi.
    """

    def __init__(
        self, class_counts: Sequence[int], tau: float = 1.0, name: str = "logit_adjusted_loss", **kwargs
    ):
        super().__init__(class_counts, name=name, **kwargs)
        self.tau = float(tau)
        self._adjustment = ops.convert_to_tensor(
            (self.tau * class_stats.log_prior(self.class_counts)).astype("float32")
        )

    def transform_logits(self, logits):
        return logits + self._adjustment

    def unweighted(self, labels, logits):
        return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)

    def unweighted_soft(self, targets, logits):
        return soft_cross_entropy(targets, logits)

    def get_config(self):
        return {**super().get_config(), "tau": self.tau}
