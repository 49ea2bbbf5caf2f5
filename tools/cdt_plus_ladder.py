r"""The CDT+ ablation ladder (issue 13): CDT on CIFAR-10-LT rho = 100 with one lever added at a time.

  python tools/cdt_plus_ladder.py --data_dir=../shared/data/cifar10-jpeg \
      --runs_dir=~/cdt-runs/cdt_plus_ladder --rungs=cdt,wd5e-4,mixup,cosine
  python tools/cdt_plus_ladder.py --runs_dir=~/cdt-runs/cdt_plus_ladder --norun     # the table only

Every rung trains flags/cifar10_lt100_cdt.cfg (the paper's recipe, compressed to --epochs) with
--val_per_class images a class carved out as a balanced validation split, plus its levers. A rung is
a lever name or several joined by "+" ("wd5e-4+mixup"); "cdt" is the base alone. Choices are read
off the validation column only: the test column is printed beside it, never used to choose (the
post-hoc columns' tau is also selected on the validation split, by cdt_tf.post_hoc). Runs go one
after the other; a finished rung is collected, not re-run, and a killed one resumes when the same
command starts again.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys

from absl import app, flags
from recipes import REPO, compressed_flags, flagfile_values, read_results

BASE_FLAGFILE = os.path.join("flags", "cifar10_lt100_cdt.cfg")
BASE = "cdt"
# Lever name -> (what it is, the flags that switch it on). Values are the usual CIFAR choices of the
# papers that introduced them (mixup/CutMix alpha 1, Cutout 16 px, RandAugment N=2 at about M=9/30).
LEVERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "samepad": ("Keras 'same' padding (the runs before --conv_padding)", ("--conv_padding=same",)),
    "wd5e-4": ("weight decay 5e-4 (from 2e-4)", ("--weight_decay=5e-4",)),
    "mixup": ("input mixup, alpha 1, soft labels", ("--mixup_alpha=1.0",)),
    "cutmix": ("CutMix, alpha 1, soft labels", ("--cutmix_alpha=1.0",)),
    "cosine": ("cosine decay after the warm-up", ("--lr_schedule=cosine",)),
    "randaugment": ("RandAugment, 2 ops, factor 0.3", ("--randaugment_magnitude=0.3", "--randaugment_ops=2")),
    "cutout": ("Cutout 16 px", ("--cutout=16",)),
    "gamma0.5": ("gamma 0.5 (from 0.3)", ("--gamma=0.5",)),
    "gamma0.2": ("gamma 0.2 (from 0.3)", ("--gamma=0.2",)),
}
DEFAULT_RUNGS = ["cdt", "samepad", "wd5e-4", "mixup", "cosine", "randaugment", "cutmix", "cutout"]

_RUNGS = flags.DEFINE_list(
    "rungs",
    DEFAULT_RUNGS,
    f"Rungs to run or collect, in order: {BASE}, or levers " f"joined by '+' from {sorted(LEVERS)}.",
)
_RUNS_DIR = flags.DEFINE_string("runs_dir", "~/cdt-runs/cdt_plus_ladder", "One run directory per rung here.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "CIFAR-10 image folder or TFDS data_dir.")
_EPOCHS = flags.DEFINE_integer("epochs", 60, "Epochs per rung; the 200-epoch schedule is compressed to it.")
_VAL_PER_CLASS = flags.DEFINE_integer("val_per_class", 250, "Balanced validation images a class (choices).")
_PRECISION = flags.DEFINE_string("precision", "mixed_bfloat16", "--precision of every rung.")
_SEED = flags.DEFINE_integer("seed", 0, "--seed of every rung.")
_RUN = flags.DEFINE_bool("run", True, "Train missing rungs; --norun only collects finished ones.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the Markdown table to this file.")
_PYTHON = flags.DEFINE_string("python", sys.executable, "Python that runs cdt_tf.main.")
_EXTRA = flags.DEFINE_multi_string(
    "extra", [], "A further cdt_tf.main flag for every rung (repeatable), e.g. --extra=--steps_per_epoch=2."
)


def rung_levers(rung: str) -> list[str]:
    """The lever names of a rung ([] for the base); raises app.UsageError naming an unknown one."""
    if rung == BASE:
        return []
    levers = rung.split("+")
    unknown = [lever for lever in levers if lever not in LEVERS]
    if unknown:
        raise app.UsageError(
            f"--rungs: unknown lever(s) {unknown} in {rung!r}; use {BASE} or {sorted(LEVERS)}"
        )
    return levers


def rung_command(rung: str, run_dir: str) -> list[str]:
    """The cdt_tf.main command line of one rung (later flags override the flagfile's)."""
    command = [_PYTHON.value, "-m", "cdt_tf.main", f"--flagfile={BASE_FLAGFILE}", f"--model_dir={run_dir}"]
    if _DATA_DIR.value:
        command.append(f"--data_dir={os.path.abspath(os.path.expanduser(_DATA_DIR.value))}")
    command += compressed_flags(flagfile_values(os.path.join(REPO, BASE_FLAGFILE)), _EPOCHS.value)
    command += [
        f"--val_per_class={_VAL_PER_CLASS.value}",
        f"--precision={_PRECISION.value}",
        f"--seed={_SEED.value}",
    ]
    for lever in rung_levers(rung):
        command += LEVERS[lever][1]
    return command + list(_EXTRA.value)


def _percent(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def table_row(rung: str, results) -> str:
    """One Markdown row: validation first (what chooses), then test, then post-hoc with tau on validation."""
    what = " + ".join(LEVERS[lever][0] for lever in rung_levers(rung)) or "CDT γ = 0.3, the paper's recipe"
    if results is None:
        return f"| {rung} | {what} | " + " | ".join(["—"] * 8) + " |"
    shots = results.get("many_medium_few", {})
    post = results.get("post_hoc", {})

    def post_cell(method: str) -> str:
        entry = post.get(method)
        if not entry or entry.get("selected_on") != "validation":
            return "—"
        return f"{_percent(entry['top1'])} (τ {entry['tau']:g})"

    minutes = results.get("train_seconds")
    cells = [
        _percent(results.get("validation", {}).get("top1")),
        _percent(results["top1"]),
        _percent(shots.get("many")),
        _percent(shots.get("medium")),
        _percent(shots.get("few")),
        post_cell("nc_tau"),
        post_cell("logit_adjustment"),
        "—" if minutes is None else f"{minutes / 60:.0f}",
    ]
    return f"| {rung} | {what} | " + " | ".join(cells) + " |"


def main(argv):
    del argv
    runs_dir = os.path.expanduser(_RUNS_DIR.value)
    for rung in _RUNGS.value:
        rung_levers(rung)  # Every name is checked before hours of training start.
    commands, failures, rows, best = [], [], [], None
    for rung in _RUNGS.value:
        run_dir = os.path.join(runs_dir, rung)
        command = rung_command(rung, run_dir)
        commands.append(shlex.join(["python"] + command[1:]))
        if read_results(run_dir) is None and _RUN.value:
            print(f"[{rung}] {shlex.join(command)}", flush=True)
            status = subprocess.run(command, cwd=REPO).returncode
            if status:
                failures.append(f"{rung} (exit {status})")
        results = read_results(run_dir)
        rows.append(table_row(rung, results))
        validation = None if results is None else results.get("validation", {}).get("top1")
        if validation is not None and (best is None or validation > best[1]):
            best = (rung, validation)
    lines = [
        f"CDT+ ladder: CIFAR-10-LT ρ = 100, {_EPOCHS.value} epochs, {_PRECISION.value}, seed {_SEED.value}, "
        f"{_VAL_PER_CLASS.value} validation images a class; {datetime.date.today().isoformat()}, "
        f"{platform.node()} ({os.cpu_count()} CPUs). Top-1 %.",
        "",
        "| rung | levers | validation | test | many | medium | few "
        "| N_c^τ (τ on val) | LA (τ on val) | min |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Best on validation: " + ("—" if best is None else f"{best[0]} ({100 * best[1]:.1f})"),
        "",
        "Commands:",
        "",
        *(f"    {c}" for c in commands),
    ]
    if failures:
        lines += ["", "Failed: " + ", ".join(failures)]
    text = "\n".join(lines) + "\n"
    print(text)
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            f.write(text)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
