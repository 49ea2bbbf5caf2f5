"""The class-balanced sampler: uniform over classes, deterministic, no per-class datasets."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tensorflow as tf

from cdt_tf import input_pipeline
from cdt_tf.errors import DataError

COUNTS = [500, 120, 30, 6]


def long_tailed_labels(counts, seed=0):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return np.random.default_rng(seed).permutation(labels)


def take(dataset, n):
    return np.array(list(dataset.take(n).as_numpy_iterator()))


def test_classes_are_equally_likely():
    labels = long_tailed_labels(COUNTS)
    indices = take(input_pipeline.class_balanced_indices(labels, seed=0), 8000)
    assert indices.min() >= 0 and indices.max() < len(labels)
    frequencies = np.bincount(labels[indices], minlength=4) / len(indices)
    # Binomial standard error at p = 1/4, n = 8000 is 0.005; 0.025 is 5 sigma.
    np.testing.assert_allclose(frequencies, 0.25, atol=0.025)


def test_members_of_a_class_are_uniform():
    labels = long_tailed_labels([10, 5])
    indices = take(input_pipeline.class_balanced_indices(labels, seed=1), 6000)
    small = indices[labels[indices] == 1]
    counts = np.bincount(small, minlength=len(labels))[np.flatnonzero(labels == 1)]
    # About 3000 draws over 5 members: 600 each, sd ~22.
    assert counts.min() > 480 and counts.max() < 720


def test_deterministic_for_a_seed_and_different_across_seeds():
    labels = long_tailed_labels(COUNTS)
    a = take(input_pipeline.class_balanced_indices(labels, seed=3), 200)
    b = take(input_pipeline.class_balanced_indices(labels, seed=3), 200)
    c = take(input_pipeline.class_balanced_indices(labels, seed=4), 200)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_scales_to_thousands_of_classes():
    """8,142 classes (iNaturalist's count): built from three arrays, quickly, without per-class datasets."""
    counts = np.random.default_rng(0).integers(2, 30, size=8142)
    labels = long_tailed_labels(counts)
    start = time.time()
    dataset = input_pipeline.class_balanced_indices(labels, seed=0)
    indices = take(dataset.batch(512), 4).reshape(-1)
    assert time.time() - start < 20
    assert len(np.unique(labels[indices])) > 1500  # 2048 draws over 8142 classes.


def test_missing_class_is_refused():
    with pytest.raises(DataError, match=r"classes \[1\]"):
        input_pipeline.class_balanced_indices(np.array([0, 0, 2]), seed=0)


def test_build_train_dataset_with_class_balanced_sampler():
    labels = long_tailed_labels(COUNTS)
    images = np.zeros((len(labels), 8, 8, 3), np.uint8)
    images[..., 0] = labels[:, None, None]  # The image carries its label: gathers must stay paired.
    dataset = input_pipeline.build_train_dataset(
        images, labels, batch_size=64, augmentation="none", seed=0, sampler="class_balanced"
    )
    batches = list(dataset.take(30).as_numpy_iterator())
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.shape == (1920, 8, 8, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[:, 0, 0, 0], y)
    np.testing.assert_allclose(np.bincount(y, minlength=4) / len(y), 0.25, atol=0.05)
    assert dataset.element_spec[0].shape.as_list() == [64, 8, 8, 3]
    with pytest.raises(ValueError, match="sampler"):
        input_pipeline.build_train_dataset(images, labels, 64, "none", 0, sampler="uniform")


def test_class_balanced_stream_is_endless():
    labels = long_tailed_labels([3, 2])
    dataset = input_pipeline.class_balanced_indices(labels, seed=0)
    assert dataset.cardinality() == tf.data.INFINITE_CARDINALITY
