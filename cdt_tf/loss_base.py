"""The base of every cdt_tf loss: class weights, sparse or soft labels, and the prior adjustment.

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

Prior adjustment. Every loss takes `prior_tau` (tau >= 0, default 0: off), the loss-side logit
adjustment of Menon et al. (ICLR 2021, "Long-tail learning via logit adjustment"): the logits the
softmax of training sees get tau * log pi_c added, pi_c = N_c / sum_k N_k the training prior,

  v_c = t(z)_c + tau * log pi_c,   t(z)_c = z_c / a_c (CDT), s z_c (LDAM's scale s),
                                   z_c + tau_la log pi_c (la), z_c (the others),

after the loss's own transform t, so that CDT's temperatures and the prior combine:
L = -log softmax(z / a + tau log pi)[y]. Each loss then takes v where it took t(z): LDAM subtracts
its margin s m_y from v_y, focal uses p = softmax(v), soft labels -sum_c q_c log softmax(v)_c. With
tau = 1 the cross-entropy is Balanced Softmax (Ren et al., NeurIPS 2020),
-log(pi_y e^{z_y} / sum_c pi_c e^{z_c}). It is added in `ClassWeightedLoss.call`, the one place
every loss passes through; prediction stays the plain argmax of the undivided, unadjusted z.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
from keras import ops

from cdt_tf import catalog, class_stats

WEIGHT_REDUCTIONS = catalog.WEIGHT_REDUCTIONS


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


def labels_vector(y_true):
    """Sparse labels int [B] or [B, 1] as int32 [B]."""
    return ops.cast(ops.reshape(y_true, (-1,)), "int32")


def counts_tensor(class_counts):
    """N_c as float32 [C]."""
    return ops.convert_to_tensor([float(c) for c in class_counts], dtype="float32")


class ClassWeightedLoss(keras.losses.Loss):
    """Base of the losses here: per-example loss l_n times w_{y_n}, reduced as `weight_reduction` says.

    Subclasses implement `unweighted(labels, logits) -> [B]` for sparse labels and
    `unweighted_soft(targets, logits) -> [B]` for soft labels [B, C] (module docstring), and may
    override `class_weight_vector()` and `transform_logits(z)` (CDT's temperatures, LDAM's scale).
    Both `unweighted*` take the training logits v = transform_logits(z) + prior_tau * log pi
    (module docstring, "Prior adjustment"), never z itself.

    Args:
      class_counts: N_c, training images per class, [C].
      class_weights: w_c [C], >= 0 (None: all ones); a non-trainable variable a callback may assign.
      weight_reduction: "weights" or "batch_size" (module docstring).
      prior_tau: tau >= 0 of the prior adjustment tau * log(N_c / N) added to the training logits.
      reduction, name: as for `keras.losses.Loss`.
    """

    def __init__(
        self,
        class_counts: Sequence[int],
        class_weights: Sequence[float] | None = None,
        weight_reduction: str = "weights",
        prior_tau: float = 0.0,
        reduction: str = "sum_over_batch_size",
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, reduction=reduction, **kwargs)
        class_stats.class_temperatures(class_counts, 0.0)  # Validates the counts.
        if weight_reduction not in WEIGHT_REDUCTIONS:
            raise ValueError(f"weight_reduction must be one of {WEIGHT_REDUCTIONS}, got {weight_reduction!r}")
        if not (math.isfinite(prior_tau) and prior_tau >= 0):
            raise ValueError(f"prior_tau must be a finite number >= 0, got {prior_tau}")
        self.class_counts = [int(c) for c in class_counts]
        self.weight_reduction = weight_reduction
        self.prior_tau = float(prior_tau)
        # A constant: the counts are fixed for a run (float32 [C]).
        self._prior_adjustment = ops.convert_to_tensor(
            (self.prior_tau * class_stats.log_prior(self.class_counts)).astype("float32")
        )
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

    def transform_logits(self, logits):
        """t(z) [B, C], the loss's own transform of the logits before the prior (identity here)."""
        return logits

    def training_logits(self, logits):
        """v = t(z) + prior_tau * log pi [B, C]: what the per-label loss takes (module docstring)."""
        transformed = self.transform_logits(ops.cast(logits, "float32"))
        if self.prior_tau == 0:  # Off: the graph stays as it was before the prior adjustment.
            return transformed
        return transformed + self._prior_adjustment

    def call(self, y_true, y_pred):
        logits = self.training_logits(y_pred)
        if is_soft_labels(y_true, len(self.class_counts)):
            targets = ops.cast(y_true, "float32")
            losses = self.unweighted_soft(targets, logits)
            weights = ops.sum(targets * self.class_weight_vector(), axis=-1)  # w_n = sum_c q_nc w_c.
        else:
            labels = labels_vector(y_true)
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
            "prior_tau": self.prior_tau,
        }
