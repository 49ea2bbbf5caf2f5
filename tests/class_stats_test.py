"""Tests of cdt_tf.class_stats: pure NumPy, so this file never imports TensorFlow."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from cdt_tf import class_stats
from cdt_tf.class_stats import class_temperatures, imbalanced_counts, shot_groups
from conftest import run_command

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- imbalanced_counts


def test_exp_cifar10_rho100_matches_reference():
    counts = imbalanced_counts(10, 5000, 100, "exp")
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(counts) == 12406
    assert all(isinstance(c, int) for c in counts)


def test_exp_is_the_default_profile():
    assert imbalanced_counts(10, 5000, 100) == imbalanced_counts(10, 5000, 100, "exp")


def test_exp_cifar100_rho100_sums_to_10847():
    counts = imbalanced_counts(100, 500, 100, "exp")
    assert len(counts) == 100
    assert sum(counts) == 10847
    assert counts[0] == 500
    assert counts[-1] == 5
    assert counts[:5] == [500, 477, 455, 434, 415]


@pytest.mark.parametrize("rho", [10, 50, 100, 200])
def test_exp_endpoints_and_monotone(rho):
    counts = imbalanced_counts(10, 5000, rho, "exp")
    assert counts[0] == 5000
    assert counts[-1] == int(5000 / rho)
    assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_exp_formula_with_truncation():
    num_classes, n_max, rho = 7, 1234, 37.0
    expected = [int(n_max * rho ** (-c / (num_classes - 1))) for c in range(num_classes)]
    assert imbalanced_counts(num_classes, n_max, rho, "exp") == expected


def test_step_even_number_of_classes():
    assert imbalanced_counts(10, 5000, 100, "step") == [5000] * 5 + [50] * 5


@pytest.mark.parametrize(
    "num_classes, expected",
    [
        (5, [100, 100, 10, 10, 10]),
        (3, [100, 10, 10]),
        (7, [100, 100, 100, 10, 10, 10, 10]),
    ],
)
def test_step_odd_number_of_classes(num_classes, expected):
    # The first num_classes // 2 keep N_max; the rest get int(N_max / rho).
    assert imbalanced_counts(num_classes, 100, 10, "step") == expected


def test_step_truncates_minor_count():
    # 500 / 3 = 166.67 -> 166.
    assert imbalanced_counts(4, 500, 3, "step") == [500, 500, 166, 166]


def test_none_profile_is_balanced():
    assert imbalanced_counts(4, 123, 100, "none") == [123, 123, 123, 123]


@pytest.mark.parametrize("profile", ["exp", "step", "none"])
def test_rho_one_gives_all_equal(profile):
    assert imbalanced_counts(10, 500, 1, profile) == [500] * 10


@pytest.mark.parametrize("profile", ["exp", "step", "none"])
def test_single_class(profile):
    assert imbalanced_counts(1, 77, 10, profile) == [77]


@pytest.mark.parametrize("rho", [0.5, 0.0, -3.0, float("nan")])
def test_rho_below_one_raises(rho):
    with pytest.raises(ValueError, match="imbalance_ratio"):
        imbalanced_counts(10, 5000, rho, "exp")


def test_unknown_profile_raises():
    with pytest.raises(ValueError, match="unknown imbalance profile"):
        imbalanced_counts(10, 5000, 100, "linear")


@pytest.mark.parametrize("num_classes", [0, -1])
def test_num_classes_below_one_raises(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        imbalanced_counts(num_classes, 5000, 100, "exp")


def test_max_per_class_below_one_raises():
    with pytest.raises(ValueError, match="max_per_class"):
        imbalanced_counts(10, 0, 100, "exp")


# --------------------------------------------------------------------------- class_temperatures


@pytest.mark.parametrize("gamma", [0.1, 0.3, 0.5, 1.0, 2.0])
def test_temperatures_exact(gamma):
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    expected = np.array([(5000.0 / n) ** gamma for n in counts])
    got = class_temperatures(counts, gamma)
    assert got.dtype == np.float64
    assert got.shape == (10,)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert got[0] == 1.0
    assert (got[1:] > 1.0).all()


def test_temperatures_hand_values():
    # N_max = 400: ratios 1, 4, 16 -> gamma 0.5 gives 1, 2, 4.
    np.testing.assert_allclose(class_temperatures([400, 100, 25], 0.5), [1.0, 2.0, 4.0], rtol=1e-12)


def test_temperatures_max_not_first():
    np.testing.assert_allclose(class_temperatures([10, 40, 20], 1.0), [4.0, 1.0, 2.0], rtol=1e-12)


def test_temperatures_gamma_zero_gives_ones():
    got = class_temperatures([5000, 500, 50], 0.0)
    np.testing.assert_array_equal(got, np.ones(3))


def test_temperatures_negative_gamma_raises():
    with pytest.raises(ValueError, match="gamma"):
        class_temperatures([10, 5], -0.1)


@pytest.mark.parametrize("counts", [[10, 0, 5], [10, -2, 5]])
def test_temperatures_zero_or_negative_count_raises(counts):
    with pytest.raises(ValueError, match=r"\[1\]"):
        class_temperatures(counts, 0.5)


def test_temperatures_empty_counts_raises():
    with pytest.raises(ValueError):
        class_temperatures([], 0.5)


# --------------------------------------------------------------------------- shot_groups


def test_shot_group_boundaries():
    groups = shot_groups([101, 100, 20, 19])
    assert set(groups) == {"many", "medium", "few"}
    np.testing.assert_array_equal(groups["many"], [True, False, False, False])
    np.testing.assert_array_equal(groups["medium"], [False, True, True, False])
    np.testing.assert_array_equal(groups["few"], [False, False, False, True])


def test_shot_groups_partition_every_class():
    counts = imbalanced_counts(100, 500, 100, "exp")
    groups = shot_groups(counts)
    stacked = np.stack([groups["many"], groups["medium"], groups["few"]]).astype(int)
    np.testing.assert_array_equal(stacked.sum(0), np.ones(100, int))
    assert groups["many"].dtype == bool
    # Counts are non-increasing, so the groups are contiguous: many, then medium, then few.
    n_many, n_medium, n_few = (int(groups[g].sum()) for g in ("many", "medium", "few"))
    assert n_many + n_medium + n_few == 100
    assert groups["many"][:n_many].all()
    assert groups["few"][100 - n_few :].all()
    assert n_many == sum(c > 100 for c in counts)
    assert n_few == sum(c < 20 for c in counts)


def test_shot_group_constants():
    assert class_stats.MANY_SHOT_MIN == 100
    assert class_stats.FEW_SHOT_MAX == 20


# --------------------------------------------------------------------------- import hygiene


def test_class_stats_does_not_import_tensorflow():
    result = run_command(
        sys.executable,
        "-c",
        "import cdt_tf.class_stats, sys; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
        "assert 'keras' not in sys.modules, 'keras imported'",
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_package_reexports_numpy_api_without_tensorflow():
    import cdt_tf

    assert hasattr(cdt_tf, "imbalanced_counts")
    assert cdt_tf.imbalanced_counts is imbalanced_counts
