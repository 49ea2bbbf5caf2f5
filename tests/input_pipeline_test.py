"""Tests of subset selection and the tf.data pipelines."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from cdt_tf.errors import DataError
from cdt_tf.input_pipeline import (
    build_eval_dataset,
    build_train_dataset,
    channel_stats,
    pad_crop_flip,
    select_subset,
    subset_hash,
)

# --------------------------------------------------------------------------- select_subset


def _pool_labels():
    # 30 of class 0, 20 of class 1, 10 of class 2, shuffled.
    labels = np.array([0] * 30 + [1] * 20 + [2] * 10)
    return np.random.default_rng(123).permutation(labels)


def test_select_subset_exact_counts():
    labels = _pool_labels()
    chosen = select_subset(labels, [12, 5, 10], seed=0)
    assert chosen.dtype == np.int64
    assert len(chosen) == 27
    assert len(set(chosen.tolist())) == 27  # without replacement
    assert Counter(labels[chosen].tolist()) == {0: 12, 1: 5, 2: 10}
    assert (np.diff(chosen) > 0).all()  # sorted


def test_select_subset_zero_count_class():
    labels = _pool_labels()
    chosen = select_subset(labels, [3, 0, 2], seed=1)
    assert Counter(labels[chosen].tolist()) == {0: 3, 2: 2}


def test_select_subset_deterministic_for_a_seed():
    labels = _pool_labels()
    a = select_subset(labels, [12, 5, 4], seed=7)
    b = select_subset(labels, [12, 5, 4], seed=7)
    np.testing.assert_array_equal(a, b)


def test_select_subset_changes_with_seed():
    labels = _pool_labels()
    a = select_subset(labels, [12, 5, 4], seed=7)
    b = select_subset(labels, [12, 5, 4], seed=8)
    assert not np.array_equal(a, b)


def test_select_subset_class_independent_of_other_counts():
    # Each class is drawn with its own (seed, c) generator.
    labels = _pool_labels()
    a = select_subset(labels, [12, 5, 4], seed=3)
    b = select_subset(labels, [20, 5, 1], seed=3)
    np.testing.assert_array_equal(a[labels[a] == 1], b[labels[b] == 1])


def test_select_subset_too_few_raises():
    labels = _pool_labels()
    with pytest.raises(DataError, match="class 2 has 10"):
        select_subset(labels, [5, 5, 11], seed=0)


def test_select_subset_missing_class_raises():
    labels = _pool_labels()
    with pytest.raises(DataError, match="class 3 has 0"):
        select_subset(labels, [1, 1, 1, 1], seed=0)


# --------------------------------------------------------------------------- subset_hash


def test_subset_hash_is_sha256_of_lines():
    ids = ["train:3", "train:10", "a/b.png"]
    expected = hashlib.sha256(b"train:3\ntrain:10\na/b.png\n").hexdigest()
    assert subset_hash(ids) == expected
    assert subset_hash(np.array(ids)) == expected
    assert subset_hash(list(ids)) == subset_hash(list(ids))


def test_subset_hash_order_sensitive():
    assert subset_hash(["a", "b"]) != subset_hash(["b", "a"])
    # The newline separator keeps boundaries: ["ab", "c"] != ["a", "bc"].
    assert subset_hash(["ab", "c"]) != subset_hash(["a", "bc"])


# --------------------------------------------------------------------------- channel_stats


def test_channel_stats_constant_image():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[..., 0] = 51
    images[..., 1] = 255
    images[..., 2] = 0
    mean, std = channel_stats(images)
    np.testing.assert_allclose(mean, [0.2, 1.0, 0.0], rtol=1e-12, atol=1e-15)
    assert std == [1e-3, 1e-3, 1e-3]  # zero std is floored


def test_channel_stats_two_values():
    images = np.zeros((1, 2, 1, 1), np.uint8)
    images[0, 0, 0, 0] = 255
    mean, std = channel_stats(images)
    np.testing.assert_allclose(mean, [0.5])
    np.testing.assert_allclose(std, [0.5])  # population std


# --------------------------------------------------------------------------- pad_crop_flip


def _distinct_image(h=8, w=8, c=3):
    return (np.arange(h * w * c) % 250 + 1).astype(np.uint8).reshape(h, w, c)


def _windows(image, pad):
    padded = np.pad(image, [(pad, pad), (pad, pad), (0, 0)])
    h, w = image.shape[:2]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = padded[dy : dy + h, dx : dx + w]
            yield (dy, dx, False), window
            yield (dy, dx, True), window[:, ::-1]


def _matching_windows(output, image, pad):
    return [key for key, window in _windows(image, pad) if np.array_equal(window, output)]


def test_pad_crop_flip_shape_dtype_and_window():
    image = _distinct_image()
    for s in range(20):
        out = pad_crop_flip(tf.constant(image), tf.constant([s, 1], tf.int64), pad=2).numpy()
        assert out.shape == image.shape
        assert out.dtype == np.uint8
        assert _matching_windows(out, image, 2), f"seed {s}: not a (flipped) window of the padded image"


def test_pad_crop_flip_covers_offsets_and_flips():
    image = _distinct_image()
    keys = set()
    for s in range(40):
        out = pad_crop_flip(tf.constant(image), tf.constant([s, 99], tf.int64), pad=2).numpy()
        keys.update(_matching_windows(out, image, 2))
    assert any(flip for _, _, flip in keys) and any(not flip for _, _, flip in keys)
    assert len({(dy, dx) for dy, dx, _ in keys}) > 3


def test_pad_crop_flip_same_seed_same_output():
    image = tf.constant(_distinct_image(32, 32, 3))
    seed = tf.constant([5, 6], tf.int64)
    a = pad_crop_flip(image, seed).numpy()
    b = pad_crop_flip(image, seed).numpy()
    np.testing.assert_array_equal(a, b)
    outputs = {pad_crop_flip(image, tf.constant([s, 6], tf.int64)).numpy().tobytes() for s in range(10)}
    assert len(outputs) > 1


def test_pad_crop_flip_inside_dataset_map():
    image = _distinct_image(32, 32, 3)
    seeds = np.array([[s, 3] for s in range(4)], np.int64)
    dataset = tf.data.Dataset.from_tensor_slices((np.stack([image] * 4), seeds)).map(pad_crop_flip)
    assert dataset.element_spec.dtype == tf.uint8
    outputs = [x.numpy() for x in dataset]
    for s, out in enumerate(outputs):
        assert out.shape == (32, 32, 3)
        assert out.dtype == np.uint8
        # Same result as the eager call with the same seed.
        np.testing.assert_array_equal(out, pad_crop_flip(tf.constant(image), tf.constant(seeds[s])).numpy())
        assert _matching_windows(out, image, 4)


# --------------------------------------------------------------------------- build_train_dataset

N = 37
BATCH = 8


def _train_arrays():
    # Each image is constant (index + 1) so augmentation keeps it recognisable.
    images = np.broadcast_to((np.arange(N) + 1).astype(np.uint8)[:, None, None, None], (N, 32, 32, 3)).copy()
    labels = (np.arange(N) % 5).astype(np.int64)
    return images, labels


def _epoch(dataset):
    batches = list(dataset.as_numpy_iterator())
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    return batches, images, labels


@pytest.mark.parametrize("augmentation", ["none", "crop_flip"])
def test_train_batches_shapes_dtypes_and_drop_remainder(augmentation):
    images, labels = _train_arrays()
    dataset = build_train_dataset(images, labels, BATCH, augmentation, seed=0)
    assert dataset.element_spec[0].shape.as_list() == [BATCH, 32, 32, 3]
    assert dataset.element_spec[0].dtype == tf.uint8
    assert dataset.element_spec[1].dtype == tf.int64
    batches, epoch_images, epoch_labels = _epoch(dataset)
    assert len(batches) == N // BATCH == 4
    for x, y in batches:
        assert x.shape == (BATCH, 32, 32, 3) and x.dtype == np.uint8
        assert y.shape == (BATCH,) and y.dtype == np.int64
    # The label multiset is the input's minus at most BATCH - 1 examples.
    dropped = Counter(labels.tolist()) - Counter(epoch_labels.tolist())
    assert sum(dropped.values()) == N - len(batches) * BATCH
    assert N - len(epoch_labels) <= BATCH - 1
    assert not (Counter(epoch_labels.tolist()) - Counter(labels.tolist()))
    # Each image still belongs to its label and no example is repeated within the epoch.
    index = epoch_images.reshape(len(epoch_images), -1).max(1).astype(int) - 1
    np.testing.assert_array_equal(labels[index], epoch_labels)
    assert len(set(index.tolist())) == len(index)
    if augmentation == "none":
        np.testing.assert_array_equal(epoch_images, images[index])
    else:
        # Crops of a constant image hold only its value and the zero padding.
        for i, img in zip(index, epoch_images):
            assert set(np.unique(img).tolist()) <= {0, i + 1}


@pytest.mark.parametrize("augmentation", ["none", "crop_flip"])
def test_train_dataset_deterministic_for_a_seed(augmentation):
    images, labels = _train_arrays()
    _, images_a, labels_a = _epoch(build_train_dataset(images, labels, BATCH, augmentation, seed=42))
    _, images_b, labels_b = _epoch(build_train_dataset(images, labels, BATCH, augmentation, seed=42))
    np.testing.assert_array_equal(labels_a, labels_b)
    np.testing.assert_array_equal(images_a, images_b)
    _, images_c, _ = _epoch(build_train_dataset(images, labels, BATCH, augmentation, seed=43))
    assert not np.array_equal(images_a, images_c)


def test_train_dataset_reshuffles_each_epoch():
    images, labels = _train_arrays()
    dataset = build_train_dataset(images, labels, BATCH, "none", seed=0)
    _, first, _ = _epoch(dataset)
    _, second, _ = _epoch(dataset)
    assert not np.array_equal(first, second)


def test_crop_flip_is_fresh_each_epoch():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (16, 32, 32, 3)).astype(np.uint8)
    ids = np.arange(16, dtype=np.int64)  # labels double as example ids here
    dataset = build_train_dataset(images, ids, 16, "crop_flip", seed=0)
    epochs = []
    for _ in range(2):
        ((x, y),) = list(dataset.as_numpy_iterator())
        epochs.append(x[np.argsort(y)])
    changed = [not np.array_equal(a, b) for a, b in zip(*epochs)]
    assert sum(changed) >= 8


def test_train_dataset_repeat():
    images, labels = _train_arrays()
    dataset = build_train_dataset(images, labels, BATCH, "crop_flip", seed=0, repeat=True)
    batches = list(dataset.take(10).as_numpy_iterator())
    assert len(batches) == 10  # more than one epoch's 4 batches
    assert all(x.shape == (BATCH, 32, 32, 3) for x, _ in batches)


def test_train_dataset_errors():
    images, labels = _train_arrays()
    with pytest.raises(DataError, match="fewer than one batch"):
        build_train_dataset(images[:5], labels[:5], BATCH, "none", seed=0)
    with pytest.raises(ValueError, match="augmentation"):
        build_train_dataset(images, labels, BATCH, "mixup", seed=0)


# --------------------------------------------------------------------------- build_eval_dataset


def test_eval_dataset_keeps_order_and_every_example():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (11, 32, 32, 3)).astype(np.uint8)
    labels = rng.integers(0, 5, 11).astype(np.int64)
    batches = list(build_eval_dataset(images, labels, 4).as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), images)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels)
    # A second pass over the same (cached) dataset is identical.
    dataset = build_eval_dataset(images, labels, 4)
    first = np.concatenate([b[0] for b in dataset.as_numpy_iterator()])
    again = np.concatenate([b[0] for b in dataset.as_numpy_iterator()])
    np.testing.assert_array_equal(first, images)
    np.testing.assert_array_equal(again, images)
