"""tools/plot_per_class.py: the argmax or a post-hoc classifier of each run, and its one-line errors."""

from __future__ import annotations

import json
import os
import sys

from conftest import run_command

TOOL = os.path.join("tools", "plot_per_class.py")


def _run_dir(root, name: str, argmax: list[float], crt_las: list[float] | None) -> str:
    run_dir = os.path.join(root, name)
    os.makedirs(run_dir)
    post_hoc = {"nc_tau": {"tau": 0.1, "top1": 0.5}}  # No per-class record: not plottable.
    if crt_las is not None:
        post_hoc["crt_las"] = {"top1": sum(crt_las) / 3, "per_class_accuracy": crt_las}
    results = {
        "class_names": ["a", "b", "c"],
        "class_counts": [100, 30, 10],
        "per_class_accuracy": argmax,
        "post_hoc": post_hoc,
        "config": {"loss": "cdt", "gamma": 0.3},
    }
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(results, f)
    return run_dir


def test_plots_the_named_classifier_of_each_run(tmp_path):
    cdt = _run_dir(tmp_path, "cdt", [0.9, 0.6, 0.3], None)
    plus = _run_dir(tmp_path, "plus", [0.9, 0.5, 0.1], [0.8, 0.7, 0.6])
    out = str(tmp_path / "per_class.png")
    result = run_command(
        sys.executable, TOOL, f"--runs={cdt},{plus}", "--classifiers=argmax,crt_las", f"--out={out}"
    )
    assert result.returncode == 0, result.stderr
    assert "CDT γ=0.3: mean per-class test accuracy 60.0%" in result.stdout, result.stdout
    # The retrained classifier's per-class accuracy (70.0), not the run's own argmax (50.0).
    assert "CDT γ=0.3 + crt_las: mean per-class test accuracy 70.0%" in result.stdout, result.stdout
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_missing_classifier_names_the_ones_the_run_has(tmp_path):
    cdt = _run_dir(tmp_path, "cdt", [0.9, 0.6, 0.3], None)
    out = str(tmp_path / "per_class.png")
    result = run_command(sys.executable, TOOL, f"--runs={cdt}", "--classifiers=crt_las", f"--out={out}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{cdt} has no post_hoc.crt_las with per-class accuracy; it has: argmax" in result.stderr
    assert not os.path.exists(out)

    result = run_command(
        sys.executable, TOOL, f"--runs={cdt}", "--classifiers=argmax,crt_las", f"--out={out}"
    )
    assert (
        result.returncode == 2 and "--classifiers has 2 entries for 1 --runs" in result.stderr
    ), result.stderr
