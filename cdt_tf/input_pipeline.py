"""Long-tailed subsets and the tf.data input pipelines.

Train: decoded uint8 images (held in memory) -> cache -> shuffle (per epoch) ->
augment -> batch -> prefetch; or, with the class-balanced sampler, an endless
stream of (class drawn uniformly, then an image of that class) -> augment -> batch.
Test: balanced, unaugmented, batched.

Images read from files (iNaturalist): shuffled file names -> parallel read, decode,
random-resized crop + flip -> batch -> prefetch; test: resize + centre crop, batched.
A training image that fails to decode is dropped with a logged warning (see `_decode_and_batch`);
evaluation keeps every image or fails.

Views. Every training pipeline takes `views` (default 1): with V > 1 each drawn example is repeated V
times before augmentation, so that each copy is augmented with its own seed, and a batch holds the V
views of each of batch_size examples next to each other (V * batch_size images, labels repeated):
the input of a contrastive branch (`contrastive`), to Keras an ordinary batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from cdt_tf import class_stats
from cdt_tf.errors import DataError


def select_subset(labels: np.ndarray, class_counts: Sequence[int], seed: int) -> np.ndarray:
    """Indices of a subset with class_counts[c] examples of class c, drawn without replacement.

    `class_stats.sample_per_class` with the training subset's stream: each class is sampled with
    its own generator seeded by (seed, c), so the subset of one class does not depend on the
    others. Returns sorted int64 indices.
    """
    labels = np.asarray(labels)
    for c, count in enumerate(class_counts):
        available = int((labels == c).sum())
        if count > available:
            raise DataError(
                f"class {c} has {available} training images but the subset needs {count}; "
                "lower --max_per_class"
            )
    return class_stats.sample_per_class(labels, class_counts, seed)


# The subset's fingerprint lives with the other pure facts (no TensorFlow); its name here is kept.
subset_hash = class_stats.subset_hash


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


def repeat_each(dataset: tf.data.Dataset, views: int) -> tf.data.Dataset:
    """Each element `views` times in a row (views >= 1; 1: the dataset itself)."""
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    if views == 1:
        return dataset
    return dataset.flat_map(lambda *element: tf.data.Dataset.from_tensors(element).repeat(views))


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
    views: int = 1,
) -> tf.data.Dataset:
    """The training pipeline. Yields (uint8 [B, H, W, 3], int64 [B]); the last partial batch is dropped.

    Dropping it keeps every step's shape static (one trace, equal replicas under
    tf.distribute) and loses < batch_size random images per epoch.

    sampler: "instance" shuffles the examples each epoch (repeating only if `repeat`);
    "class_balanced" is endless (`class_balanced_indices`): give `fit` steps_per_epoch.
    views: V augmented views of each example (module docstring): batches of V * B images.
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
    dataset = repeat_each(dataset, views)
    if augmentation == "crop_flip":
        # One stateless seed per example, from a seeded stream: augmentation is
        # reproducible even with parallel map calls.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda example, s: (pad_crop_flip(example[0], s, pad), example[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.batch(batch_size * views, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def build_eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """The test pipeline: unaugmented, in order, every example kept."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    return dataset.batch(batch_size).cache().prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- images read from files
# For datasets too large to hold decoded (iNaturalist 2018: 437,513 images of ~800 px): the
# pipelines read and decode each image in parallel map calls, every epoch, and emit uint8
# [B, S, S, 3] like the in-memory pipelines (the models normalise with the dataset's mean/std).

# The Inception / ImageNet random-resized crop: area in [8 %, 100 %] of the image, aspect
# ratio (width / height) in [3/4, 4/3], 10 attempts, else the whole image.
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
# Evaluation resizes the shorter side to S * 256 / 224 (256 for a 224 crop), then centre-crops S.
EVAL_RESIZE_RATIO = 256 / 224
# Shuffle buffer of streamed records (TFDS), which have no random access: images, not file names.
RECORD_SHUFFLE_BUFFER = 10_000


def sample_crop_window(
    image_shape, seed, area_range=CROP_AREA_RANGE, aspect_ratio_range=CROP_ASPECT_RATIO_RANGE
):
    """A random-resized-crop window: (offset [y, x], size [h, w]), int32, inside an image of image_shape.

    Stateless (`tf.image.stateless_sample_distorted_bounding_box` with the whole image as the
    box and no coverage constraint): the same seed and shape give the same window.

    Args:
      image_shape: int [3], (height, width, channels).
      seed: int [2], a stateless RNG seed.
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.cast(image_shape, tf.int32),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return begin[:2], size[:2]


def _decode_window(encoded, window_fn):
    """Decodes the window `window_fn(shape) -> (offset, size)` of an encoded image: uint8 [h, w, 3].

    A JPEG decodes only the window (most of iNaturalist's decoding time is spent on pixels a
    crop throws away); other formats (PNG, GIF, BMP) decode whole, then crop. Greyscale and
    RGBA images become RGB.
    """

    def jpeg():
        offset, size = window_fn(tf.image.extract_jpeg_shape(encoded))
        return tf.image.decode_and_crop_jpeg(encoded, tf.concat([offset, size], 0), channels=3)

    def other():
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        offset, size = window_fn(tf.shape(image))
        return tf.slice(image, tf.concat([offset, [0]], 0), tf.concat([size, [3]], 0))

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def _to_uint8(image, image_size: int):
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def random_resized_crop_flip(encoded, seed, image_size: int = 224):
    """Training augmentation of an encoded image: random-resized crop to image_size, random flip.

    The window comes from `sample_crop_window`; it is resized (bilinear, antialiased) to
    [image_size, image_size] and flipped horizontally with probability 1/2. Stateless: the
    same seed gives the same result, eagerly or inside `Dataset.map`.

    Args:
      encoded: string [], JPEG/PNG/GIF/BMP file contents.
      seed: int [2], a stateless RNG seed.

    Returns:
      uint8 [image_size, image_size, 3].
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    crop = _decode_window(encoded, lambda shape: sample_crop_window(shape, crop_seed))
    resized = tf.image.resize(crop, [image_size, image_size], method="bilinear", antialias=True)
    return tf.image.stateless_random_flip_left_right(_to_uint8(resized, image_size), seed=flip_seed)


def resize_center_crop(encoded, image_size: int = 224, resize_size: int = 0):
    """Evaluation preprocessing: resize the shorter side to resize_size, crop the central image_size square.

    Args:
      encoded: string [], JPEG/PNG/GIF/BMP file contents.
      image_size: side of the output.
      resize_size: the shorter side after resizing (0: round(image_size * 256 / 224), 256 for 224).

    Returns:
      uint8 [image_size, image_size, 3].
    """
    resize_size = resize_size or round(image_size * EVAL_RESIZE_RATIO)
    if resize_size < image_size:
        raise ValueError(f"resize_size {resize_size} is smaller than the crop {image_size}")
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    new_shape = tf.cast(tf.round(shape * (resize_size / tf.reduce_min(shape))), tf.int32)
    new_shape = tf.maximum(new_shape, resize_size)  # Rounding never leaves a side short of the crop.
    resized = tf.image.resize(image, new_shape, method="bilinear", antialias=True)
    offset = (new_shape - image_size) // 2
    crop = tf.slice(resized, tf.concat([offset, [0]], 0), [image_size, image_size, 3])
    return _to_uint8(crop, image_size)


def _decode_and_batch(
    examples, read, batch_size: int, seed: int, image_size: int, augmentation: str, views: int = 1
):
    """(path or encoded image, label) -> decoded, augmented, batched and prefetched (uint8, int64).

    A backstop for training: an example whose read or decode fails is dropped
    (`Dataset.ignore_errors`; tf.data logs each drop as a warning with the error, not the file)
    instead of stopping `fit` with a traceback. `datasets.load_source` checks beforehand that every
    file exists and starts like an image, so what is left is rare: a file that starts like an image
    but is truncated or corrupt further in (or a file deleted while training). Dropping costs no
    throughput (measured: the same images/s as without it); dropping decode errors only, in a
    one-element dataset per image so that read errors still stop training, cost ~20 % of the
    throughput, so it was not used. Evaluation pipelines drop nothing: their outputs are matched
    to labels by position. With views > 1 each view reads and decodes the file itself; a file
    that fails to decode fails in each view, so its views are dropped together.
    """
    examples = repeat_each(examples, views)
    if augmentation == "crop_flip":
        # One stateless seed per example from a seeded stream, as in build_train_dataset.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((examples, seeds)).map(
            lambda example, s: (random_resized_crop_flip(read(example[0]), s, image_size), example[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        dataset = examples.map(
            lambda x, label: (resize_center_crop(read(x), image_size), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    dataset = dataset.ignore_errors(log_warning=True)
    return dataset.batch(batch_size * views, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _check_train_arguments(augmentation: str, sampler: str) -> None:
    if augmentation not in ("crop_flip", "none"):
        raise ValueError(f"unknown augmentation {augmentation!r}")
    if sampler not in ("instance", "class_balanced"):
        raise ValueError(f"unknown sampler {sampler!r}")


def build_file_train_dataset(
    paths: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    image_size: int = 224,
    augmentation: str = "crop_flip",
    sampler: str = "instance",
    repeat: bool = False,
    shuffle_buffer: int = 0,
    views: int = 1,
) -> tf.data.Dataset:
    """The training pipeline of images read from files. Yields (uint8 [B, S, S, 3], int64 [B]).

    File names are shuffled (not decoded images: 437,513 paths take tens of MB, so the default
    buffer, all of them, is a full permutation each epoch); files are then read, decoded and
    augmented in parallel map calls, batched (the last partial batch dropped, as in
    build_train_dataset) and prefetched. Deterministic for a seed. A file that fails to decode is
    dropped with a logged warning (`_decode_and_batch`).

    Args:
      paths: str [N], image files (JPEG, PNG, GIF, BMP).
      labels: int [N].
      augmentation: "crop_flip": `random_resized_crop_flip`; "none": `resize_center_crop`.
      sampler: "instance" shuffles each epoch (repeating only if `repeat`); "class_balanced" is
        the endless stream of `class_balanced_indices`: give `fit` steps_per_epoch.
      shuffle_buffer: file names in the shuffle buffer (0: all of them).
      views: V augmented views of each image (module docstring): batches of V * B images.
    """
    _check_train_arguments(augmentation, sampler)
    paths, labels = np.asarray(paths, str), np.asarray(labels, np.int64)
    if len(labels) < batch_size:
        raise DataError(
            f"the training subset has {len(labels)} images, fewer than one batch of {batch_size}; "
            "lower --batch_size"
        )
    if sampler == "class_balanced":
        paths_t, labels_t = tf.constant(paths), tf.constant(labels)
        examples = class_balanced_indices(labels, seed).map(
            lambda i: (tf.gather(paths_t, i), tf.gather(labels_t, i)), num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        examples = tf.data.Dataset.from_tensor_slices((paths, labels)).shuffle(
            shuffle_buffer or len(labels), seed=seed, reshuffle_each_iteration=True
        )
        if repeat:
            examples = examples.repeat()
    return _decode_and_batch(examples, tf.io.read_file, batch_size, seed, image_size, augmentation, views)


def build_file_eval_dataset(
    paths: np.ndarray, labels: np.ndarray, batch_size: int, image_size: int = 224
) -> tf.data.Dataset:
    """The evaluation pipeline of image files: `resize_center_crop`, in order, every example kept.

    Yields (uint8 [B, S, S, 3], int64 [B]); nothing is cached (the decoded iNat validation split
    at 224 would take 3.7 GB). A file that fails to decode stops the pass with tf.data's error
    (outputs are matched to labels by position, so nothing may be dropped): `datasets.load_source`
    checks every file's first bytes beforehand.
    """
    examples = tf.data.Dataset.from_tensor_slices((np.asarray(paths, str), np.asarray(labels, np.int64)))
    return build_record_eval_dataset(
        examples.map(lambda path, label: (tf.io.read_file(path), label)), batch_size, image_size
    )


def build_record_train_dataset(
    records: tf.data.Dataset,
    batch_size: int,
    seed: int,
    image_size: int = 224,
    augmentation: str = "crop_flip",
    repeat: bool = False,
    shuffle_buffer: int = RECORD_SHUFFLE_BUFFER,
    views: int = 1,
) -> tf.data.Dataset:
    """`build_file_train_dataset` for streamed (encoded image, label) records, e.g. TFDS's.

    Records have no random access, so they are shuffled with a buffer of encoded images (TFDS
    stores examples shuffled already) and there is no class-balanced sampler. A record that fails
    to decode is dropped with a logged warning (`_decode_and_batch`).
    """
    _check_train_arguments(augmentation, "instance")
    examples = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        examples = examples.repeat()
    return _decode_and_batch(
        examples, lambda encoded: encoded, batch_size, seed, image_size, augmentation, views
    )


def build_record_eval_dataset(
    records: tf.data.Dataset, batch_size: int, image_size: int = 224
) -> tf.data.Dataset:
    """`build_file_eval_dataset` for streamed (encoded image, label) records: in order, all kept."""
    dataset = records.map(
        lambda encoded, label: (resize_center_crop(encoded, image_size), tf.cast(label, tf.int64)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
