"""--val_per_class: the validation split (pool vs subset), its records, evaluation and tau selection."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from cdt_tf import input_pipeline, post_hoc, run_data
from cdt_tf.config import Config
from cdt_tf.errors import UserError
from cdt_tf.features import Features
from conftest import DIGITS_SMOKE

# ----------------------------------------------------------------------------- the rule, on a tiny source

# A pool of 10 + 8 + 6 images (classes 0, 1, 2), shuffled; the run's subset takes all 10 of class 0,
# 5 of class 1 (3 spare) and 2 of class 2 (4 spare).
POOL_LABELS = np.random.default_rng(5).permutation(np.repeat([0, 1, 2], [10, 8, 6]))
SUBSET = input_pipeline.select_subset(POOL_LABELS, [10, 5, 2], seed=0)


def test_classes_with_enough_spare_images_take_them_from_the_pool():
    train, validation, from_pool, from_subset = run_data.split_validation(POOL_LABELS, SUBSET, 3, 0, 3)
    assert from_pool == [0, 3, 3] and from_subset == [3, 0, 0]
    assert np.bincount(POOL_LABELS[validation], minlength=3).tolist() == [3, 3, 3]
    assert np.bincount(POOL_LABELS[train], minlength=3).tolist() == [7, 5, 2]  # Only class 0 gave some.
    assert not set(validation) & set(train)
    assert set(validation[POOL_LABELS[validation] == 0]) <= set(SUBSET)  # Class 0's came out of its subset,
    assert not set(validation[POOL_LABELS[validation] > 0]) & set(SUBSET)  # the others' from outside it.
    assert set(train) <= set(SUBSET) and (np.diff(validation) > 0).all()


def test_a_class_short_of_spare_images_gives_all_of_them_from_its_subset():
    _, validation, from_pool, from_subset = run_data.split_validation(POOL_LABELS, SUBSET, 4, 0, 3)
    assert from_pool == [0, 0, 4] and from_subset == [4, 4, 0]  # Class 1 has 3 spare: not enough for 4.
    assert set(validation[POOL_LABELS[validation] == 1]) <= set(SUBSET)


def test_split_is_seeded():
    first = run_data.split_validation(POOL_LABELS, SUBSET, 2, 0, 3)
    again = run_data.split_validation(POOL_LABELS, SUBSET, 2, 0, 3)
    other = run_data.split_validation(POOL_LABELS, SUBSET, 2, 1, 3)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


def test_a_subset_left_empty_is_refused():
    with pytest.raises(UserError, match="--val_per_class=5.*class 1"):
        run_data.split_validation(POOL_LABELS, SUBSET, 5, 0, 3)  # Class 1: 3 spare, and 5 in its subset.


# ----------------------------------------------------------------------------- a run's data (digits)


def _digits_config(**overrides):
    return Config(
        dataset="digits", model_dir="/tmp/run", imbalance="exp", imbalance_ratio=10, **overrides
    ).validate()


@pytest.fixture(scope="module")
def digits_data():
    return run_data.load(_digits_config(val_per_class=5))


def test_validation_is_disjoint_from_training_and_test(digits_data):
    data = digits_data
    validation, train, test = (set(data.ids(name).tolist()) for name in ("validation", "train", "test"))
    assert len(validation) == 5 * 10
    assert not validation & train and not validation & test
    assert np.bincount(data.labels("validation"), minlength=10).tolist() == [5] * 10
    # Digits' class 0 has 4 images outside its 124-image subset: 5 come out of it; the others use spares.
    assert data.validation_from == {"pool": [0] + [5] * 9, "subset": [5] + [0] * 9}
    without = run_data.load(_digits_config())
    assert data.class_counts == [without.class_counts[0] - 5] + without.class_counts[1:]
    assert set(train) == set(without.ids("train").tolist()) - validation


def test_validation_is_reproducible(digits_data):
    again = run_data.load(_digits_config(val_per_class=5))
    for name in ("train", "validation"):
        np.testing.assert_array_equal(again.indices[name], digits_data.indices[name])
    other = run_data.load(_digits_config(val_per_class=5, seed=1))
    assert not np.array_equal(other.indices["validation"], digits_data.indices["validation"])


def test_subset_json_records_the_validation_split(digits_data):
    record = digits_data.subset_record()
    assert record["validation_hash"] == input_pipeline.subset_hash(digits_data.ids("validation"))
    assert record["validation_ids"] == digits_data.ids("validation").tolist()
    assert record["validation_from"] == digits_data.validation_from
    assert record["holdout_hash"] is None and record["hash"] == input_pipeline.subset_hash(
        digits_data.ids("train")
    )
    plain = run_data.load(_digits_config()).subset_record()
    assert plain["validation_hash"] is None and plain["validation_from"] is None


def test_eval_dataset_of_the_validation_split(digits_data):
    batches = list(digits_data.eval_dataset("validation", batch_size=16))
    labels = np.concatenate([b[1].numpy() for b in batches])
    np.testing.assert_array_equal(labels, digits_data.labels("validation"))
    np.testing.assert_array_equal(
        np.concatenate([b[0].numpy() for b in batches]), digits_data.images("validation")
    )


def test_val_per_class_and_holdout_per_class_are_exclusive():
    base = Config(dataset="digits", model_dir="/tmp/run")
    with pytest.raises(UserError, match=r"\-\-val_per_class and \-\-holdout_per_class"):
        dataclasses.replace(base, val_per_class=3, holdout_per_class=3).validate()
    with pytest.raises(UserError, match=r"\-\-val_per_class"):
        dataclasses.replace(base, val_per_class=-1).validate()


def test_tau_selected_on_validation_is_labelled_so():
    rng = np.random.default_rng(0)
    counts = [50, 10, 2]

    def split(n):
        labels = np.repeat(np.arange(3), n)
        features = np.eye(3)[labels] + rng.normal(scale=0.8, size=(len(labels), 3))
        return Features(features, features + np.array([1.0, 0.0, -1.0]), labels)

    section = post_hoc.evaluate_post_hoc(
        counts, np.eye(3), "linear", split(5), split(5), split(4), holdout_name="validation"
    )
    for method in ("nc_tau", "w_norm", "logit_adjustment"):
        assert section[method]["selected_on"] == "validation"
        assert section[method]["sweep"]["split"] == "validation"


# ----------------------------------------------------------------------------- end to end


def test_cli_run_with_every_lever(cli, tmp_path):
    """A digits smoke run: validation split, RandAugment, Cutout, MixUp + CutMix (epoch 1 only) and a
    cosine schedule."""
    model_dir = tmp_path / "run"
    result = cli(
        *DIGITS_SMOKE,
        "--val_per_class=5",
        "--randaugment_magnitude=0.3",
        "--cutout=4",
        "--mixup_alpha=0.2",
        "--cutmix_alpha=1.0",
        "--mix_prob=0.8",
        "--mix_until_epoch=1",
        "--lr_schedule=cosine",
        "--eval_per_class=2",
        f"--model_dir={model_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Validation top-1 (50 images)" in result.stdout
    results = json.load(open(model_dir / "results.json"))
    validation = results["validation"]
    assert validation["num_images"] == 50 and len(validation["per_class_accuracy"]) == 10
    assert 0 <= validation["top1"] <= 1 and set(validation["many_medium_few"]) == {"many", "medium", "few"}
    assert validation["from"] == {"pool": [0] + [5] * 9, "subset": [5] + [0] * 9}
    assert {entry["selected_on"] for entry in results["post_hoc"].values()} == {
        "validation",
        None,
    }  # ncm: None.
    subset = json.load(open(model_dir / "subset.json"))
    assert len(subset["validation_ids"]) == 50 and not set(subset["validation_ids"]) & set(subset["ids"])
    assert subset["validation_hash"] and subset["validation_from"] == validation["from"]
    records = [json.loads(line) for line in open(model_dir / "metrics.jsonl")]
    assert len(records) == 2 and all(0 <= r["accuracy"] <= 1 for r in records)
    assert [r["mix_prob"] for r in records] == [pytest.approx(0.8), 0.0]  # Unmixed after epoch 1.
    config = json.load(open(model_dir / "config.json"))
    assert config["lr_schedule"] == "cosine" and config["mixup_alpha"] == 0.2
