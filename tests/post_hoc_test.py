"""Post-hoc rules, tau selection (held-out vs test), NCM, and classifier retraining."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cdt_tf import class_stats, diagnosis, linear_head, post_hoc
from cdt_tf.errors import UserError
from cdt_tf.features import Features

COUNTS = [300, 60, 12]


def synthetic_split(n_per_class, bias, seed, dim=6):
    """Features around class centres and the logits of a classifier biased toward class 0."""
    rng = np.random.default_rng(seed)
    centres = np.eye(len(COUNTS), dim) * 3.0
    labels = np.repeat(np.arange(len(COUNTS)), n_per_class)
    features = centres[labels] + rng.normal(scale=1.2, size=(len(labels), dim))
    kernel = centres.T * np.array([1.5, 1.0, 0.6])  # ||w_c|| shrinks with N_c, as in ERM.
    logits = features @ kernel + bias
    return Features(features, logits, labels), kernel


def test_rules_match_their_formulas():
    split, kernel = synthetic_split(5, np.zeros(3), 0)
    z, f = split.logits, split.features
    np.testing.assert_allclose(post_hoc.nc_tau(z, f, kernel, COUNTS, 0.5), z / np.sqrt(COUNTS))
    norms = np.linalg.norm(kernel, axis=0)
    np.testing.assert_allclose(post_hoc.w_norm(z, f, kernel, COUNTS, 1.0), f @ (kernel / norms))
    prior = np.asarray(COUNTS) / sum(COUNTS)
    np.testing.assert_allclose(
        post_hoc.logit_adjustment(z, f, kernel, COUNTS, 1.0), z - np.log(prior), rtol=1e-12
    )
    np.testing.assert_allclose(post_hoc.nc_tau(z, f, kernel, COUNTS, 0.0), z)


def test_ncm_uses_normalised_training_means():
    features = np.array([[2.0, 0.0], [4.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    labels = np.array([0, 0, 1, 1])
    centres = diagnosis.class_means(diagnosis.l2_normalize(features), labels, 2)
    np.testing.assert_allclose(centres, [[1.0, 0.0], [0.0, 1.0]])
    scores = diagnosis.nearest_center_scores(np.array([[5.0, 1.0], [1.0, 5.0]]), centres)
    assert scores.argmax(1).tolist() == [0, 1]


def test_selection_on_holdout_is_labelled_and_never_looks_at_test():
    bias = np.array([2.0, 0.0, -1.0])
    test, kernel = synthetic_split(50, bias, 1)
    train, _ = synthetic_split(20, bias, 2)
    holdout, _ = synthetic_split(3, bias, 3)
    section = post_hoc.evaluate_post_hoc(COUNTS, kernel, "linear", train, test, holdout)
    assert set(section) == {"nc_tau", "w_norm", "logit_adjustment", "ncm"}
    for method in ("nc_tau", "w_norm", "logit_adjustment"):
        entry = section[method]
        assert entry["selected_on"] == "holdout" and entry["sweep"]["split"] == "holdout"
        best = int(np.argmax(entry["sweep"]["top1"]))
        assert entry["tau"] == post_hoc.TAU_GRID[best]
    # Changing the test labels must not change a held-out choice.
    scrambled = dataclasses.replace(test, labels=np.roll(test.labels, 7))
    again = post_hoc.evaluate_post_hoc(COUNTS, kernel, "linear", train, scrambled, holdout)
    assert {m: e["tau"] for m, e in again.items()} == {m: e["tau"] for m, e in section.items()}


def test_selection_on_test_says_so_and_is_the_best_test_tau():
    bias = np.array([2.0, 0.0, -1.0])
    test, kernel = synthetic_split(50, bias, 1)
    train, _ = synthetic_split(20, bias, 2)
    section = post_hoc.evaluate_post_hoc(COUNTS, kernel, "linear", train, test)
    entry = section["logit_adjustment"]
    assert entry["selected_on"] == "test"
    assert entry["top1"] == pytest.approx(max(entry["sweep"]["top1"]))
    # A biased classifier gains from calibration: the chosen tau beats tau = 0 on this data.
    assert entry["top1"] > entry["sweep"]["top1"][0]
    assert entry["tau"] > 0


def test_taus_from_another_run_are_applied_as_given():
    test, kernel = synthetic_split(20, np.zeros(3), 1)
    train, _ = synthetic_split(10, np.zeros(3), 2)
    section = post_hoc.evaluate_post_hoc(
        COUNTS, kernel, "cosine", train, test, taus_from={"nc_tau": 0.35}, taus_from_name="h3"
    )
    assert section["nc_tau"]["tau"] == 0.35 and section["nc_tau"]["selected_on"] == "holdout of h3"
    assert "w_norm" not in section  # Cosine classifiers have no norms to rebalance.
    assert "logit_adjustment" not in section and "ncm" in section


def test_read_taus_refuses_a_run_without_holdout(tmp_path):
    (tmp_path / "results.json").write_text('{"post_hoc": {"nc_tau": {"tau": 0.5, "selected_on": "test"}}}')
    with pytest.raises(UserError, match="holdout_per_class"):
        post_hoc.read_taus(str(tmp_path))
    (tmp_path / "results.json").write_text('{"post_hoc": {"nc_tau": {"tau": 0.5, "selected_on": "holdout"}}}')
    assert post_hoc.read_taus(str(tmp_path))[0] == {"nc_tau": 0.5}
    with pytest.raises(UserError, match="no results.json"):
        post_hoc.read_taus(str(tmp_path / "missing"))


def test_plot_and_text_table(tmp_path):
    test, kernel = synthetic_split(10, np.array([1.0, 0.0, 0.0]), 1)
    train, _ = synthetic_split(10, np.zeros(3), 2)
    section = post_hoc.evaluate_post_hoc(COUNTS, kernel, "linear", train, test)
    path = tmp_path / "post_hoc.png"
    post_hoc.plot_sweeps(section, str(path), "synthetic")
    assert path.stat().st_size > 1000
    text = post_hoc.format_section(section)
    assert "nc_tau" in text and "test" in text and "ncm" in text


@pytest.mark.parametrize("sampler", ["class_balanced", "instance"])
def test_retrained_classifier_learns_separable_features(sampler):
    split, _ = synthetic_split(40, np.zeros(3), 4)
    kernel, bias = linear_head.train_linear_classifier(
        split.features, split.labels, 3, sampler=sampler, epochs=20, batch_size=32
    )
    assert kernel.shape == (6, 3) and bias.shape == (3,)
    accuracy = ((split.features @ kernel + bias).argmax(1) == split.labels).mean()
    assert accuracy > 0.9


def test_class_balanced_retraining_favours_minor_classes_more_than_instance():
    """On imbalanced overlapping data, balanced batches move the boundary toward the major class."""
    rng = np.random.default_rng(0)
    counts = [400, 20]
    labels = np.repeat([0, 1], counts)
    features = np.where(labels[:, None] == 0, 0.0, 1.0) + rng.normal(scale=0.8, size=(len(labels), 1))
    predicted_minor = {}
    for sampler in ("instance", "class_balanced"):
        kernel, bias = linear_head.train_linear_classifier(
            features, labels, 2, sampler=sampler, epochs=30, batch_size=32
        )
        predicted_minor[sampler] = ((features @ kernel + bias).argmax(1) == 1).mean()
    assert predicted_minor["class_balanced"] > predicted_minor["instance"] + 0.05


def test_label_aware_smoothing_runs_from_head_to_tail():
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    eps = class_stats.label_aware_smoothing(counts, head=0.3, tail=0.0)
    assert eps[0] == pytest.approx(0.3) and eps[-1] == pytest.approx(0.0)
    assert np.all(np.diff(eps) < 0)
    # Concave in N_c: the mid-sized class sits above the straight line between the ends.
    linear = 0.3 * (1077 - 50) / (5000 - 50)
    assert eps[3] > linear
    targets = class_stats.smoothed_targets(eps)
    np.testing.assert_allclose(targets.sum(1), 1.0)
    np.testing.assert_allclose(np.diag(targets), 1 - eps + eps / 10)
    np.testing.assert_allclose(class_stats.label_aware_smoothing([7, 7], 0.2, 0.0), [0.2, 0.2])
    with pytest.raises(ValueError, match="head"):
        class_stats.label_aware_smoothing(counts, head=1.0, tail=0.0)


def test_smoothed_targets_make_a_retrained_classifier_less_confident():
    split, _ = synthetic_split(40, np.zeros(3), 4)
    confidence = {}
    for name, smoothing in (("one_hot", None), ("smoothed", np.full(3, 0.6))):
        kernel, bias = linear_head.train_linear_classifier(
            split.features, split.labels, 3, epochs=20, batch_size=32, smoothing=smoothing
        )
        logits = split.features @ kernel + bias
        probabilities = np.exp(logits - logits.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
        confidence[name] = probabilities.max(1).mean()
        assert (logits.argmax(1) == split.labels).mean() > 0.8
    # The smoothed target's top probability is 1 - 0.6 + 0.2 = 0.6: the fit stays near it.
    assert confidence["smoothed"] < 0.75 < confidence["one_hot"]
