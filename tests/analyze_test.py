"""End-to-end tests of `python -m cdt_tf.analyze`, the --stats_every callback and the plot tools.

One tiny digits run (2 epochs of 2 steps) is trained once for the whole file.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys

import pytest

from conftest import DIGITS_SMOKE, run_cli, run_command, run_module

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("accuracy.png", "classifier_norms.png", "feature_deviation.png", "confusion.png", "tsne.png")
STATISTICS = ("train_accuracy", "test_accuracy", "classifier_norm", "feature_deviation")


def _run(*command: str, timeout: int = 300):
    return run_command(sys.executable, *command, timeout=timeout)


def _analyze(*args: str):
    return run_module("cdt_tf.analyze", *args)


def _one_line_error(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("cdt_tf: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, result.stderr)


def _assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 5000, (path, len(data))  # A plot, not an empty canvas.


def _load(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("analyze") / "run")
    result = run_cli(*DIGITS_SMOKE, "--stats_every=1", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr
    return model_dir


@pytest.fixture(scope="module")
def analyzed_run(trained_run):
    result = _analyze(f"--model_dir={trained_run}", "--num_rounds=50", "--tsne_per_class=5")
    assert result.returncode == 0, result.stderr
    assert "Extracting features" in result.stdout and "nearest centre" in result.stdout
    return trained_run, result


def test_stats_every_logs_the_fig7_statistics(trained_run):
    from tensorboard.backend.event_processing import event_accumulator

    stats_dir = os.path.join(trained_run, "logs", "stats")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(stats_dir))
    events = event_accumulator.EventAccumulator(stats_dir, size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    for statistic in STATISTICS:
        class_tags = sorted(t for t in tags if t.startswith(f"{statistic}/"))
        assert len(class_tags) == 10, (statistic, class_tags)
        assert [e.step for e in events.Tensors(class_tags[0])] == [0, 1]  # --stats_every=1, 2 epochs.
    assert "custom_scalars__config__" in tags  # The Fig. 7 layout for TensorBoard's Custom Scalars.


def test_analyze_writes_the_figures_and_one_json_entry_per_class(analyzed_run):
    model_dir, _ = analyzed_run
    out_dir = os.path.join(model_dir, "analysis")
    for name in FIGURES:
        _assert_png(os.path.join(out_dir, name))
    content = _load(os.path.join(out_dir, "analysis.json"))
    results = _load(os.path.join(model_dir, "results.json"))
    assert sorted(content["figures"]) == sorted(FIGURES)
    assert content["config"]["loss"] == "cdt" and content["config"]["gamma"] == 0.3
    assert content["feature_deviation"] == {
        "num_rounds": 50,
        "sample_size": 12,  # The smallest class of imbalanced_counts(10, 124, 10).
        "features": "l2-normalised penultimate features",
    }
    classes = content["classes"]
    assert [c["class"] for c in classes] == list(range(10))
    assert [c["train_count"] for c in classes] == results["class_counts"]
    for entry in classes:
        numbers = {k: v for k, v in entry.items() if k not in ("class", "name")}
        assert all(isinstance(v, int | float) and math.isfinite(v) for v in numbers.values()), entry
        assert entry["test_count"] == 50 and entry["classifier_norm"] > 0 and entry["feature_deviation"] > 0
        assert 0.0 <= entry["train_accuracy"] <= 1.0
    # model.keras reproduces the trainer's own final test evaluation.
    assert [c["test_accuracy"] for c in classes] == pytest.approx(results["per_class_accuracy"])
    assert content["test"]["top1"] == pytest.approx(results["top1"])
    for split in ("train", "test"):
        decision_values, predictions = content[split]["decision_values"], content[split]["predictions"]
        assert len(decision_values) == len(predictions) == 10 and all(len(row) == 10 for row in predictions)
        assert all(sum(row) == pytest.approx(1.0) for row in predictions)
        accuracy_key = f"{split}_accuracy"
        assert [predictions[c][c] for c in range(10)] == pytest.approx([c[accuracy_key] for c in classes])
    for centers in ("train_means", "test_means"):
        assert 0.0 <= content["nearest_center"][centers]["top1"] <= 1.0
        assert len(content["nearest_center"][centers]["per_class_accuracy"]) == 10


@pytest.mark.parametrize("case", ["missing", "empty", "unfinished", "other_data"])
def test_analyze_refuses_a_bad_model_dir(trained_run, tmp_path, case):
    model_dir = tmp_path / "run"
    if case == "missing":
        fragments = ("does not exist",)
    elif case == "empty":
        model_dir.mkdir()
        fragments = ("no config.json",)
    elif case == "unfinished":
        model_dir.mkdir()
        shutil.copy(os.path.join(trained_run, "config.json"), model_dir)
        fragments = ("unfinished run", "model.keras")
    else:  # The data no longer gives the subset the run was trained on.
        shutil.copytree(
            trained_run, model_dir, ignore=shutil.ignore_patterns("analysis", "logs", "checkpoints")
        )
        subset = _load(model_dir / "subset.json")
        with open(model_dir / "subset.json", "w") as f:
            json.dump({**subset, "hash": "0" * 64}, f)
        fragments = ("differs from its subset.json",)
    _one_line_error(_analyze(f"--model_dir={model_dir}"), str(model_dir), *fragments)


def test_plot_tools_on_two_runs(analyzed_run, tmp_path):
    model_dir, _ = analyzed_run
    # A copy without analysis/ relabelled as a gamma = 0.5 run: the tools only read gamma from
    # config.json and results.json, and the sweep tool must compute its training accuracy itself.
    copy = str(tmp_path / "copy")
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("analysis", "logs", "checkpoints"))
    for name in ("config.json", "results.json"):
        content = _load(os.path.join(copy, name))
        if name == "config.json":
            content["gamma"] = 0.5
        else:
            content["config"]["gamma"] = 0.5
        with open(os.path.join(copy, name), "w") as f:
            json.dump(content, f)

    out = str(tmp_path / "per_class.png")
    result = _run("tools/plot_per_class.py", f"--runs={model_dir},{copy}", f"--out={out}")
    assert result.returncode == 0, result.stderr
    _assert_png(out)

    out = str(tmp_path / "gamma.png")
    result = _run("tools/plot_gamma_sweep.py", f"--runs={model_dir},{copy}", f"--out={out}")
    assert result.returncode == 0, result.stderr
    _assert_png(out)
    assert "computing the training accuracy" in result.stdout
    # Same model: the accuracy computed from model.keras equals the one read from analysis.json.
    train = dict(re.findall(r"γ=([\d.]+) \(1 run\): train ([\d.]+)%", result.stdout))
    assert set(train) == {"0.3", "0.5"} and train["0.3"] == train["0.5"], result.stdout

    result = _run("tools/plot_per_class.py", f"--runs={tmp_path / 'nothing'}", f"--out={out}")
    assert result.returncode == 2 and "results.json" in result.stderr
