"""train_and_evaluate in-process: a real training step end to end on mocked TFDS CIFAR-10."""

from __future__ import annotations

import json
import os

import pytest
from datasets_test import _write_mock_metadata

from cdt_tf.config import Config


def test_train_and_evaluate_on_mocked_tfds_cifar10(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from cdt_tf import train

    metadata_dir = str(tmp_path / "tfds")
    _write_mock_metadata(metadata_dir, 200, 200)
    config = Config(
        dataset="cifar10",
        model_dir=str(tmp_path / "run"),
        model="resnet20",
        loss="cdt",
        gamma=0.3,
        epochs=1,
        batch_size=8,
        steps_per_epoch=2,
        warmup_epochs=0,
        decay_epochs=(),
        decay_multipliers=(),
    ).validate()
    with tfds.testing.mock_data(num_examples=200, data_dir=metadata_dir):
        results = train.train_and_evaluate(config)
    # mock_data draws labels at random (200 examples: no class is empty in practice); with no
    # --imbalance every class keeps N_max = the smallest class size.
    assert len(set(results["class_counts"])) == 1 and sum(results["class_counts"]) > 0
    assert len(results["per_class_accuracy"]) == 10 and results["num_test_images"] == 200
    with open(os.path.join(config.model_dir, "results.json")) as f:
        assert json.load(f)["subset_hash"] == results["subset_hash"]
    assert os.path.exists(os.path.join(config.model_dir, "model.keras"))


def test_the_end_of_training_makes_one_pass_over_the_test_split(tmp_path, monkeypatch):
    from cdt_tf import features, train

    passes = []
    extract = features.extract

    def counting_extract(model, data, labels, *args, **kwargs):
        passes.append(len(labels))
        return extract(model, data, labels, *args, **kwargs)

    monkeypatch.setattr(features, "extract", counting_extract)
    config = Config(
        dataset="digits",
        model_dir=str(tmp_path / "run"),
        imbalance="exp",
        imbalance_ratio=10,
        loss="cdt",
        gamma=0.3,
        epochs=2,
        batch_size=32,
        steps_per_epoch=2,
        eval_every=5,  # Fires only after the last epoch.
        warmup_epochs=0,
        decay_epochs=(),
        decay_multipliers=(),
    ).validate()
    results = train.train_and_evaluate(config)
    test_size, train_size = results["num_test_images"], results["num_train_images"]
    # One pass over the test split (the per-class evaluation after the last epoch, reused for the
    # results and post-hoc), one over the training subset (post-hoc NCM centres).
    assert sorted(passes) == sorted([test_size, train_size])
