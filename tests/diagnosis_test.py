"""Tests of cdt_tf.diagnosis: pure NumPy, so this file never imports TensorFlow."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from cdt_tf import class_stats, diagnosis
from conftest import run_command

CIFAR10_LT100_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def _features(counts, dim=8, seed=0, shift=0.0):
    """Random features [sum(counts), dim] (float32) with labels; class c's mean moved by shift * c."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    features = rng.normal(size=(len(labels), dim)) + shift * labels[:, None]
    return features.astype(np.float32), labels


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _loop_deviation(train, train_labels, test, test_labels, num_rounds, sample_size, seed):
    """dis(c) round by round, with the draws the docstring promises: the K smallest of N_c keys."""
    train, test = _unit(train), _unit(test)
    result = []
    for c in range(train_labels.max() + 1):
        members = train[train_labels == c]
        test_mean = test[test_labels == c].mean(0)
        if sample_size == len(members):
            result.append(np.linalg.norm(members.mean(0) - test_mean))
            continue
        rng = np.random.default_rng([seed, c])
        distances = []
        for _ in range(num_rounds):
            chosen = np.argsort(rng.random(len(members)))[:sample_size]
            distances.append(np.linalg.norm(members[chosen].mean(0) - test_mean))
        result.append(np.mean(distances))
    return np.array(result)


# --------------------------------------------------------------------------- feature_deviation


@pytest.mark.parametrize("sample_size", [None, 3, 7])
def test_feature_deviation_matches_a_loop_with_the_same_draws(sample_size):
    train, train_labels = _features([40, 17, 9, 7], shift=0.3)
    test, test_labels = _features([11, 11, 11, 11], seed=1, shift=0.3)
    got = diagnosis.feature_deviation(train, train_labels, test, test_labels, 37, sample_size, seed=5)
    expected = _loop_deviation(train, train_labels, test, test_labels, 37, sample_size or 7, seed=5)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_feature_deviation_does_not_depend_on_the_chunking(monkeypatch):
    train, train_labels = _features([60, 25, 10])
    test, test_labels = _features([10, 10, 10], seed=1)
    whole = diagnosis.feature_deviation(train, train_labels, test, test_labels, 50, seed=2)
    monkeypatch.setattr(diagnosis, "CHUNK_ELEMENTS", 300)  # A few rounds per step.
    np.testing.assert_allclose(
        diagnosis.feature_deviation(train, train_labels, test, test_labels, 50, seed=2), whole, rtol=1e-12
    )


def test_feature_deviation_statistically_matches_uniform_subsampling_without_replacement():
    # Train and test come from one distribution, so dis(c) is mostly the sub-sample's spread, which
    # is sqrt((N - K) / (N - 1)) = 0.89 times smaller without replacement than with it.
    train, train_labels = _features([20], dim=16)
    test, test_labels = _features([400], dim=16, seed=1)
    got = diagnosis.feature_deviation(train, train_labels, test, test_labels, 3000, sample_size=5, seed=0)[0]
    unit_train, test_mean = _unit(train), _unit(test).mean(0)
    rng = np.random.default_rng(123)

    def reference(replace):
        return np.mean(
            [
                np.linalg.norm(unit_train[rng.choice(20, 5, replace=replace)].mean(0) - test_mean)
                for _ in range(3000)
            ]
        )

    without, with_replacement = reference(False), reference(True)
    assert got == pytest.approx(without, rel=0.03)
    assert abs(with_replacement - without) > 0.06 * without  # The tolerance can tell the two apart.


def test_sample_size_equal_to_the_class_size_gives_the_distance_of_the_full_means():
    train, train_labels = _features([5, 5, 5], shift=0.5)
    test, test_labels = _features([9, 4, 6], seed=1, shift=0.5)
    expected = [
        np.linalg.norm(_unit(train[train_labels == c]).mean(0) - _unit(test[test_labels == c]).mean(0))
        for c in range(3)
    ]
    got = diagnosis.feature_deviation(train, train_labels, test, test_labels, num_rounds=10)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(
        got, diagnosis.mean_deviation(train, train_labels, test, test_labels, 3), rtol=1e-12
    )
    # K == N_c for one class only: that class is exact, whatever the rounds.
    uneven, uneven_labels = _features([8, 3])
    got = diagnosis.feature_deviation(
        uneven, uneven_labels, test[test_labels < 2], test_labels[test_labels < 2], 7
    )
    assert got[1] == pytest.approx(
        np.linalg.norm(_unit(uneven[uneven_labels == 1]).mean(0) - _unit(test[test_labels == 1]).mean(0)),
        rel=1e-12,
    )


def test_a_class_with_one_image():
    train, train_labels = _features([6, 1], shift=1.0)
    test, test_labels = _features([5, 5], seed=1, shift=1.0)
    got = diagnosis.feature_deviation(train, train_labels, test, test_labels, num_rounds=2000)
    unit_train, unit_test = _unit(train), _unit(test)
    test_means = [unit_test[test_labels == c].mean(0) for c in (0, 1)]
    # K = 1: class 1's only image is every round's sub-sample.
    assert got[1] == pytest.approx(np.linalg.norm(unit_train[6] - test_means[1]), rel=1e-12)
    # Class 0 draws one of its 6 images per round: about the mean of their 6 distances.
    singles = np.linalg.norm(unit_train[:6] - test_means[0], axis=1)
    assert got[0] == pytest.approx(singles.mean(), rel=0.05)
    assert singles.min() < got[0] < singles.max()


def test_normalisation_makes_it_scale_free_and_zero_features_stay_finite():
    train, train_labels = _features([12, 6])
    test, test_labels = _features([6, 6], seed=1)
    scales = np.random.default_rng(3).uniform(0.1, 10.0, size=(len(train), 1))
    np.testing.assert_allclose(
        diagnosis.feature_deviation(train * scales, train_labels, test, test_labels, 20),
        diagnosis.feature_deviation(train, train_labels, test, test_labels, 20),
        rtol=1e-9,
    )
    train[0] = 0.0  # An all-zero ReLU output.
    assert np.isfinite(diagnosis.feature_deviation(train, train_labels, test, test_labels, 20)).all()


def test_missing_classes_give_nan_and_bad_arguments_raise():
    train, train_labels = _features([5, 0, 4])
    test, test_labels = _features([3, 3, 0], seed=1)
    got = diagnosis.feature_deviation(train, train_labels, test, test_labels, 10, num_classes=4)
    assert np.isfinite(got[0]) and np.isnan(got[1:]).all()  # No train (1, 3) or no test (2) features.
    with pytest.raises(ValueError, match="class 2 has 4"):
        diagnosis.feature_deviation(train, train_labels, test, test_labels, 10, sample_size=5)
    with pytest.raises(ValueError, match="num_rounds"):
        diagnosis.feature_deviation(train, train_labels, test, test_labels, 0)


def test_feature_deviation_is_fast_on_cifar10_lt_sized_features():
    rng = np.random.default_rng(0)
    train_labels = np.repeat(np.arange(10), CIFAR10_LT100_COUNTS)
    train = rng.normal(size=(len(train_labels), 64)).astype(np.float32)
    test_labels = np.repeat(np.arange(10), 1000)
    test = rng.normal(size=(len(test_labels), 64)).astype(np.float32)
    assert len(train) == 12406
    start = time.perf_counter()
    deviation = diagnosis.feature_deviation(train, train_labels, test, test_labels, num_rounds=1000)
    seconds = time.perf_counter() - start
    assert np.isfinite(deviation).all()
    assert seconds < 2.0, f"R=1000 on 12,406 x 64 features took {seconds:.2f} s"


# --------------------------------------------------------------------------- norms, confusions, NCM


def test_classifier_norms():
    kernel = np.array([[3.0, 0.0, 1.0], [4.0, -1.0, 1.0]])  # [D=2, C=3]
    np.testing.assert_allclose(diagnosis.classifier_norms(kernel), [5.0, 1.0, np.sqrt(2.0)])


def test_decision_value_confusion():
    logits = np.array([[2.0, -1.0, 0.0], [4.0, 1.0, 0.0], [0.5, 3.0, -2.0], [1.0, 1.0, 1.0]])
    labels = np.array([0, 0, 1, 1])
    expected = np.array([[3.0, 0.0, 0.0], [0.75, 2.0, -0.5], [np.nan] * 3])
    np.testing.assert_allclose(diagnosis.decision_value_confusion(logits, labels, 3), expected)


def test_prediction_confusion():
    predictions = np.array([0, 0, 1, 2, 1, 1, 1])
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    expected = np.array([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [np.nan] * 3])
    got = diagnosis.prediction_confusion(predictions, labels, 4)[:, :3]
    np.testing.assert_allclose(got, expected)


def test_nearest_center_accuracy_uses_normalised_features_and_centres():
    centers = np.array([[10.0, 0.0], [0.0, 0.1], [np.nan, np.nan]])  # Class 2 has no centre.
    # Unnormalised, [3, 2.5] is nearer to centre 1 in Euclidean distance; normalised, to centre 0.
    features = np.array([[3.0, 2.5], [0.1, 5.0], [1.0, 0.2], [-1.0, 3.0], [2.0, 1.0]])
    labels = np.array([0, 1, 1, 1, 2])  # Predictions: 0, 1, 0, 1, 0.
    top1, per_class = diagnosis.nearest_center_accuracy(features, labels, centers)
    assert top1 == pytest.approx(3 / 5)
    np.testing.assert_allclose(per_class, [1.0, 2 / 3, 0.0])


def test_class_means_and_mean_deviation():
    features = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    labels = np.array([0, 0, 1])
    np.testing.assert_allclose(
        diagnosis.class_means(features, labels, 3), [[2.0, 0.0], [0.0, 2.0], [np.nan, np.nan]]
    )
    test = np.array([[0.0, 5.0], [0.0, 1.0]])
    got = diagnosis.mean_deviation(features, labels, test, np.array([0, 1]), 2)
    np.testing.assert_allclose(got, [np.sqrt(2.0), 0.0])


def test_sample_per_class():
    labels = np.repeat([0, 1, 2], [10, 3, 5])
    picked = class_stats.sample_up_to(labels, 4, 3, seed=0)
    assert np.bincount(labels[picked]).tolist() == [4, 3, 4]
    assert (np.diff(picked) > 0).all()
    np.testing.assert_array_equal(picked, class_stats.sample_up_to(labels, 4, 3, seed=0))
    assert not np.array_equal(picked, class_stats.sample_up_to(labels, 4, 3, seed=1))


def test_importing_diagnosis_does_not_import_tensorflow():
    code = (
        "import sys, cdt_tf.diagnosis; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    result = run_command(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
