"""Pure NumPy facts about class sizes: imbalanced counts, temperatures, groups.

Direction of every ratio in this module: the imbalance ratio is
rho = N_max / N_min >= 1, and class index 0 is the largest class.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

PROFILES = ("exp", "step", "none")

# Many / medium / few shot groups by training-set size (Liu et al. 2019, the
# convention of the long-tailed literature): > 100, 20..100, < 20 images.
MANY_SHOT_MIN = 100
FEW_SHOT_MAX = 20


def imbalanced_counts(
    num_classes: int, max_per_class: int, imbalance_ratio: float, profile: str = "exp"
) -> list[int]:
    """Per-class training-set sizes of an imbalanced subset.

    Args:
      num_classes: C, the number of classes.
      max_per_class: N_max, the size of the largest class (class 0).
      imbalance_ratio: rho = N_max / N_min >= 1.
      profile: "exp": n_c = int(N_max * rho^(-c / (C - 1))) (long-tailed, the
        reference code's integer truncation); "step": the first half of the
        classes keep N_max, the rest int(N_max / rho); "none": N_max each.

    Returns:
      A list of C ints, non-increasing in the class index.

    Example: `imbalanced_counts(10, 5000, 100, "exp")` is
    [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50].
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown imbalance profile {profile!r}; use one of {PROFILES}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    if not imbalance_ratio >= 1:
        raise ValueError(f"imbalance_ratio is N_max / N_min and must be >= 1, got {imbalance_ratio}")
    if profile == "none" or num_classes == 1:
        return [int(max_per_class)] * num_classes
    if profile == "exp":
        exponents = np.arange(num_classes) / (num_classes - 1)
        # Python floats, as the reference code: int() truncates toward zero.
        return [int(max_per_class * imbalance_ratio ** (-e)) for e in exponents.tolist()]
    half = num_classes // 2
    return [int(max_per_class)] * half + [int(max_per_class / imbalance_ratio)] * (num_classes - half)


def class_temperatures(class_counts: Sequence[int], gamma: float) -> np.ndarray:
    """CDT temperatures a_c = (N_max / N_c)^gamma (paper eq. 3).

    Args:
      class_counts: N_c for each class, shape [C].
      gamma: >= 0; gamma = 0 gives a_c = 1 (plain ERM).

    Returns:
      float64 array [C]; a_c = 1 for the largest class, > 1 for the others when
      gamma > 0.
    """
    counts = _positive_counts(class_counts)
    if not gamma >= 0:  # Also refuses NaN.
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    return (counts.max() / counts) ** gamma


def reweighting_weights(class_counts: Sequence[int], gamma: float) -> np.ndarray:
    """The paper's re-weighting: w_c proportional to N_c^-gamma, normalised to average 1 over classes.

    w_c = C * N_c^-gamma / sum_k N_k^-gamma, so sum_c w_c = C. gamma = 0 gives all ones;
    gamma = 1 is inverse class frequency.

    Returns:
      float64 [C].
    """
    counts = _positive_counts(class_counts)
    if not gamma >= 0:
        raise ValueError(f"re-weighting gamma must be >= 0, got {gamma}")
    weights = counts**-gamma
    return weights * counts.size / weights.sum()


def effective_number_weights(class_counts: Sequence[int], beta: float = 0.9999) -> np.ndarray:
    """Class-balanced weights of Cui et al. (CVPR 2019) from the effective number of samples.

    E_c = (1 - beta^N_c) / (1 - beta);  w_c = C * (1 / E_c) / sum_k (1 / E_k), so sum_c w_c = C.
    beta = 0 gives all ones; beta -> 1 approaches inverse class frequency.

    Returns:
      float64 [C].
    """
    counts = _positive_counts(class_counts)
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return weights * counts.size / weights.sum()


def ldam_margins(class_counts: Sequence[int], max_margin: float = 0.5) -> np.ndarray:
    """LDAM margins of Cao et al. (NeurIPS 2019): m_c proportional to N_c^-1/4, the largest = max_margin.

    Returns:
      float64 [C].
    """
    counts = _positive_counts(class_counts)
    if not max_margin >= 0:
        raise ValueError(f"max_margin must be >= 0, got {max_margin}")
    margins = counts**-0.25
    return margins * (max_margin / margins.max())


def label_aware_smoothing(class_counts: Sequence[int], head: float, tail: float) -> np.ndarray:
    """Label-aware smoothing factors of Zhong et al. (MiSLAS, CVPR 2021), their "concave" shape.

    eps_c = tail + (head - tail) * sin(pi / 2 * (N_c - N_min) / (N_max - N_min)): the largest class
    gets `head`, the smallest `tail`. A class-c target is then (1 - eps_c) e_c + eps_c / C
    (`smoothed_targets`). Equal counts give every class `head`.

    Returns:
      float64 [C].
    """
    counts = _positive_counts(class_counts)
    for name, value in (("head", head), ("tail", tail)):
        if not 0 <= value < 1:
            raise ValueError(f"label-aware smoothing {name} must be in [0, 1), got {value}")
    spread = counts.max() - counts.min()
    position = np.ones_like(counts) if spread == 0 else (counts - counts.min()) / spread
    return tail + (head - tail) * np.sin(0.5 * np.pi * position)


def smoothed_targets(epsilon: Sequence[float]) -> np.ndarray:
    """Row c: the soft target of class c, (1 - eps_c) e_c + eps_c / C; float64 [C, C], rows sum to 1."""
    epsilon = np.asarray(epsilon, np.float64)
    num_classes = epsilon.size
    return np.eye(num_classes) * (1.0 - epsilon)[:, None] + (epsilon / num_classes)[:, None]


def log_prior(class_counts: Sequence[int]) -> np.ndarray:
    """log pi_c = log(N_c / sum_k N_k), the training label prior (logit adjustment), float64 [C]."""
    counts = _positive_counts(class_counts)
    return np.log(counts / counts.sum())


def shot_groups(class_counts: Sequence[int]) -> dict[str, np.ndarray]:
    """Boolean masks [C] of the many (> 100), medium (20..100) and few (< 20) shot classes."""
    counts = np.asarray(class_counts)
    return {
        "many": counts > MANY_SHOT_MIN,
        "medium": (counts >= FEW_SHOT_MAX) & (counts <= MANY_SHOT_MIN),
        "few": counts < FEW_SHOT_MAX,
    }


def tail_mask(class_counts: Sequence[int], threshold: int) -> np.ndarray:
    """Boolean mask [C] of the tail classes: fewer than `threshold` training images (ImbSAM's split;
    threshold 100 makes the tail the medium and few-shot groups of `shot_groups` less the classes of
    exactly 100)."""
    return np.asarray(class_counts) < threshold


def _positive_counts(class_counts: Sequence[int]) -> np.ndarray:
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"class_counts must be a non-empty list, got shape {counts.shape}")
    if (counts <= 0).any():
        empty = np.flatnonzero(counts <= 0).tolist()
        raise ValueError(f"every class needs at least one training image; classes {empty} have none")
    return counts


def sample_per_class(
    labels: Sequence[int], counts: Sequence[int], seed: int, stream: Sequence[int] = ()
) -> np.ndarray:
    """Sorted int64 positions (into labels) of counts[c] examples of each class c, without replacement.

    The one seeded per-class sampler of cdt_tf: class c is drawn with its own generator
    `np.random.default_rng([seed, c, *stream])`, so one class's draw does not depend on the others,
    and `stream` separates independent draws from one seed (the training subset uses (), the
    held-out split (1,), the statistics samples () on their own labels).

    Args:
      labels: int [N] class indices.
      counts: per class, how many to draw; at most the class's size (ValueError otherwise).
      seed: the run's seed.
      stream: extra seed words naming the draw.
    """
    labels = np.asarray(labels, np.int64)
    chosen = []
    for c, count in enumerate(counts):
        members = np.flatnonzero(labels == c)
        if count > len(members):
            raise ValueError(f"class {c} has {len(members)} examples, fewer than the {count} asked for")
        chosen.append(
            np.random.default_rng([seed, c, *stream]).choice(members, size=int(count), replace=False)
        )
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, np.int64)


def sample_up_to(
    labels: Sequence[int], per_class: int, num_classes: int, seed: int, stream: Sequence[int] = ()
) -> np.ndarray:
    """`sample_per_class` of min(per_class, N_c) examples of each class: all of a smaller class."""
    labels = np.asarray(labels, np.int64)
    counts = np.minimum(per_class, np.bincount(labels, minlength=num_classes))
    return sample_per_class(labels, counts, seed, stream)


def subset_hash(ids: Sequence[str]) -> str:
    """SHA-256 of the chosen example ids, one per line in order: the subset's fingerprint."""
    digest = hashlib.sha256()
    for example_id in ids:
        digest.update(str(example_id).encode())
        digest.update(b"\n")
    return digest.hexdigest()
