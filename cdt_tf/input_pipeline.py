"""Long-tailed subsets and the tf.data input pipelines.

Train: decoded uint8 images (held in memory) -> cache -> shuffle (per epoch) ->
augment -> batch -> prefetch; or, with the class-balanced sampler, an endless
stream of (class drawn uniformly, then an image of that class) -> augment -> batch.
Test: balanced, unaugmented, batched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from cdt_tf.errors import DataError


def select_subset(labels: np.ndarray, class_counts: Sequence[int], seed: int) -> np.ndarray:
    """Indices of a subset with class_counts[c] examples of class c, drawn without replacement.

    Each class is sampled with its own generator seeded by (seed, c), so the
    subset of one class does not depend on the others. Returns sorted int64 indices.
    """
    labels = np.asarray(labels)
    chosen = []
    for c, count in enumerate(class_counts):
        members = np.flatnonzero(labels == c)
        if count > len(members):
            raise DataError(
                f"class {c} has {len(members)} training images but the subset needs {count}; "
                "lower --max_per_class"
            )
        rng = np.random.default_rng([seed, c])
        chosen.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def subset_hash(ids: Sequence[str]) -> str:
    """SHA-256 of the chosen example ids, one per line in order: the subset's fingerprint."""
    digest = hashlib.sha256()
    for example_id in ids:
        digest.update(str(example_id).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1]."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return pixels.mean(0).tolist(), np.maximum(pixels.std(0), 1e-3).tolist()


def pad_crop_flip(image, seed, pad: int = 4):
    """Zero-pad by `pad`, random crop back to the input size, random horizontal flip.

    The reference CIFAR augmentation (pad 4, crop 32, flip). Stateless: the same
    seed gives the same result, eagerly or inside `Dataset.map`.

    Args:
      image: uint8 [H, W, C].
      seed: int [2], a stateless RNG seed.

    Returns:
      uint8 [H, W, C].
    """
    shape = tf.shape(image)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    cropped = tf.image.stateless_random_crop(padded, shape, seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(cropped, seed=flip_seed)


# Offsets the sampler's random stream from the augmentation's (both derive from --seed).
_SAMPLER_SEED_OFFSET = 7919


def class_balanced_indices(labels: np.ndarray, seed: int) -> tf.data.Dataset:
    """An endless stream of example indices in which every class is equally likely.

    Each element draws a class c uniformly, then one of that class's N_c examples uniformly
    (with replacement). Only three arrays of length C or N are held (indices sorted by class,
    per-class offsets and counts), so it scales to thousands of classes without per-class
    datasets. Deterministic for a seed (stateless draws from a seeded stream).

    Args:
      labels: int [N], every class in 0..max(labels) with at least one example.
      seed: the stream's seed.

    Returns:
      A Dataset of int64 scalars in [0, N).
    """
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels)
    if (counts == 0).any():
        raise DataError(
            f"the class-balanced sampler needs every class present; classes "
            f"{np.flatnonzero(counts == 0).tolist()} have no training image"
        )
    order = tf.constant(np.argsort(labels, kind="stable"), tf.int64)
    offsets = tf.constant(np.cumsum(counts) - counts, tf.int64)
    counts_t = tf.constant(counts, tf.int64)
    num_classes = tf.constant(len(counts), tf.int64)

    def draw(pair_seed):
        class_seed, member_seed = tf.unstack(tf.random.experimental.stateless_split(pair_seed, 2))
        c = tf.random.stateless_uniform([], class_seed, minval=0, maxval=num_classes, dtype=tf.int64)
        j = tf.random.stateless_uniform([], member_seed, minval=0, maxval=counts_t[c], dtype=tf.int64)
        return order[offsets[c] + j]

    seeds = tf.data.Dataset.random(seed=seed + _SAMPLER_SEED_OFFSET, rerandomize_each_iteration=True)
    return seeds.batch(2).map(draw, num_parallel_calls=tf.data.AUTOTUNE)


def build_train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    augmentation: str,
    seed: int,
    repeat: bool = False,
    sampler: str = "instance",
) -> tf.data.Dataset:
    """The training pipeline. Yields (uint8 [B, H, W, 3], int64 [B]); the last partial batch is dropped.

    Dropping it keeps every step's shape static (one trace, equal replicas under
    tf.distribute) and loses < batch_size random images per epoch.

    sampler: "instance" shuffles the examples each epoch (repeating only if `repeat`);
    "class_balanced" is endless (`class_balanced_indices`): give `fit` steps_per_epoch.
    """
    if augmentation not in ("crop_flip", "none"):
        raise ValueError(f"unknown augmentation {augmentation!r}")
    if sampler not in ("instance", "class_balanced"):
        raise ValueError(f"unknown sampler {sampler!r}")
    if len(labels) < batch_size:
        raise DataError(
            f"the training subset has {len(labels)} images, fewer than one batch of {batch_size}; "
            "lower --batch_size"
        )
    pad = max(1, images.shape[1] // 8)
    if sampler == "class_balanced":
        images_t, labels_t = tf.constant(images), tf.constant(np.asarray(labels, np.int64))
        dataset = class_balanced_indices(labels, seed).map(
            lambda i: (tf.gather(images_t, i), tf.gather(labels_t, i)), num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        # Cache the decoded, unaugmented images so augmentation is fresh each epoch.
        dataset = dataset.cache().shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            dataset = dataset.repeat()
    if augmentation == "crop_flip":
        # One stateless seed per example, from a seeded stream: augmentation is
        # reproducible even with parallel map calls.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda example, s: (pad_crop_flip(example[0], s, pad), example[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def build_eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """The test pipeline: unaugmented, in order, every example kept."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    return dataset.batch(batch_size).cache().prefetch(tf.data.AUTOTUNE)
