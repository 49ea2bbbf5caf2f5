"""Test-set metrics from decision values: top-1/top-5, per class, many/medium/few shot."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cdt_tf import class_stats


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class [C] (NaN for a class with no test example)."""
    correct = np.bincount(labels, weights=(predictions == labels), minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def summarize(logits: np.ndarray, labels: np.ndarray, class_counts: Sequence[int]) -> dict:
    """Metrics of one evaluation.

    Args:
      logits: decision values [N, C]; the prediction is their argmax.
      labels: int [N].
      class_counts: training images per class [C], for the many/medium/few groups.

    Returns:
      dict with top1, top5 (None when C <= 5), per_class_accuracy [C], and
      many_medium_few {many, medium, few}: the mean per-class accuracy of the
      classes with > 100, 20..100 and < 20 training images (None for an empty group).
      Accuracies are fractions in [0, 1].
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels).astype(np.int64)
    num_classes = logits.shape[1]
    predictions = logits.argmax(1)
    per_class = per_class_accuracy(predictions, labels, num_classes)
    top5 = None
    if num_classes > 5:
        top5_sets = np.argpartition(-logits, 5, axis=1)[:, :5]
        top5 = float((top5_sets == labels[:, None]).any(1).mean())
    return {
        "top1": float((predictions == labels).mean()),
        "top5": top5,
        "per_class_accuracy": [None if np.isnan(a) else float(a) for a in per_class],
        "many_medium_few": shot_means(per_class, class_counts),
    }


def shot_means(per_class: Sequence[float], class_counts: Sequence[int]) -> dict:
    """{many, medium, few}: the mean per-class accuracy of the classes with > 100, 20..100 and < 20
    training images (NaN entries left out; None for an empty group)."""
    per_class = np.asarray(per_class, dtype=np.float64)
    groups = {}
    for group, mask in class_stats.shot_groups(class_counts).items():
        values = per_class[mask]
        values = values[~np.isnan(values)]
        groups[group] = float(values.mean()) if values.size else None
    return groups


MAX_TABLE_CLASSES = 100


def format_table(summary: dict, class_names: Sequence[str], class_counts: Sequence[int]) -> str:
    """A plain-text per-class table followed by the overall numbers.

    With more than MAX_TABLE_CLASSES classes (iNaturalist: 8,142) the per-class rows are left out:
    results.json and TensorBoard hold them.
    """
    width = max(5, *(len(n) for n in class_names))
    lines = [f"{'class':<{width}}  {'train':>6}  {'test acc':>8}"]
    rows = zip(class_names, class_counts, summary["per_class_accuracy"], strict=True)
    if len(class_names) > MAX_TABLE_CLASSES:
        lines = [f"{len(class_names)} classes: per-class accuracy in results.json and TensorBoard"]
        rows = []
    for name, count, accuracy in rows:
        shown = "   n/a" if accuracy is None else f"{100 * accuracy:7.2f}%"
        lines.append(f"{name:<{width}}  {count:>6}  {shown:>8}")
    groups = summary["many_medium_few"]
    group_text = ", ".join(f"{g} {'n/a' if v is None else f'{100 * v:.2f}%'}" for g, v in groups.items())
    top5 = summary["top5"]
    lines.append(
        f"top-1 {100 * summary['top1']:.2f}%"
        + ("" if top5 is None else f", top-5 {100 * top5:.2f}%")
        + f" | {group_text}"
    )
    return "\n".join(lines)
