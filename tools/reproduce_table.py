"""Runs (or only collects) a grid of the paper's CIFAR flagfiles and prints the table in the paper's shape.

  python tools/reproduce_table.py --table=2 --datasets=cifar10 --ratios=100 \
      --cifar10_dir=../shared/data/cifar10-jpeg --epochs=200 --runs_dir=runs/table2

Each cell is "ours (paper)" in top-1 %. Training rows come from one run per flagfile
(flags/<dataset>_<lt|step><rho>_<method>.cfg); the post-processed rows (+‖w‖^τ, +N_c^τ, +NCM)
from the post_hoc section of the ERM, CDT, re-sampling and re-weighting runs, whose τ is
selected on the test set as the paper does (said under the table). A finished run is
collected, not re-run; a killed one resumes. --epochs below 200 compresses the schedule
proportionally (warm-up, decays, DRW and gamma switch epochs) and the table says so.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cdt_tf import paper_results  # noqa: E402

_TABLE = flags.DEFINE_enum(
    "table", "2", ["2", "6", "7"], "Paper table: 2 (long-tailed), 6 (LT post-hoc), 7 (step)."
)
_DATASETS = flags.DEFINE_list("datasets", ["cifar10", "cifar100"], "Datasets (columns).")
_RATIOS = flags.DEFINE_list("ratios", ["200", "100", "10"], "Imbalance ratios (columns).")
_METHODS = flags.DEFINE_list(
    "methods", list(paper_results.METHOD_FLAGFILES), "Training rows to run, by the paper's row names."
)
_EPOCHS = flags.DEFINE_integer("epochs", 200, "Training epochs; below 200 the schedule is compressed.")
_RUNS_DIR = flags.DEFINE_string("runs_dir", "runs/tables", "Where the run directories go.")
_CIFAR10_DIR = flags.DEFINE_string("cifar10_dir", None, "--data_dir for CIFAR-10 (TFDS dir or image folder).")
_CIFAR100_DIR = flags.DEFINE_string("cifar100_dir", None, "--data_dir for CIFAR-100.")
_RUN = flags.DEFINE_bool("run", True, "Train missing runs; --norun only collects finished ones.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the Markdown table to this file.")
_PYTHON = flags.DEFINE_string("python", sys.executable, "Python that runs cdt_tf.main.")

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FULL_EPOCHS = 200
SCALED_FLAGS = ("warmup_epochs", "drw_epoch", "gamma_epoch")


def flagfile_values(path: str) -> dict[str, str]:
    """--name=value lines of a flagfile (comments skipped)."""
    values = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("--") and "=" in line:
                name, value = line[2:].split("=", 1)
                values[name] = value
    return values


def compressed_flags(values: dict[str, str], epochs: int) -> list[str]:
    """Flags that shrink a 200-epoch recipe to `epochs`: every epoch count scaled by epochs / 200, rounded."""
    if epochs == FULL_EPOCHS:
        return []

    def scale(epoch: int, minimum: int = 0) -> int:
        return max(minimum, int((epoch * epochs + FULL_EPOCHS // 2) // FULL_EPOCHS))

    out = [f"--epochs={epochs}"]
    for name in SCALED_FLAGS:
        if int(values.get(name, "0")):
            out.append(f"--{name}={scale(int(values[name]), minimum=1)}")
    decays = [scale(int(e), minimum=1) for e in values.get("decay_epochs", "160,180").split(",")]
    out.append("--decay_epochs=" + ",".join(str(d) for d in decays))
    return out


def cell_command(dataset: str, profile: str, ratio: int, suffix: str, epochs: int, runs_dir: str, data_dir):
    name = f"{dataset}_{profile}{ratio}_{suffix}"
    flagfile = os.path.join("flags", f"{name}.cfg")
    run_dir = os.path.join(runs_dir, f"{name}_e{epochs}")
    command = [_PYTHON.value, "-m", "cdt_tf.main", f"--flagfile={flagfile}", f"--model_dir={run_dir}"]
    if data_dir:
        command.append(f"--data_dir={data_dir}")
    command += compressed_flags(flagfile_values(os.path.join(REPO, flagfile)), epochs)
    return run_dir, command


def read_results(run_dir: str):
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def cell_value(results, post: str | None):
    if results is None:
        return None
    if post is None:
        return 100.0 * results["top1"]
    entry = (results.get("post_hoc") or {}).get(paper_results.POST_HOC_KEYS[post])
    return None if entry is None else 100.0 * entry["top1"]


def format_cell(ours, paper) -> str:
    mine = "—" if ours is None else f"{ours:.1f}"
    theirs = "—" if paper is None else f"{paper}"
    return f"{mine} ({theirs})"


def build_table(table: str, columns, results_by_cell) -> list[str]:
    """Markdown lines: one row per paper row whose training method was run or requested."""
    header = (
        "| Method | " + " | ".join(f"{d.upper().replace('CIFAR', 'CIFAR-')} ρ={r}" for d, r in columns) + " |"
    )
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for row, paper_row in paper_results.TABLES[table].items():
        method, _, post = row.partition("+")
        if method not in results_by_cell:
            continue
        cells = []
        for column in columns:
            ours = cell_value(results_by_cell[method].get(column), post or None)
            cells.append(format_cell(ours, paper_row.get(column)))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def main(argv):
    del argv
    table = _TABLE.value
    profile = "step" if table == "7" else "lt"
    columns = [(d, int(r)) for d in _DATASETS.value for r in _RATIOS.value]
    unknown = [m for m in _METHODS.value if m not in paper_results.METHOD_FLAGFILES]
    if unknown:
        raise app.UsageError(
            f"unknown --methods {unknown}; use names from {list(paper_results.METHOD_FLAGFILES)}"
        )
    data_dirs = {"cifar10": _CIFAR10_DIR.value, "cifar100": _CIFAR100_DIR.value}
    results_by_cell, commands, failures = {}, [], []
    for method in _METHODS.value:
        suffix = paper_results.METHOD_FLAGFILES[method]
        results_by_cell[method] = {}
        for dataset, ratio in columns:
            run_dir, command = cell_command(
                dataset, profile, ratio, suffix, _EPOCHS.value, _RUNS_DIR.value, data_dirs[dataset]
            )
            commands.append(shlex.join(["python"] + command[1:]))
            results = read_results(os.path.join(REPO, run_dir))
            if results is None and _RUN.value:
                print(f"[{method} {dataset} rho={ratio}] {shlex.join(command)}", flush=True)
                status = subprocess.run(command, cwd=REPO).returncode
                if status:
                    failures.append(f"{run_dir} (exit {status})")
                results = read_results(os.path.join(REPO, run_dir))
            if results is not None and "post_hoc" not in results:  # Trained by an older version.
                subprocess.run([_PYTHON.value, "-m", "cdt_tf.post_hoc", f"--model_dir={run_dir}"], cwd=REPO)
                results = read_results(os.path.join(REPO, run_dir))
            results_by_cell[method][(dataset, ratio)] = results
    lines = [
        f"Table {table} shape, top-1 % on the balanced test set: ours (paper). "
        f"{_EPOCHS.value} epochs"
        + (
            ""
            if _EPOCHS.value == FULL_EPOCHS
            else f" (the 200-epoch recipe compressed {FULL_EPOCHS / _EPOCHS.value:.1f}x)"
        )
        + f"; {datetime.date.today().isoformat()}, {platform.node()} ({os.cpu_count()} CPUs).",
        "",
        *build_table(table, columns, results_by_cell),
        "",
        "Post-processed rows: τ selected on the test set, as the paper does for this table.",
        "",
        "Commands:",
        "",
        *(f"    {c}" for c in commands),
    ]
    if failures:
        lines += ["", "Failed runs: " + ", ".join(failures)]
    text = "\n".join(lines) + "\n"
    print(text)
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            f.write(text)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
