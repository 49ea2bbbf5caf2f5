"""The paper's diagnosis of over-fitting to minor classes, as pure NumPy (§3.3, Table 1, Fig. 3-5, 7).

Features are the penultimate activations f(x) [N, D] of a trained network and decision values
(logits) are w_c^T f(x) [N, C]. Feature statistics l2-normalise every feature first, as the paper
does (its footnotes 3 and 4, following SimpleShot and Kang et al.). Labels are int class indices.
"""

from __future__ import annotations

import numpy as np

from cdt_tf import evaluate

# Features with a smaller norm (an all-zero ReLU output) stay zero instead of becoming NaN.
NORM_EPSILON = 1e-12
# Elements one vectorised step of feature_deviation may hold ([rounds, N_c] keys or [rounds, K, D]
# gathered features), about 32 MB of float64: bounds memory whatever K and N_c are.
CHUNK_ELEMENTS = 1 << 22


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit l2 norm. [N, D] -> float64 [N, D]; an all-zero row stays zero."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return features / np.maximum(norms, NORM_EPSILON)


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean feature of each class [C, D] (NaN row for a class without examples). Not normalised."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    sums = np.zeros((num_classes, features.shape[1]))
    np.add.at(sums, labels, features)
    counts = np.bincount(labels, minlength=num_classes)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def mean_deviation(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
) -> np.ndarray:
    """||mean(train f_c) - mean(test f_c)||_2 per class [C] of l2-normalised features (Fig. 7).

    Uses every given feature (no sub-sampling); NaN for a class missing from either split.
    """
    train_means = class_means(l2_normalize(train_features), train_labels, num_classes)
    test_means = class_means(l2_normalize(test_features), test_labels, num_classes)
    return np.linalg.norm(train_means - test_means, axis=1)


def feature_deviation(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    num_rounds: int = 1000,
    sample_size: int | None = None,
    seed: int = 0,
    num_classes: int | None = None,
) -> np.ndarray:
    """The paper's feature deviation dis(c) (§3.3, Fig. 3d), per class.

        dis(c) = 1/R sum_r || mean(S_K({f(x_train^(c))})) - mean({f(x_test^(c))}) ||_2

    with every feature l2-normalised first and S_K drawing K of the class's N_c training features
    uniformly without replacement in each of R rounds. A common K for all classes (by default the
    smallest class size) makes dis(c) comparable across classes: the distance of a mean of K
    features from the test mean grows as K shrinks, even without any deviation.

    Round r of class c keeps the K training features with the smallest of N_c uniform keys drawn
    from `np.random.default_rng([seed, c])` (row r of a [R, N_c] array of keys, drawn row by row):
    a uniform K-subset, vectorised over rounds with argpartition and a gather. When K == N_c every
    round is the whole class, and dis(c) is the exact distance between the two full means.

    Args:
      train_features: [N, D] penultimate features of the training set.
      train_labels: int [N].
      test_features: [M, D].
      test_labels: int [M].
      num_rounds: R >= 1.
      sample_size: K; None: the smallest number of training features of a class (classes without
        training features aside). Must not exceed any non-empty class's N_c.
      seed: seeds the sub-sampling.
      num_classes: C; None: 1 + the largest label of either split.

    Returns:
      float64 [C]; NaN for a class without training or without test features.

    Raises:
      ValueError: for num_rounds < 1, or a sample_size < 1 or larger than a class.
    """
    train_labels = np.asarray(train_labels, dtype=np.int64)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    if num_classes is None:
        num_classes = int(max(train_labels.max(initial=-1), test_labels.max(initial=-1))) + 1
    if num_rounds < 1:
        raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
    train_counts = np.bincount(train_labels, minlength=num_classes)
    present = train_counts > 0
    if not present.any():
        return np.full(num_classes, np.nan)
    if sample_size is None:
        sample_size = int(train_counts[present].min())
    too_small = np.flatnonzero(present & (train_counts < sample_size))
    if sample_size < 1 or too_small.size:
        detail = f"; class {too_small[0]} has {train_counts[too_small[0]]}" if too_small.size else ""
        raise ValueError(f"sample_size K={sample_size} must be >= 1 and <= every class size{detail}")

    train = l2_normalize(train_features)
    test_means = class_means(l2_normalize(test_features), test_labels, num_classes)
    deviation = np.full(num_classes, np.nan)
    for c in np.flatnonzero(present):
        if np.isnan(test_means[c, 0]):
            continue
        members = train[train_labels == c]  # [N_c, D]
        size = len(members)
        if sample_size == size:  # Every round draws the whole class.
            deviation[c] = np.linalg.norm(members.mean(0) - test_means[c])
            continue
        rng = np.random.default_rng([seed, c])
        rounds_per_chunk = max(1, CHUNK_ELEMENTS // max(size, sample_size * members.shape[1]))
        total = 0.0
        for start in range(0, num_rounds, rounds_per_chunk):
            rounds = min(rounds_per_chunk, num_rounds - start)
            keys = rng.random((rounds, size))
            chosen = np.argpartition(keys, sample_size - 1, axis=1)[:, :sample_size]  # [rounds, K]
            sample_means = members[chosen].mean(axis=1)  # [rounds, K, D] -> [rounds, D]
            total += np.linalg.norm(sample_means - test_means[c], axis=1).sum()
        deviation[c] = total / num_rounds
    return deviation


def classifier_norms(kernel: np.ndarray) -> np.ndarray:
    """||w_c||_2 per class [C] from a Dense kernel [D, C] (Fig. 3c)."""
    return np.linalg.norm(np.asarray(kernel, dtype=np.float64), axis=0)


def decision_value_confusion(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean decision values by true class (Fig. 4/5, left of each pair).

    Args:
      logits: [N, C] decision values w_c^T f(x).
      labels: int [N].
      num_classes: C.

    Returns:
      [C, C]: entry [y, c] is the mean of class c's decision value over the examples of true class y
      (row y is NaN when class y has no example).
    """
    logits = np.asarray(logits, dtype=np.float64)
    return class_means(logits, labels, num_classes)


def prediction_confusion(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Row-normalised confusion matrix of predicted labels (Fig. 4/5, right of each pair).

    Returns:
      [C, C]: entry [y, c] is the fraction of the examples of true class y predicted as c; each row
      sums to 1 (NaN row for a class without examples). The diagonal is the per-class accuracy.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (labels, predictions), 1.0)
    totals = counts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)


def nearest_center_scores(features: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Scores [N, C] of the nearest class centre classifier (NCM): the larger, the nearer.

    Features and centres are both l2-normalised, so the nearest centre (Euclidean) is the one of
    largest cosine similarity, which is the score; a NaN row of centers (a class without a centre)
    scores -inf and is never predicted.

    Args:
      features: [N, D].
      centers: [C, D], e.g. `class_means(l2_normalize(f_train), y_train, C)`.
    """
    centers = np.asarray(centers, dtype=np.float64)
    valid = ~np.isnan(centers).any(axis=1)
    similarity = l2_normalize(features) @ l2_normalize(np.where(valid[:, None], centers, 0.0)).T
    return np.where(valid[None, :], similarity, -np.inf)


def nearest_center_accuracy(
    features: np.ndarray, labels: np.ndarray, centers: np.ndarray
) -> tuple[float, np.ndarray]:
    """Accuracy of the nearest class centre classifier (Table 1, NCM; `nearest_center_scores`).

    Pass `class_means(l2_normalize(f_train), y_train, C)` for the paper's "training mean" row, or the
    test split's means for its upper bound.

    Returns:
      (overall accuracy, per-class accuracy float64 [C], NaN for a class without examples).
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = nearest_center_scores(features, centers).argmax(axis=1)
    per_class = evaluate.per_class_accuracy(predictions, labels, len(centers))
    return float((predictions == labels).mean()), per_class
