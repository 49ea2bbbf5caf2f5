"""End-to-end tests of `python -m cdt_tf.main`: real runs into temp dirs, and every bad-input case."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cdt_tf import imbalanced_counts
from conftest import CIFAR10_JPEG, DIGITS_SMOKE


def _one_line_error(result, *fragments):
    """The CLI failed with exit 2 and one line containing every fragment, and no traceback (flag errors
    included: the same voice as every other bad input)."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("cdt_tf: error:")]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], (fragment, result.stderr)


def _write_png(path, value, size=8, channels=3):
    import tensorflow as tf

    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.full((size, size, channels), value, np.uint8)
    tf.io.write_file(path, tf.io.encode_png(image))


def _image_folder(root, classes=("a", "b", "c"), per_class=(6, 4, 3), test_per_class=2):
    for c, (name, count) in enumerate(zip(classes, per_class)):
        for i in range(count):
            _write_png(os.path.join(root, "train", name, f"{i}.png"), 40 * c + i)
        for i in range(test_per_class):
            _write_png(os.path.join(root, "test", name, f"{i}.png"), 40 * c + i)
    return str(root)


def test_digits_run_writes_the_run_directory(cli, tmp_path):
    model_dir = str(tmp_path / "run")
    result = cli(*DIGITS_SMOKE, f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr
    assert "top-1" in result.stdout and "Results:" in result.stdout

    files = set(os.listdir(model_dir))
    assert {
        "config.json",
        "results.json",
        "subset.json",
        "model.keras",
        "metrics.jsonl",
        "logs",
        "checkpoints",
    } <= files
    assert os.listdir(os.path.join(model_dir, "checkpoints")), "no checkpoint written"
    for split in ("train", "test"):
        events = os.listdir(os.path.join(model_dir, "logs", split))
        assert any(e.startswith("events.out.tfevents") for e in events), split

    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    expected_counts = [124, 96, 74, 57, 44, 34, 26, 20, 16, 12]  # imbalanced_counts(10, 124, 10)
    assert results["class_counts"] == expected_counts
    assert len(results["per_class_accuracy"]) == 10
    assert 0.0 <= results["top1"] <= 1.0 and 0.0 <= results["top5"] <= 1.0
    assert set(results["many_medium_few"]) == {"many", "medium", "few"}
    per_class = results["per_class_accuracy"]
    groups = results["many_medium_few"]
    assert groups["many"] == pytest.approx(per_class[0])  # Only class 0 has > 100 images.
    assert groups["few"] == pytest.approx(np.mean(per_class[8:]))  # 16 and 12 images.
    with open(os.path.join(model_dir, "subset.json")) as f:
        subset = json.load(f)
    assert subset["hash"] == results["subset_hash"] and len(subset["ids"]) == sum(expected_counts)
    with open(os.path.join(model_dir, "config.json")) as f:
        assert json.load(f)["gamma"] == 0.3
    epochs = [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert {"loss", "accuracy", "learning_rate", "gamma", "test_top1"} <= set(epochs[-1])
    assert epochs[0]["learning_rate"] == pytest.approx(0.1) and epochs[1]["learning_rate"] == pytest.approx(
        0.01
    )

    # The same command again finds the finished run and prints its results without training.
    again = cli(*DIGITS_SMOKE, f"--model_dir={model_dir}")
    assert again.returncode == 0, again.stderr
    assert "Epoch" not in again.stdout and "top-1" in again.stdout

    # Another config in the same directory is refused, and the finished results survive.
    other = cli(*DIGITS_SMOKE, "--gamma=0.5", f"--model_dir={model_dir}")
    _one_line_error(other, "holds a run with another config", "gamma")
    with open(os.path.join(model_dir, "results.json")) as f:
        assert json.load(f) == results


def test_same_seed_same_subset_other_seed_other_subset(cli, tmp_path):
    hashes = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        result = cli(*DIGITS_SMOKE, "--epochs=1", f"--seed={seed}", f"--model_dir={tmp_path / name}")
        assert result.returncode == 0, result.stderr
        with open(tmp_path / name / "results.json") as f:
            hashes.append(json.load(f)["subset_hash"])
    assert hashes[0] == hashes[1] != hashes[2]


@pytest.mark.skipif(not os.path.isdir(CIFAR10_JPEG), reason="needs ../shared/data/cifar10-jpeg")
def test_cifar10_image_folder_long_tailed_run(cli, tmp_path):
    model_dir = str(tmp_path / "cifar")
    result = cli(
        "--dataset=cifar10",
        f"--data_dir={CIFAR10_JPEG}",
        "--imbalance=exp",
        "--imbalance_ratio=10",
        "--max_per_class=30",
        "--model=resnet20",
        "--loss=cdt",
        "--gamma=0.3",
        "--epochs=1",
        "--batch_size=16",
        "--warmup_epochs=0",
        f"--model_dir={model_dir}",
    )
    assert result.returncode == 0, result.stderr
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    assert results["class_counts"] == imbalanced_counts(10, 30, 10, "exp")
    assert results["class_names"][0] == "airplane" and results["class_names"][-1] == "truck"
    assert results["num_test_images"] == 10000
    assert results["many_medium_few"]["many"] is None and results["many_medium_few"]["few"] is not None


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (("--dataset=imagenet",), ("imagenet",)),
        (("--dataset=digits", "--loss=hinge"), ("hinge",)),
        (("--dataset=digits", "--imbalance_ratio=0.5"), ("--imbalance_ratio", ">= 1")),
        (("--dataset=digits", "--gamma=-0.1"), ("--gamma", ">= 0")),
        (("--dataset=image_folder",), ("--data_dir",)),
        (("--dataset=image_folder", "--data_dir=/nonexistent/data"), ("/nonexistent/data", "does not exist")),
        (
            ("--dataset=digits", "--imbalance=exp", "--imbalance_ratio=1000"),
            ("no image", "--imbalance_ratio"),
        ),
    ],
)
def test_bad_flags_give_one_line_errors(cli, tmp_path, flags, fragments):
    _one_line_error(cli(*flags, f"--model_dir={tmp_path / 'run'}"), *fragments)


def test_empty_data_dir(cli, tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "test").mkdir()
    result = cli(
        "--dataset=image_folder", f"--data_dir={tmp_path / 'data'}", f"--model_dir={tmp_path / 'run'}"
    )
    _one_line_error(result, "no class folders")


def test_empty_class_folder(cli, tmp_path):
    root = _image_folder(tmp_path / "data")
    os.makedirs(os.path.join(root, "train", "d"))
    os.makedirs(os.path.join(root, "test", "d"))
    result = cli("--dataset=image_folder", f"--data_dir={root}", f"--model_dir={tmp_path / 'run'}")
    _one_line_error(result, os.path.join("train", "d"), "no images")


def test_unreadable_image_is_named(cli, tmp_path):
    root = _image_folder(tmp_path / "data")
    bad = os.path.join(root, "train", "b", "broken.png")
    with open(bad, "wb") as f:
        f.write(b"this is not an image")
    result = cli(
        "--dataset=image_folder",
        f"--data_dir={root}",
        "--batch_size=4",
        "--epochs=1",
        f"--model_dir={tmp_path / 'run'}",
    )
    _one_line_error(result, "broken.png")


def test_image_folder_run_without_subsampling(cli, tmp_path):
    root = _image_folder(tmp_path / "data")
    model_dir = tmp_path / "run"
    result = cli(
        "--dataset=image_folder",
        f"--data_dir={root}",
        "--model=resnet20",
        "--batch_size=4",
        "--epochs=1",
        "--warmup_epochs=0",
        f"--model_dir={model_dir}",
    )
    assert result.returncode == 0, result.stderr
    with open(model_dir / "results.json") as f:
        results = json.load(f)
    assert results["class_counts"] == [6, 4, 3] and results["class_names"] == ["a", "b", "c"]
    assert results["top5"] is None  # Only 3 classes.


def test_deterministic_runs_give_identical_weights(cli, tmp_path):
    import keras

    from cdt_tf import models  # noqa: F401  (registers the custom layers)

    weights = []
    for name in ("a", "b"):
        result = cli(*DIGITS_SMOKE, "--deterministic", f"--model_dir={tmp_path / name}")
        assert result.returncode == 0, result.stderr
        model = keras.saving.load_model(str(tmp_path / name / "model.keras"), compile=False)
        weights.append(model.get_weights())
    assert len(weights[0]) == len(weights[1])
    for first, second in zip(weights[0], weights[1], strict=True):
        np.testing.assert_array_equal(first, second)
