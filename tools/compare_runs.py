r"""Finished runs side by side: test top-1 of each, by its argmax or by a post-hoc/retrained classifier.

  python tools/compare_runs.py \
      --runs=results/cifar10_lt100_cdt,results/cifar10_lt100_cdt_plus,results/cifar10_lt100_cdt_plus_seed1 \
      --classifiers=argmax,crt_las,crt_las --labels=CDT,CDT+,CDT+

Prints a Markdown table, one row per run: the seed, validation top-1 (with --val_per_class), test
top-1, many/medium/few, the training's wall time over every start (metrics.jsonl) and the second
stage's (its record's `seconds`). Runs that share a label (the seeds of one recipe) then get their
mean and range. --classifiers takes "argmax" (the
logits as trained) or a key of the run's results.json post_hoc section (nc_tau, logit_adjustment,
crt, crt_las, ...): one for every run, or one per run.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from cdt_tf import cli  # noqa: E402
from cdt_tf.errors import UserError  # noqa: E402
from cdt_tf.rundir import RESULTS, classifier_summary, read_json, training_time  # noqa: E402

flags.DEFINE_list("runs", None, "Finished run directories (comma-separated), each holding results.json.")
flags.DEFINE_list(
    "classifiers",
    ["argmax"],
    "'argmax' or a post_hoc key of results.json (e.g. crt_las): one for every run, or one per run.",
)
flags.DEFINE_list(
    "labels", None, "One per run (default: the directory's name); runs sharing one are averaged."
)
flags.mark_flag_as_required("runs")
FLAGS = flags.FLAGS


def _percent(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def run_row(run_dir: str, classifier: str, label: str) -> tuple[str, float]:
    """(Markdown row, test top-1) of one run and classifier; UserError for an unfinished run."""
    results = read_json(os.path.join(run_dir, RESULTS), "object", "is the run finished?")
    summary = classifier_summary(results, classifier, run_dir)
    shots = summary.get("many_medium_few") or {}
    timing = training_time(run_dir) or {}
    seconds = timing.get("epoch_seconds") or results.get("train_seconds")
    stage = summary.get("seconds") if classifier != "argmax" else None
    cells = [
        label,
        f"`{run_dir}`",
        classifier,
        str((results.get("config") or {}).get("seed", "—")),
        _percent((summary.get("validation") or {}).get("top1")),
        f"**{_percent(summary['top1'])}**",
        _percent(shots.get("many")),
        _percent(shots.get("medium")),
        _percent(shots.get("few")),
        "—" if seconds is None else f"{seconds / 60:.0f}",
        "—" if stage is None else f"{stage:.0f}",
    ]
    return "| " + " | ".join(cells) + " |", summary["top1"]


def compare(runs: list[str], classifiers: list[str], labels: list[str] | None) -> str:
    """The Markdown table of the runs, then the mean and range of every label with several runs."""
    if len(classifiers) == 1:
        classifiers = classifiers * len(runs)
    if len(classifiers) != len(runs):
        raise UserError(
            f"--classifiers has {len(classifiers)} entries for {len(runs)} --runs; give 1 or {len(runs)}"
        )
    if labels is not None and len(labels) != len(runs):
        raise UserError(f"--labels has {len(labels)} entries for {len(runs)} --runs")
    labels = labels or [os.path.basename(os.path.normpath(run)) for run in runs]
    lines = [
        "| label | run | classifier | seed | validation | top-1 | many | medium | few "
        "| training (min) | second stage (s) |",
        "|---" * 11 + "|",
    ]
    top1: dict[str, list[float]] = {}
    for run, classifier, label in zip(runs, classifiers, labels, strict=True):
        row, value = run_row(run, classifier, label)
        lines.append(row)
        top1.setdefault(label, []).append(value)
    summaries = [
        f"{label}: mean top-1 {100 * sum(values) / len(values):.2f} over {len(values)} runs "
        f"({100 * min(values):.2f}–{100 * max(values):.2f})"
        for label, values in top1.items()
        if len(values) > 1
    ]
    return "\n".join(lines + ([""] + summaries if summaries else [])) + "\n"


def main(argv):
    del argv
    try:
        print(compare(FLAGS.runs, FLAGS.classifiers, FLAGS.labels), end="")
    except UserError as error:
        cli.fail(error)


if __name__ == "__main__":
    cli.run_tool(main)
