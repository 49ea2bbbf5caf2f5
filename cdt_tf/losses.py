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

Labels. Every loss takes either sparse labels y (int [B], or [B, 1]) or soft labels q (float
[B, C] probability vectors, e.g. from MixUp/CutMix: q = lam e_a + (1 - lam) e_b). A soft label
gives the mixed loss of the mixup reference codes (lam L(a) + (1 - lam) L(b)), generalised to any q:

  l_n = sum_c q_nc l_n(c),   l_n(c) = the loss of the example with the hard label c,

which for softmax cross-entropy (plain, CDT, logit-adjusted) is the cross-entropy against q,
-sum_c q_c log softmax(.)_c; for focal losses sum_c q_c (1 - p_c)^gamma (-log p_c); for LDAM each
target c gets its own margin m_c (the margin is applied to both mixed targets, each term weighted
by q_c; see `LDAMLoss`). A one-hot q gives the sparse label's loss. The class weight of a soft
label is w_n = sum_c q_nc w_c (the label-weighted mean of the class weights), so a one-hot q gets
w_y, and "weights" reduces by sum_n w_n l_n / sum_n w_n as before. (The mixed loss of PyTorch's
weighted cross-entropy would instead reduce each target separately; w_n keeps one weight per
example, so sample weights and both reductions apply unchanged.) Which kind a batch holds is read
from the labels' static shape: rank 2 with C > 1 columns is soft.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from cdt_tf import catalog, class_stats


def is_soft_labels(y_true, num_classes: int) -> bool:
    """Whether y_true holds soft labels [B, C] (probability vectors) rather than sparse ones [B] / [B, 1].

    Read from the static shape, so one traced step handles one kind: rank 2 with num_classes > 1
    columns is soft.
    """
    shape = tuple(y_true.shape)
    return len(shape) == 2 and num_classes > 1 and shape[-1] == num_classes


def soft_cross_entropy(targets, logits):
    """-sum_c q_c log softmax(z)_c per example: float32 [B] for targets q [B, C] and logits z [B, C]."""
    return ops.categorical_crossentropy(ops.cast(targets, "float32"), logits, from_logits=True)


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


WEIGHT_REDUCTIONS = catalog.WEIGHT_REDUCTIONS
# Stands for -inf where a logit is left out of a sum (exp gives 0 and gradients stay finite).
_VERY_NEGATIVE = -1e30


def _labels(y_true):
    return ops.cast(ops.reshape(y_true, (-1,)), "int32")


def _counts_tensor(class_counts):
    return ops.convert_to_tensor([float(c) for c in class_counts], dtype="float32")


class ClassWeightedLoss(keras.losses.Loss):
    """Base of the losses here: per-example loss l_n times w_{y_n}, reduced as `weight_reduction` says.

    Subclasses implement `unweighted(labels, logits) -> [B]` for sparse labels and
    `unweighted_soft(targets, logits) -> [B]` for soft labels [B, C] (module docstring), and may
    override `class_weight_vector()`.
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
        """Per-example loss [B] of sparse labels int32 [B] and float32 logits [B, C]."""
        raise NotImplementedError

    def unweighted_soft(self, targets, logits):
        """Per-example loss [B] of soft labels float32 [B, C]: sum_c q_c l(c) (module docstring)."""
        raise NotImplementedError

    def class_weight_vector(self):
        """The weights w_c [C] in force now (float32)."""
        return ops.convert_to_tensor(self.class_weights)

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        if is_soft_labels(y_true, len(self.class_counts)):
            targets = ops.cast(y_true, "float32")
            losses = self.unweighted_soft(targets, logits)
            weights = ops.sum(targets * self.class_weight_vector(), axis=-1)  # w_n = sum_c q_nc w_c.
        else:
            labels = _labels(y_true)
            losses = self.unweighted(labels, logits)
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
    cross-entropy against q: L = -sum_c q_c log softmax(z / a)_c.

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

    def unweighted_soft(self, targets, logits):
        return soft_cross_entropy(targets, logits / self.temperatures())

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

    def unweighted(self, labels, logits):
        num_classes = len(self.class_counts)
        margins = ops.one_hot(labels, num_classes) * ops.take(self._margins, labels)[:, None]
        return ops.sparse_categorical_crossentropy(labels, self.scale * (logits - margins), from_logits=True)

    def unweighted_soft(self, targets, logits):
        # l(c) = softplus(r_c - s (z_c - m_c)), r_c = logsumexp_{k != c} s z_k: the loss with target c.
        # r_c is shifted by the largest other logit so that nothing large is ever subtracted (one-hot
        # labels then give the sparse loss to float32 precision): the top class's by the second largest.
        scaled = self.scale * logits
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

    def unweighted_soft(self, targets, logits):
        return soft_cross_entropy(targets, logits + self._adjustment)

    def get_config(self):
        return {**super().get_config(), "tau": self.tau}
