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
import os
import platform
import subprocess
import sys

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import recipes  # noqa: E402
from recipes import FULL_EPOCHS, REPO, compressed_flags, flagfile_values, read_results  # noqa: E402

from cdt_tf import cli, paper_results  # noqa: E402

_TABLE = flags.DEFINE_enum(
    "table",
    "2",
    ["2", "5", "6", "7", "9"],
    "Paper table: 2 (long-tailed), 6 (LT post-hoc), 7 (step), 5 (features vs classifiers, CIFAR-10), "
    "9 (tau selected on test vs held-out, rho = 100).",
)
_DATASETS = flags.DEFINE_list("datasets", ["cifar10", "cifar100"], "Datasets (columns).")
_RATIOS = flags.DEFINE_list("ratios", ["200", "100", "10"], "Imbalance ratios (columns).")
_METHODS = flags.DEFINE_list(
    "methods", list(paper_results.METHOD_FLAGFILES), "Training rows to run, by the paper's row names."
)
_EPOCHS = flags.DEFINE_integer("epochs", 200, "Training epochs; below 200 the schedule is compressed.")
_RUNS_DIR = flags.DEFINE_string("runs_dir", "runs/tables", "Where the run directories go.")
_RUN_SUFFIX = flags.DEFINE_string(
    "run_suffix",
    "_e{epochs}",
    "Appended to the flagfile's name to name a run directory ({epochs}: the schedule). '' reads run "
    "directories named by their flagfile alone: results/ (committed) and experiments/long_runs.sh's.",
)
_CIFAR10_DIR = flags.DEFINE_string("cifar10_dir", None, "--data_dir for CIFAR-10 (TFDS dir or image folder).")
_CIFAR100_DIR = flags.DEFINE_string("cifar100_dir", None, "--data_dir for CIFAR-100.")
_RUN = flags.DEFINE_bool("run", True, "Train missing runs; --norun only collects finished ones.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the Markdown table to this file.")
_PYTHON = flags.DEFINE_string("python", sys.executable, "Python that runs cdt_tf.main.")


def cell_command(dataset: str, profile: str, ratio: int, suffix: str, epochs: int, runs_dir: str, data_dir):
    name = f"{dataset}_{profile}{ratio}_{suffix}"
    flagfile = os.path.join("flags", f"{name}.cfg")
    run_dir = os.path.join(runs_dir, name + _RUN_SUFFIX.value.format(epochs=epochs))
    command = [_PYTHON.value, "-m", "cdt_tf.main", f"--flagfile={flagfile}", f"--model_dir={run_dir}"]
    if data_dir:
        command.append(f"--data_dir={data_dir}")
    command += compressed_flags(flagfile_values(os.path.join(REPO, flagfile)), epochs)
    return run_dir, command


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


def build_table(table: str, columns, results_by_cell, references=None) -> list[str]:
    """Markdown lines: one row per paper row whose training method was run or requested, and under a
    training row, the reference code's runs on the same images where `references` has any
    ({method: {column: results.json or None}}: tools/reference_parity.py's runs)."""
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
        reference = (references or {}).get(method) or {}
        if not post and any(reference.values()):
            values = [cell_value(reference.get(column), None) for column in columns]
            shown = [
                format_cell(value, paper_row.get(column))
                for value, column in zip(values, columns, strict=True)
            ]
            lines.append(f"| {row}: paper's code, same images | " + " | ".join(shown) + " |")
    return lines


class Runner(recipes.Runner):
    """recipes.Runner, plus post_hoc for runs trained by an older version."""

    def training_run(self, run_dir: str, command: list[str], label: str):
        results = self.ensure(command, os.path.join(run_dir, "results.json"), label)
        if results is not None and "post_hoc" not in results:  # Trained by an older version.
            subprocess.run([_PYTHON.value, "-m", "cdt_tf.post_hoc", f"--model_dir={run_dir}"], cwd=REPO)
            results = read_results(os.path.join(REPO, run_dir))
        return results


def grid_tables(table: str, runner: Runner, data_dirs) -> list[str]:
    """Tables 2, 6 and 7: one training run per (method, dataset, ratio)."""
    profile = "step" if table == "7" else "lt"
    columns = [(d, int(r)) for d in _DATASETS.value for r in _RATIOS.value]
    unknown = [m for m in _METHODS.value if m not in paper_results.METHOD_FLAGFILES]
    if unknown:
        raise app.UsageError(
            f"unknown --methods {unknown}; use names from {list(paper_results.METHOD_FLAGFILES)}"
        )
    results_by_cell, references = {}, {}
    for method in _METHODS.value:
        suffix = paper_results.METHOD_FLAGFILES[method]
        results_by_cell[method] = {}
        for dataset, ratio in columns:
            run_dir, command = cell_command(
                dataset, profile, ratio, suffix, _EPOCHS.value, _RUNS_DIR.value, data_dirs[dataset]
            )
            label = f"{method} {dataset} rho={ratio}"
            results_by_cell[method][(dataset, ratio)] = runner.training_run(run_dir, command, label)
            # tools/reference_parity.py's run on the same subset, where there is one (never started here).
            reference_dir = os.path.join(os.path.dirname(run_dir), "reference_" + os.path.basename(run_dir))
            references.setdefault(method, {})[(dataset, ratio)] = read_results(
                os.path.join(REPO, reference_dir)
            )
    return [
        *build_table(table, columns, results_by_cell, references),
        "",
        "Post-processed rows: τ selected on the test set, as the paper does for this table.",
        *(
            ["\"paper's code, same images\": kaidic/LDAM-DRW's training on the run's own subset "
             "(tools/reference_parity.py)."]  # fmt: skip
            if any(any(cells.values()) for cells in references.values())
            else []
        ),
    ]


def _named_run(name: str, runner: Runner, data_dir, extra=()):
    run_dir = os.path.join(_RUNS_DIR.value, f"{name}_e{_EPOCHS.value}")
    flagfile = os.path.join("flags", f"{name}.cfg")
    command = [_PYTHON.value, "-m", "cdt_tf.main", f"--flagfile={flagfile}", f"--model_dir={run_dir}"]
    command += [f"--data_dir={data_dir}"] if data_dir else []
    command += compressed_flags(flagfile_values(os.path.join(REPO, flagfile)), _EPOCHS.value) + list(extra)
    return run_dir, runner.training_run(run_dir, command, name)


def table_9(runner: Runner, data_dirs) -> list[str]:
    """Table 9: N_c^τ's τ selected on the test set vs on 3 held-out images a class (gamma fixed)."""
    lines = ["| Setting / method | selected on test | selected on held-out |", "|---|---|---|"]
    for dataset in _DATASETS.value:
        _, holdout = _named_run(f"{dataset}_lt100_cdt_holdout3", runner, data_dirs[dataset])
        _, full = _named_run(f"{dataset}_lt100_cdt", runner, data_dirs[dataset])
        paper_plain = paper_results.TABLE_9[(dataset, "CDT")]
        paper_tau = paper_results.TABLE_9[(dataset, "CDT+N_c^τ")]
        plain = None if full is None else 100 * full["top1"]
        lines.append(
            f"| {dataset} LT ρ=100: CDT | {format_cell(plain, paper_plain[0])} | "
            f"{format_cell(None, paper_plain[1])} (γ not re-selected: one γ) |"
        )
        on_test = on_holdout = None
        if full is not None and "sweep" in full["post_hoc"].get("nc_tau", {}):
            on_test = 100 * full["post_hoc"]["nc_tau"]["top1"]
            if holdout is not None:
                tau = holdout["post_hoc"]["nc_tau"]["tau"]
                sweep = full["post_hoc"]["nc_tau"]["sweep"]
                on_holdout = 100 * sweep["top1"][sweep["taus"].index(tau)]
        lines.append(
            f"| {dataset} LT ρ=100: CDT+N_c^τ | {format_cell(on_test, paper_tau[0])} | "
            f"{format_cell(on_holdout, paper_tau[1])} |"
        )
    return lines


def table_5(runner: Runner, data_dirs) -> list[str]:
    """Table 5: balanced vs imbalanced features x classifiers on CIFAR-10 (LT ρ=100 and 1,240 a class)."""
    data_dir = data_dirs["cifar10"]
    balanced_dir, balanced = _named_run("cifar10_balanced1240_ce", runner, data_dir)
    imbalanced_dir, imbalanced = _named_run("cifar10_lt100_ce", runner, data_dir)

    def retrained(run_dir, spec, tag):
        command = [_PYTHON.value, "-m", "cdt_tf.retrain_classifier", f"--model_dir={run_dir}", *spec]
        command += ["--sampler=instance"] + ([f"--data_dir={data_dir}"] if data_dir else [])
        return runner.ensure(command, os.path.join(run_dir, f"retrained_{tag}_instance.json"), tag)

    cross = {
        ("balanced", "imbalanced"): retrained(
            balanced_dir,
            ["--imbalance=exp", "--imbalance_ratio=100", "--max_per_class=5000"],
            "exp100_max5000",
        ),
        ("imbalanced", "balanced"): retrained(
            imbalanced_dir, ["--imbalance=none", "--max_per_class=1240"], "balanced_max1240"
        ),
        ("balanced", "balanced"): balanced,
        ("imbalanced", "imbalanced"): imbalanced,
    }
    lines = ["| Feature / linear classifier | balanced | imbalanced |", "|---|---|---|"]
    for feature in ("balanced", "imbalanced"):
        cells = []
        for classifier in ("balanced", "imbalanced"):
            record = cross[(feature, classifier)]
            ours = None if record is None else 100 * record["top1"]
            cells.append(format_cell(ours, paper_results.TABLE_5[(feature, classifier)]))
        lines.append(f"| {feature} | " + " | ".join(cells) + " |")
    lines += ["", "Off-diagonal cells: the classifier retrained on frozen, unaugmented features (30 epochs)."]
    return lines


def main(argv):
    del argv
    table = _TABLE.value
    data_dirs = {"cifar10": _CIFAR10_DIR.value, "cifar100": _CIFAR100_DIR.value}
    runner = Runner(_RUN.value)
    if table == "5":
        body = table_5(runner, data_dirs)
    elif table == "9":
        body = table_9(runner, data_dirs)
    else:
        body = grid_tables(table, runner, data_dirs)
    compressed = (
        ""
        if _EPOCHS.value == FULL_EPOCHS
        else f" (the 200-epoch recipe compressed {FULL_EPOCHS / _EPOCHS.value:.1f}x)"
    )
    lines = [
        f"Table {table} shape, top-1 % on the balanced test set: ours (paper). {_EPOCHS.value} epochs"
        f"{compressed}; {datetime.date.today().isoformat()}, {platform.node()} ({os.cpu_count()} CPUs).",
        "",
        *body,
        "",
        "Commands:",
        "",
        *(f"    {c}" for c in runner.commands),
    ]
    if runner.failures:
        lines += ["", "Failed: " + ", ".join(runner.failures)]
    text = "\n".join(lines) + "\n"
    print(text)
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            f.write(text)
    if runner.failures:
        sys.exit(1)


if __name__ == "__main__":
    cli.run_tool(main)
