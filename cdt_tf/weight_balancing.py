r"""Weight balancing's second stage (--second_stage=wb): the classifier fine-tuned with a class-balanced
loss, strong weight decay and a MaxNorm constraint on frozen features.

Alshammari et al., "Long-Tailed Recognition via Weight Balancing" (CVPR 2022). Their code
(github.com/ShadeAlsha/LTR-weight-balancing, demo2_second-stage-training.py with utils/regularizers.py,
utils/class_balanced_loss.py and utils/trainval.py; CIFAR-100-LT, rho = 100) starts from the
first-stage network (trained with cross-entropy and tuned weight decay) and trains only the last
layer's weight and bias (every other parameter has requires_grad=False):

- loss: the class-balanced loss of Cui et al. in its "softmax" form, a binary cross-entropy between
  the softmax probabilities p = softmax(z) and the one-hot label, weighted by the label's class weight
  w_y = C (1 - beta) / (1 - beta^N_y) / sum_k (...) (beta = 0.9999; `class_stats.effective_number_weights`)
  and averaged over the B x C entries (torch's clamp of log at -100 kept):

      L = 1 / (B C) sum_b sum_c w_{y_b} * -[1{c = y_b} log p_bc + (1 - 1{c = y_b}) log(1 - p_bc)]

- SGD lr 0.01, momentum 0.9, weight decay 0.1 (torch's, coupled), 10 epochs, batch 64, instance
  sampling (shuffled), cosine annealing to 0;
- MaxNorm by projected gradient descent (MaxNorm_via_PGD, thresh = 0.1): the threshold is set once
  from the first-stage classifier's per-class norms, t = min_c ||w_c|| + thresh (max_c ||w_c|| -
  min_c ||w_c||), and every w_c with ||w_c|| > t is scaled back to norm t; the bias is not
  constrained.

What this module differs on (said in the record's `method`): the features are the frozen network's,
extracted once without augmentation in inference mode, as cRT's here (their loop puts the whole
network in train mode on pad-crop-flipped batches, so its batch-norm statistics drift on
instance-sampled batches although no weight but the classifier's is trained); the projection
follows every step (Keras' kernel constraint) where their code projects once per epoch; the
learning rate decays per step, not per epoch (their scheduler steps before the epoch's first
update, so their last epoch runs at lr 0); the last epoch's classifier is kept (they keep the
epoch of best per-class test accuracy, a selection on the test set).
"""

from __future__ import annotations

import numpy as np

from cdt_tf import class_stats, linear_head
from cdt_tf.errors import UserError

# Their recipe (demo2_second-stage-training.py); --wb_weight_decay and --wb_threshold are flags.
EPOCHS = 10
BATCH_SIZE = 64
LEARNING_RATE = 0.01
CB_BETA = 0.9999


def norm_threshold(kernel: np.ndarray, fraction: float) -> float:
    """MaxNorm's radius t = min_c ||w_c|| + fraction (max_c ||w_c|| - min_c ||w_c||) of a kernel [D, C].

    fraction in [0, 1]: 0 caps every class at the smallest norm, 1 at the largest (no change at start).
    """
    norms = np.linalg.norm(np.asarray(kernel, np.float64), axis=0)
    return float(norms.min() + fraction * (norms.max() - norms.min()))


def class_balanced_bce(class_weights):
    """The class-balanced softmax binary cross-entropy above as a Keras loss of (labels [B], logits [B, C]).

    Returns per-example losses [B] (the mean over classes); Keras' mean over the batch makes the
    mean over the B x C entries.
    """
    import keras

    weights = keras.ops.convert_to_tensor(np.asarray(class_weights, np.float32))

    def loss(labels, logits):
        labels = keras.ops.cast(keras.ops.reshape(labels, (-1,)), "int32")
        one_hot = keras.ops.one_hot(labels, weights.shape[0])
        logits = keras.ops.cast(logits, "float32")
        # torch.nn.functional.binary_cross_entropy clamps each log at -100 (a p of 0, or of 1 in
        # float32); written so that no gradient is inf * 0: log p from log_softmax, log(1 - p) read
        # only where 1 - p > 0.
        log_p = keras.ops.maximum(keras.ops.log_softmax(logits, axis=-1), -100.0)
        rest = 1.0 - keras.ops.softmax(logits, axis=-1)
        log_q = keras.ops.where(rest > 0, keras.ops.log(keras.ops.maximum(rest, 1e-30)), -100.0)
        entries = -(one_hot * log_p + (1.0 - one_hot) * log_q)
        return keras.ops.take(weights, labels) * keras.ops.mean(entries, axis=-1)

    return loss


def train(
    features,
    class_counts,
    trained_classifier,
    weight_decay: float = 0.1,
    threshold: float = 0.1,
    epochs: int = EPOCHS,
    seed: int = 0,
):
    """Weight balancing's second stage on fixed features; returns (kernel [D, C], bias [C], record fields).

    Args:
      features: `features.Features` of the classifier data (unaugmented, frozen network).
      class_counts: N_c of that data [C] (the class-balanced weights').
      trained_classifier: ("linear" | "cosine", kernel [D, C], bias [C]) of the first stage: the start
        and the MaxNorm radius. A cosine classifier is refused (UserError).
      weight_decay: the second stage's coupled weight decay (theirs: 0.1).
      threshold: MaxNorm's fraction of the norm range (theirs: 0.1), `norm_threshold`.
      epochs: epochs over the classifier data (theirs: 10).
      seed: the shuffle's and Keras' seed.
    """
    kind, kernel, bias = trained_classifier
    if kind != "linear":
        raise UserError("the wb second stage fine-tunes a linear classifier; this run's is cosine")
    radius = norm_threshold(kernel, threshold)
    weights = class_stats.effective_number_weights(class_counts, CB_BETA)
    new_kernel, new_bias = linear_head.train_linear_classifier(
        features.features,
        features.labels,
        len(class_counts),
        sampler="instance",
        epochs=epochs,
        batch_size=BATCH_SIZE,
        learning_rate=LEARNING_RATE,
        weight_decay=weight_decay,
        seed=seed,
        initial=(kernel, bias),
        loss=class_balanced_bce(weights),
        max_norm=radius,
    )
    fields = {
        "sampler": "instance",
        "epochs": epochs,
        "options": {"weight_decay": weight_decay, "threshold": threshold},
        "max_norm": round(radius, 6),
        "class_norms": [round(float(n), 6) for n in np.linalg.norm(new_kernel, axis=0)],
        "method": (
            "weight balancing's stage 2 (Alshammari et al. 2022): the trained linear classifier fine-tuned "
            f"on frozen, unaugmented features; class-balanced softmax BCE (beta {CB_BETA}), SGD 0.9, "
            f"cosine-decayed LR {LEARNING_RATE}, batch {BATCH_SIZE}, weight decay {weight_decay:g}, "
            f"MaxNorm after each step at {radius:.4g} (min + {threshold:g} (max - min) of the trained norms)"
        ),
    }
    return new_kernel, new_bias, fields
