"""Tests of the test-set metrics on hand-made logits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cdt_tf.evaluate import format_table, per_class_accuracy, summarize


def _one_hot_logits(predictions, num_classes):
    logits = np.zeros((len(predictions), num_classes), np.float32)
    logits[np.arange(len(predictions)), predictions] = 5.0
    return logits


# 4 classes: many (200), medium (50), few (10, 5).
COUNTS_4 = [200, 50, 10, 5]
LABELS_4 = np.array([0, 0, 1, 1, 2, 3])
PREDICTIONS_4 = np.array([0, 1, 1, 1, 0, 3])


def test_summarize_four_classes():
    summary = summarize(_one_hot_logits(PREDICTIONS_4, 4), LABELS_4, COUNTS_4)
    assert summary["top1"] == pytest.approx(4 / 6)
    assert summary["top5"] is None  # C <= 5
    assert summary["per_class_accuracy"] == [0.5, 1.0, 0.0, 1.0]
    assert summary["many_medium_few"] == {"many": 0.5, "medium": 1.0, "few": 0.5}
    assert all(type(v) is float for v in summary["per_class_accuracy"])
    assert type(summary["top1"]) is float


def test_summarize_top5_none_for_five_classes():
    logits = np.eye(5, dtype=np.float32)
    summary = summarize(logits, np.arange(5), [100] * 5)
    assert summary["top5"] is None
    assert summary["top1"] == 1.0


def test_summarize_top5_with_seven_classes():
    # Each row ranks the classes by its logits; the label's rank decides top-5 membership.
    logits = np.array(
        [
            [7, 6, 5, 4, 3, 2, 1],  # label 0: rank 1 (top-1 and top-5)
            [7, 6, 5, 4, 3, 2, 1],  # label 4: rank 5 (top-5 only)
            [7, 6, 5, 4, 3, 2, 1],  # label 5: rank 6 (neither)
            [1, 2, 3, 4, 5, 6, 7],  # label 6: rank 1
            [1, 2, 3, 4, 5, 6, 7],  # label 0: rank 7 (neither)
            [1, 2, 3, 4, 5, 6, 7],  # label 2: rank 5 (top-5 only)
        ],
        np.float32,
    )
    labels = np.array([0, 4, 5, 6, 0, 2])
    summary = summarize(logits, labels, [500, 300, 150, 80, 40, 15, 5])
    assert summary["top1"] == pytest.approx(2 / 6)
    assert summary["top5"] == pytest.approx(4 / 6)
    # Per class: 0 -> 1/2, 1 -> no test example, 2 -> 0, 3 -> none, 4 -> 0, 5 -> 0, 6 -> 1.
    assert summary["per_class_accuracy"] == [0.5, None, 0.0, None, 0.0, 0.0, 1.0]
    # many (>100): classes 0, 1, 2 -> mean(0.5, 0.0); medium: 3, 4 -> 0.0; few: 5, 6 -> 0.5.
    assert summary["many_medium_few"] == {"many": 0.25, "medium": 0.0, "few": 0.5}


def test_summarize_top5_six_classes_boundary():
    # C = 6: the smallest logit is the only one outside the top five.
    logits = np.tile(np.array([[6, 5, 4, 3, 2, 1]], np.float32), (6, 1))
    summary = summarize(logits, np.arange(6), [100] * 6)
    assert summary["top1"] == pytest.approx(1 / 6)
    assert summary["top5"] == pytest.approx(5 / 6)


def test_summarize_empty_group_is_none():
    summary = summarize(_one_hot_logits(np.array([0, 1, 1]), 3), np.array([0, 1, 2]), [500, 300, 200])
    assert summary["many_medium_few"]["medium"] is None
    assert summary["many_medium_few"]["few"] is None
    assert summary["many_medium_few"]["many"] == pytest.approx(2 / 3)


def test_summarize_group_with_only_untested_classes_is_none():
    # The few-shot class has no test example, so its group has no accuracy.
    summary = summarize(_one_hot_logits(np.array([0, 1]), 3), np.array([0, 1]), [500, 50, 5])
    assert summary["per_class_accuracy"] == [1.0, 1.0, None]
    assert summary["many_medium_few"] == {"many": 1.0, "medium": 1.0, "few": None}


def test_per_class_accuracy_nan_for_missing_class():
    got = per_class_accuracy(np.array([0, 0, 2, 1]), np.array([0, 1, 2, 2]), 4)
    assert got.shape == (4,)
    assert got[0] == 1.0
    assert got[1] == 0.0
    assert got[2] == 0.5
    assert math.isnan(got[3])


def test_format_table():
    summary = summarize(_one_hot_logits(PREDICTIONS_4, 4), LABELS_4, COUNTS_4)
    names = ["airplane", "cat", "dog", "x"]
    table = format_table(summary, names, COUNTS_4)
    lines = table.splitlines()
    assert len(lines) == 1 + 4 + 1
    assert lines[0].split() == ["class", "train", "test", "acc"]
    for name, count, line in zip(names, COUNTS_4, lines[1:5]):
        assert line.startswith(name)
        assert str(count) in line
    assert "50.00%" in lines[1]
    assert "100.00%" in lines[2]
    assert "0.00%" in lines[3]
    assert "top-1 66.67%" in lines[-1]
    assert "top-5" not in table
    assert "many 50.00%" in lines[-1]
    assert "medium 100.00%" in lines[-1]
    assert "few 50.00%" in lines[-1]


def test_format_table_top5_and_missing_values():
    logits = np.tile(np.array([[6, 5, 4, 3, 2, 1]], np.float32), (5, 1))
    summary = summarize(logits, np.arange(5), [500] * 6)
    table = format_table(summary, [f"class_{i}" for i in range(6)], [500] * 6)
    assert "top-1 20.00%, top-5 100.00%" in table
    assert "class_5" in table
    assert "n/a" in table.splitlines()[6]  # class_5 has no test example
    assert "medium n/a" in table and "few n/a" in table


def test_format_table_leaves_out_thousands_of_rows():
    labels = np.arange(1000) % 200
    summary = summarize(np.eye(200)[labels], labels, [10] * 200)
    table = format_table(summary, [f"c{i}" for i in range(200)], [10] * 200)
    assert len(table.splitlines()) == 2 and "200 classes" in table and "top-1 100.00%" in table
