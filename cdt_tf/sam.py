"""Sharpness-aware minimisation (SAM) and its class-aware form ImbSAM: --sam_rho and --sam_classes.

SAM (Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization", ICLR 2021)
minimises max_{||eps||_2 <= rho} L(w + eps). One step, with g = grad L(w) over every trainable weight:

  eps = rho g / ||g||_2         (the first-order solution of the inner max; ||.||_2 over all weights)
  g_SAM = grad L(w + eps)       (a second forward and backward pass at the perturbed weights)
  w <- optimizer(w, g_SAM)      (the run's SGD: momentum, and the coupled weight decay taken at w)

ImbSAM (Zhou et al., "ImbSAM: A Closer Look at Sharpness-Aware Minimization in Class-Imbalanced
Recognition", ICCV 2023; --sam_classes=tail) flattens the loss of the tail classes only. The batch loss
splits by the examples' classes, L = L_head + L_tail with L_part = sum_{n in part} l_n / B (the
reference code's split, so the parts add up to the batch mean), and

  eps = rho g_tail / ||g_tail||_2,   g_tail = grad L_tail(w)
  g = grad L_head(w) + grad L_tail(w + eps)

A batch without tail examples has g_tail = 0, so eps = 0 and the step is the plain one; a batch of tail
examples only takes the SAM step. Tail classes: fewer than --sam_tail_threshold training images.

Either costs two forward and backward passes per step, about twice the time of a plain step (ResNet-32,
batch 64, float32 on 2 busy CPU cores, 2026-12-07: 607 against 319 ms a step).

How it meets the rest of a run:
- Several replicas (MirroredStrategy, multi_worker): the first gradient is summed over the replicas
  before eps is computed, so eps is that of the global batch and every replica perturbs its copy of
  the weights alike: the step a single device takes on the same batch. (Foret et al.'s m-sharpness,
  one eps per device, is not done.) The optimizer all-reduces the second gradient as usual.
- Batch norm: both passes normalise with their batch's statistics; the moving mean and variance keep
  the first pass's update only (the second pass's is undone), as davda54/sam's `disable_running_stats`.
  ImbSAM's second pass runs the whole batch (its reference code runs the tail examples alone), so
  both passes normalise over the same examples and the traced step keeps static shapes.
- Mixed precision: eps comes from the loss-scaled gradients, whose normalised direction does not
  depend on the scale; a non-finite first gradient (a float16 overflow) gives eps = 0, and the
  LossScaleOptimizer then skips the step as usual.
- Soft labels (MixUp/CutMix): example n counts t_n l_n in L_tail and (1 - t_n) l_n in L_head, with
  t_n = sum_c q_nc [c is a tail class] (as the losses weight a soft label by sum_c q_nc w_c).
- The weights are restored from a copy, not by subtracting eps, so they come back bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from cdt_tf import class_stats, losses


def tail_share(labels, tail_classes) -> tf.Tensor:
    """t_n, each example's share in the tail classes: float32 [B].

    Args:
      labels: int [B] (or [B, 1]) class indices, or float [B, C] soft labels.
      tail_classes: float32 [C], 1 for a tail class, else 0.
    """
    tail_classes = tf.cast(tail_classes, tf.float32)
    if losses.is_soft_labels(labels, tail_classes.shape[0]):
        return tf.linalg.matvec(tf.cast(labels, tf.float32), tail_classes)
    return tf.gather(tail_classes, tf.reshape(tf.cast(labels, tf.int32), [-1]))


def split_loss(per_example, extra, share=None):
    """(the part SAM flattens, the part taken at w as it is, or None) of a batch loss.

    Args:
      per_example: float32 [B], each example's contribution to this replica's share of the loss
        (l_n / global batch size), so that sum(per_example) + extra is that share.
      extra: float32 scalar: regularisation, added to the part taken as it is (to the whole under SAM).
      share: float32 [B], `tail_share` (ImbSAM), or None (SAM: the whole loss is flattened).
    """
    if share is None:
        return tf.reduce_sum(per_example) + extra, None
    return tf.reduce_sum(per_example * share), tf.reduce_sum(per_example * (1.0 - share)) + extra


def sharpness_aware_gradients(
    forward: Callable,
    variables: Sequence,
    rho: float,
    frozen_variables: Sequence = (),
    scale_loss: Callable | None = None,
):
    """The gradients of one SAM (or ImbSAM) step; the weights are left as they were.

    Args:
      forward: runs the training-mode forward pass at the current weights and returns (sharp, plain,
        outputs): the loss to flatten (SAM: the batch loss; ImbSAM: its tail part), the loss taken at
        w as it is (SAM: None; ImbSAM: the head part), both float32 scalars as this replica
        contributes them (`split_loss`), and the model's outputs. Called twice.
      variables: the trainable variables: perturbed by eps for the second pass, then restored.
      rho: the radius of the perturbation, > 0.
      frozen_variables: variables the forward pass itself updates (batch norm's moving statistics):
        the second pass's update is undone.
      scale_loss: the optimizer's loss scaling (`optimizer.scale_loss`); None: no scaling.

    Returns:
      (gradients, one per variable (None where the loss does not reach it), of the scaled loss as
      `optimizer.apply` takes them; the first pass's loss sharp + plain, float32; its outputs).
    """
    scale_loss = scale_loss or (lambda loss: loss)
    with tf.GradientTape(persistent=True) as tape:
        sharp, plain, outputs = forward()
        scaled_sharp = scale_loss(sharp)
        scaled_plain = None if plain is None else scale_loss(plain)
    sharp_gradients = tape.gradient(scaled_sharp, variables)
    plain_gradients = None if plain is None else tape.gradient(scaled_plain, variables)
    del tape
    loss = sharp if plain is None else sharp + plain

    epsilons = perturbation(sharp_gradients, variables, rho)
    # Copies, read before the perturbation (the traced step orders the reads and writes of a
    # variable as written), so that the weights come back exactly.
    saved = [tf.identity(_value(v)) for v in variables]
    saved_state = [tf.identity(_value(v)) for v in frozen_variables]
    for variable, epsilon in zip(variables, epsilons, strict=True):
        variable.assign_add(tf.cast(epsilon, variable.dtype))
    with tf.GradientTape() as tape:
        perturbed_sharp, _, _ = forward()
        scaled = scale_loss(perturbed_sharp)
    gradients = tape.gradient(scaled, variables)
    for variable, value in zip([*variables, *frozen_variables], [*saved, *saved_state], strict=True):
        variable.assign(value)

    if plain_gradients is not None:
        gradients = [_add(g, p) for g, p in zip(gradients, plain_gradients, strict=True)]
    return gradients, loss, outputs


def perturbation(gradients, variables, rho: float) -> list[tf.Tensor]:
    """eps = rho g / ||g||_2 (float32, one per variable), g summed over the replicas; 0 where g is 0 or
    not finite (a float16 overflow) and for variables without a gradient."""
    gradients = [
        tf.zeros(v.shape, tf.float32) if g is None else tf.cast(g, tf.float32)
        for g, v in zip(gradients, variables, strict=True)
    ]
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
    norm = tf.linalg.global_norm(gradients)
    usable = tf.logical_and(norm > 0.0, tf.math.is_finite(norm))
    scale = tf.where(usable, rho / tf.where(usable, norm, 1.0), 0.0)
    return [g * scale for g in gradients]


def _value(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _add(a, b):
    if a is None:
        return b
    return a if b is None else a + tf.cast(b, a.dtype)


class SharpnessAwareModel(keras.Model):
    """A functional Keras model whose `fit` takes SAM (or ImbSAM) steps (module docstring).

    Build it over an existing functional model's graph with `wrap`; it shares that model's layers
    and weights, so `plain_model` gives the ordinary model back (for saving) without a copy.
    Compile as usual with a `keras.losses.Loss` whose `call` gives per-example losses reduced by the
    batch mean ("sum_over_batch_size", every loss of cdt_tf).

    Args:
      *args, **kwargs: a functional model's (inputs, outputs, name).
      rho: the perturbation radius, > 0.
      tail_classes: ImbSAM: float [C], 1 for a tail class, else 0; None: SAM over the whole loss.
    """

    def __init__(self, *args, rho: float = 0.05, tail_classes=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rho = float(rho)
        self.tail_classes = None if tail_classes is None else np.asarray(tail_classes, np.float32)

    @classmethod
    def wrap(cls, model: keras.Model, rho: float, tail_classes=None) -> SharpnessAwareModel:
        """`model`'s graph (its layers and weights) as a SharpnessAwareModel."""
        return cls(model.inputs, model.outputs, name=model.name, rho=rho, tail_classes=tail_classes)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if not isinstance(self.loss, keras.losses.Loss):
            raise ValueError(f"SharpnessAwareModel needs a keras.losses.Loss, got {self.loss!r}")
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        share = None if self.tail_classes is None else tail_share(y, self.tail_classes)

        def forward():
            y_pred = self(x, training=True)
            per_example = tf.cast(self.loss.call(y, y_pred), tf.float32)
            if sample_weight is not None:
                per_example = per_example * tf.cast(tf.reshape(sample_weight, [-1]), tf.float32)
            # As Keras' fit: the local batch mean, divided by the replicas (their gradients are summed).
            per_example = per_example / tf.cast(tf.shape(per_example)[0] * replicas, tf.float32)
            extra = tf.add_n([tf.cast(r, tf.float32) for r in self.losses]) if self.losses else 0.0
            return (*split_loss(per_example, extra / replicas, share), y_pred)

        gradients, loss, y_pred = sharpness_aware_gradients(
            forward,
            self.trainable_variables,
            self.rho,
            self.non_trainable_variables,
            self.optimizer.scale_loss,
        )
        self.optimizer.apply(gradients, self.trainable_variables)
        for metric in self.metrics:  # The loss at w, as a plain step logs it (the replica's mean).
            if metric.name == "loss":
                metric.update_state(loss * replicas, sample_weight=tf.shape(y_pred)[0])
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def plain_model(self) -> keras.Model:
        """The same graph, layers and weights as an ordinary functional model, compiled as this one
        and with its optimizer (state included): what model.keras saves, loadable without this class."""
        model = keras.Model(self.inputs, self.outputs, name=self.name)
        compiled = keras.saving.deserialize_keras_object(self.get_compile_config())
        model.compile(**{**compiled, "optimizer": self.optimizer})
        return model


def tail_classes(class_counts: Sequence[int], threshold: int) -> np.ndarray:
    """float32 [C]: 1 for the classes with fewer than `threshold` training images, else 0."""
    return class_stats.tail_mask(class_counts, threshold).astype(np.float32)
