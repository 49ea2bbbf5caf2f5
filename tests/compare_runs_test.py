"""tools/compare_runs.py: one row per run and classifier, seeds averaged by label, one-line errors."""

from __future__ import annotations

import json
import os
import sys

from conftest import run_command

TOOL = os.path.join("tools", "compare_runs.py")


def _run_dir(root, name: str, seed: int, argmax: float, crt_las: float | None) -> str:
    run_dir = os.path.join(root, name)
    os.makedirs(run_dir)
    post_hoc = {}
    if crt_las is not None:
        post_hoc["crt_las"] = {
            "top1": crt_las,
            "per_class_accuracy": [crt_las] * 2,
            "many_medium_few": {"many": crt_las + 0.01, "medium": crt_las - 0.01, "few": None},
            "seconds": 95.4,
        }
    results = {
        "top1": argmax,
        "per_class_accuracy": [argmax] * 2,
        "many_medium_few": {"many": 0.9, "medium": 0.5, "few": None},
        "post_hoc": post_hoc,
        "config": {"seed": seed},
        "train_seconds": 60.0,  # This start's only; metrics.jsonl has every start's epochs.
    }
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(results, f)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for epoch, started in ((1, "a"), (2, "a"), (2, "b"), (3, "b")):  # Epoch 2 logged twice.
            f.write(json.dumps({"epoch": epoch, "seconds": 600.0, "started": started}) + "\n")
    return run_dir


def _compare(*args: str):
    return run_command(sys.executable, TOOL, *args)


def test_rows_per_run_and_the_mean_of_each_recipe(tmp_path):
    cdt = _run_dir(tmp_path, "cdt", 0, 0.7326, None)
    plus0 = _run_dir(tmp_path, "plus", 0, 0.60, 0.7500)
    plus1 = _run_dir(tmp_path, "plus_seed1", 1, 0.61, 0.7600)
    result = _compare(
        f"--runs={cdt},{plus0},{plus1}", "--classifiers=argmax,crt_las,crt_las", "--labels=CDT,CDT+,CDT+"
    )
    assert result.returncode == 0, result.stderr
    # Training minutes over the three logged epochs (30), the second stage's own seconds.
    assert (
        f"| CDT+ | `{plus1}` | crt_las | 1 | — | **76.00** | 77.00 | 75.00 | — | 30 | 95 |" in result.stdout
    )
    assert f"| CDT | `{cdt}` | argmax | 0 | — | **73.26** | 90.00 | 50.00 | — | 30 | — |" in result.stdout
    assert "CDT+: mean top-1 75.50 over 2 runs (75.00–76.00)" in result.stdout
    assert "CDT: mean" not in result.stdout  # One run: no mean line.


def test_bad_input_is_one_line(tmp_path):
    cdt = _run_dir(tmp_path, "cdt", 0, 0.7326, None)
    result = _compare(f"--runs={cdt}", "--classifiers=crt_las")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (
        f"cdt_tf: error: {cdt} has no post_hoc.crt_las with per-class accuracy; it has: argmax"
        in result.stderr
    )
    result = _compare(f"--runs={cdt},{cdt}", "--classifiers=argmax,crt_las,crt")
    assert (
        result.returncode == 2 and "--classifiers has 3 entries for 2 --runs" in result.stderr
    ), result.stderr
    result = _compare(f"--runs={tmp_path / 'missing'}")
    assert result.returncode == 2 and "is the run finished?" in result.stderr, result.stderr
