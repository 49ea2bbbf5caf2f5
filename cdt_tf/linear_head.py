"""A linear classifier trained on fixed features: the head of cRT and of weight balancing's second stage.

The network is frozen and its features f(x) [N, D] are extracted once (`features.extract`); the head
logits = f(x) @ kernel + bias is trained on them with SGD (momentum 0.9, coupled weight decay as
torch.optim.SGD, cosine-decayed learning rate per step), seconds instead of epochs through the network.
"""

from __future__ import annotations

import numpy as np

from cdt_tf import class_stats
from cdt_tf.errors import UserError


def train_linear_classifier(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    sampler: str = "class_balanced",
    epochs: int = 30,
    batch_size: int = 512,
    learning_rate: float = 0.1,
    weight_decay: float = 2e-4,
    seed: int = 0,
    smoothing=None,
    initial=None,
    loss=None,
    max_norm: float = 0.0,
):
    """A Dense(num_classes) on fixed features; returns (kernel [D, C], bias [C]).

    sampler: "class_balanced" (each class equally likely per example; cRT) or "instance".
    smoothing: per-class label smoothing eps_c [C] (label-aware smoothing), or None for one-hot
    targets; the loss is then the cross-entropy against `class_stats.smoothed_targets`.
    initial: (kernel [D, C], bias [C]) to start from (fine-tuning a trained classifier), else a
    fresh Glorot-uniform kernel and zero bias.
    loss: a Keras loss of (int labels [B], logits [B, C]) in place of the cross-entropy (not with
    smoothing).
    max_norm: > 0 projects every class vector w_c back onto ||w_c||_2 <= max_norm after each step
    (`max_norm.constrain_classifier`); 0: unconstrained.
    An epoch is len(labels) // batch_size steps (at least 1).
    """
    import keras
    import tensorflow as tf

    from cdt_tf import input_pipeline
    from cdt_tf.max_norm import constrain_classifier
    from cdt_tf.optimizers import CoupledDecaySGD

    keras.utils.set_random_seed(seed)
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int64)
    steps = max(1, len(labels) // batch_size)
    if sampler == "class_balanced":
        features_t, labels_t = tf.constant(features), tf.constant(labels)
        dataset = input_pipeline.class_balanced_indices(labels, seed).map(
            lambda i: (tf.gather(features_t, i), tf.gather(labels_t, i))
        )
    elif sampler == "instance":
        dataset = (
            tf.data.Dataset.from_tensor_slices((features, labels))
            .shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
            .repeat()
        )
    else:
        raise UserError(f"unknown --sampler {sampler!r}; use class_balanced or instance")
    dataset = dataset.batch(batch_size, drop_remainder=True)
    loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if smoothing is not None:
        targets = tf.constant(class_stats.smoothed_targets(smoothing), tf.float32)
        dataset = dataset.map(lambda x, y: (x, tf.gather(targets, y)))
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    inputs = keras.Input(shape=(features.shape[1],), name="features")
    layer = keras.layers.Dense(num_classes, name="classifier")
    head = keras.Model(inputs, layer(inputs))
    if initial is not None:
        layer.set_weights([np.asarray(w, np.float32) for w in initial])
    if max_norm > 0:
        constrain_classifier(head, max_norm)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps)
    head.compile(
        optimizer=CoupledDecaySGD(coupled_weight_decay=weight_decay, learning_rate=schedule, momentum=0.9),
        loss=loss,
    )
    head.fit(dataset, epochs=epochs, steps_per_epoch=steps, verbose=0, shuffle=False)
    return keras.ops.convert_to_numpy(layer.kernel), keras.ops.convert_to_numpy(layer.bias)


def trained_classifier(model) -> tuple[str, np.ndarray, np.ndarray | None]:
    """("linear" | "cosine", kernel [D, C], bias [C] or None) of a cdt_tf model's own classifier."""
    import keras

    from cdt_tf.features import classifier

    kind, kernel = classifier(model)
    if kind != "linear":
        return kind, kernel.astype(np.float32), None
    bias = model.get_layer("classifier").bias  # None for a Dense without bias: start from 0.
    bias = np.zeros(kernel.shape[1]) if bias is None else keras.ops.convert_to_numpy(bias)
    return kind, kernel.astype(np.float32), np.asarray(bias, np.float32)
