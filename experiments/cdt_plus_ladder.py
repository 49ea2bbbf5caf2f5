r"""The CDT+ ablation ladder: CDT on CIFAR-10-LT rho = 100 with one lever added at a time.

  python experiments/cdt_plus_ladder.py --data_dir=../shared/data/cifar10-jpeg \
      --runs_dir=~/cdt-runs/cdt_plus_ladder --rungs=cdt,wd5e-4,mixup,cosine
  python experiments/cdt_plus_ladder.py --runs_dir=~/cdt-runs/cdt_plus_ladder --norun     # the table only

Every rung trains flags/cifar10_lt100_cdt.cfg (the paper's recipe, compressed to --epochs) with
--val_per_class images a class carved out as a balanced validation split, plus its levers. A rung is
a lever name or several joined by "+" ("wd5e-4+mixup"); "cdt" is the base alone. Choices are read
off the validation column only: the test column is printed beside it, never used to choose (the
post-hoc columns' tau is also selected on the validation split, by cdt_tf.post_hoc). Each finished
rung also gets four second stages on its frozen features (seconds each, `python -m
cdt_tf.retrain_classifier`): cRT, cRT with label-aware smoothing, and both again on batch-norm
statistics re-estimated on class-balanced batches (`--bn_stats=class_balanced`). Runs go one after
the other; a finished rung is collected, not re-run, and a killed one resumes when the same command
starts again.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys

from absl import app, flags

# tools/recipes.py (shared with tools/reproduce_table.py), then the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from recipes import REPO, Runner, compressed_flags, flagfile_values, read_json, scale_epoch  # noqa: E402

sys.path.insert(0, REPO)
from cdt_tf import cli  # noqa: E402
from cdt_tf.rundir import training_time  # noqa: E402  (NumPy and absl only, no TensorFlow)

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
    "deferred": (
        "γ deferred: 0 until the first LR decay, then 0.3 (as DRW defers its weights)",
        ("--gamma_schedule=step", "--gamma_epoch={first_decay}"),
    ),
    "mixoff": (
        "no mixing from the first LR decay on (with mixup or cutmix: fine-tuning after mixup)",
        ("--mix_until_epoch={first_decay}",),
    ),
    "mixramp": (
        "mixing ramped down linearly from half-way to the first LR decay to none at it (with mixup or "
        "cutmix: mixup-to-plain)",
        ("--mix_schedule=ramp", "--mix_ramp_start={half_first_decay}", "--mix_until_epoch={first_decay}"),
    ),
    "prior": (
        "logit adjustment in the loss, τ = 1: softmax of z_c / a_c + log π_c (CDT with Balanced Softmax)",
        ("--prior_tau=1.0",),
    ),
    "gamma0": (
        "no temperatures, γ 0 (with prior: the logit-adjusted loss alone, Balanced Softmax without CDT)",
        ("--gamma=0",),
    ),
    "gamma0.5": ("gamma 0.5 (from 0.3)", ("--gamma=0.5",)),
    "gamma0.2": ("gamma 0.2 (from 0.3)", ("--gamma=0.2",)),
    "sam": ("SAM, rho 0.05 (two passes a step: about twice the time)", ("--sam_rho=0.05",)),
    "imbsam": (
        "ImbSAM: SAM on the tail classes' loss (< 100 images), rho 0.05 (about twice the time)",
        ("--sam_rho=0.05", "--sam_classes=tail"),
    ),
    "maxnorm": ("MaxNorm: each class weight vector of the classifier kept at norm <= 1", ("--max_norm=1.0",)),
    "bcl": (
        "balanced contrastive branch (BCL), weight 0.35 (the authors' released β beside CE weight 1), "
        "T 0.1, 128-d projections; two views of each image a step (twice the images); not with mixup "
        "or cutmix",
        ("--contrastive_weight=0.35", "--contrastive_temperature=0.1", "--contrastive_dim=128"),
    ),
}
# The ladder as it was run (BENCHMARKS.md), in that order; `samepad`, `gamma0.2`, `mixramp` and `prior`
# stay available by name.
DEFAULT_RUNGS = [
    "cdt",
    "mixup",
    "wd5e-4",
    "randaugment",
    "cosine",
    "cutmix",
    "mixup+mixoff",
    "deferred",
    "gamma0.5",
    "cutout",
]

_RUNGS = flags.DEFINE_list(
    "rungs",
    DEFAULT_RUNGS,
    f"Rungs to run or collect, in order: {BASE}, or levers joined by '+' from {sorted(LEVERS)}.",
)
_RUNS_DIR = flags.DEFINE_string("runs_dir", "~/cdt-runs/cdt_plus_ladder", "One run directory per rung here.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "CIFAR-10 image folder or TFDS data_dir.")
_EPOCHS = flags.DEFINE_integer("epochs", 60, "Epochs per rung; the 200-epoch schedule is compressed to it.")
_VAL_PER_CLASS = flags.DEFINE_integer("val_per_class", 250, "Balanced validation images a class (choices).")
_PRECISION = flags.DEFINE_string("precision", "mixed_bfloat16", "--precision of every rung.")
_SEEDS = flags.DEFINE_list(
    "seeds",
    ["0"],
    "Seeds of every rung (--seed of cdt_tf.main); seed 0 trains in <runs_dir>/<rung>, seed k in "
    "<runs_dir>/<rung>_seed<k>. With several, each rung also gets a row of their means, and the best "
    "cell is chosen on the mean validation top-1 (single 60-epoch runs spread about ±1.5 points).",
)
_RUN = flags.DEFINE_bool("run", True, "Train missing rungs; --norun only collects finished ones.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the Markdown table to this file.")
_PYTHON = flags.DEFINE_string("python", sys.executable, "Python that runs cdt_tf.main.")
_SECOND_STAGE = flags.DEFINE_bool(
    "second_stage",
    True,
    "Also retrain each finished rung's classifier: cRT, cRT with label-aware smoothing, each with "
    "the trained and with re-estimated batch-norm statistics.",
)
_SMOOTH_HEAD = flags.DEFINE_float(
    "smooth_head", 0.3, "cRT+LAS: smoothing of the largest class (MiSLAS's CIFAR-10)."
)
_SMOOTH_TAIL = flags.DEFINE_float("smooth_tail", 0.0, "cRT+LAS: smoothing of the smallest class.")
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


def seeds() -> list[int]:
    """--seeds as integers; raises app.UsageError naming a bad one."""
    try:
        values = [int(seed) for seed in _SEEDS.value]
    except ValueError:
        raise app.UsageError(f"--seeds must be integers, got {_SEEDS.value}") from None
    if not values or len(set(values)) != len(values) or min(values) < 0:
        raise app.UsageError(f"--seeds must be distinct integers >= 0, got {_SEEDS.value}")
    return values


def rung_dir(runs_dir: str, rung: str, seed: int) -> str:
    """Seed 0 keeps the ladder's first layout (<rung>); other seeds get <rung>_seed<k>."""
    return os.path.join(runs_dir, rung if seed == 0 else f"{rung}_seed{seed}")


def rung_command(rung: str, run_dir: str, seed: int = 0) -> list[str]:
    """The cdt_tf.main command line of one rung (later flags override the flagfile's)."""
    command = [_PYTHON.value, "-m", "cdt_tf.main", f"--flagfile={BASE_FLAGFILE}", f"--model_dir={run_dir}"]
    if _DATA_DIR.value:
        command.append(f"--data_dir={os.path.abspath(os.path.expanduser(_DATA_DIR.value))}")
    command += compressed_flags(flagfile_values(os.path.join(REPO, BASE_FLAGFILE)), _EPOCHS.value)
    command += [
        f"--val_per_class={_VAL_PER_CLASS.value}",
        f"--precision={_PRECISION.value}",
        f"--seed={seed}",
    ]
    first_decay = scale_epoch(160, _EPOCHS.value, minimum=1)  # The recipe's first decay, compressed.
    epochs = {"first_decay": first_decay, "half_first_decay": first_decay // 2}  # The half: < first_decay.
    for lever in rung_levers(rung):
        command += [flag.format(**epochs) for flag in LEVERS[lever][1]]
    return command + list(_EXTRA.value)


def _percent(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def stage_two_commands(run_dir: str) -> dict[str, tuple[str, list[str]]]:
    """Second stages on a finished rung: name -> (record file in run_dir, retrain_classifier command)."""
    base = [_PYTHON.value, "-m", "cdt_tf.retrain_classifier", f"--model_dir={run_dir}"]
    head, tail = _SMOOTH_HEAD.value, _SMOOTH_TAIL.value
    las = [f"--smooth_head={head}", f"--smooth_tail={tail}"]
    bn = ["--bn_stats=class_balanced"]
    return {
        "cRT": ("retrained_own_class_balanced.json", base),
        "cRT+LAS": (f"retrained_own_las{head:g}-{tail:g}_class_balanced.json", base + las),
        "cRT+BN": ("retrained_own_bn_class_balanced.json", base + bn),
        "cRT+LAS+BN": (f"retrained_own_las{head:g}-{tail:g}_bn_class_balanced.json", base + las + bn),
    }


def choices(results, run_dir: str) -> dict[str, tuple]:
    """Every way to classify with a rung's network: name -> (validation top-1, test top-1, tau or None).

    "argmax" is the network as trained; the post-hoc rules count only where tau was selected on the
    validation split (their validation top-1 is the sweep's best); the second stages where they ran.
    """
    if results is None:
        return {}
    found = {"argmax": (results.get("validation", {}).get("top1"), results["top1"], None)}
    post = results.get("post_hoc", {})
    for name, method in (("N_c^τ", "nc_tau"), ("LA", "logit_adjustment")):
        entry = post.get(method)
        if entry and entry.get("selected_on") == "validation" and "sweep" in entry:
            found[name] = (max(entry["sweep"]["top1"]), entry["top1"], entry["tau"])
    for name, (record_name, _) in stage_two_commands(run_dir).items():
        record = read_json(os.path.join(run_dir, record_name))
        if record is not None:
            found[name] = ((record.get("validation") or {}).get("top1"), record["top1"], None)
    return found


CHOICE_COLUMNS = ("N_c^τ", "LA", "cRT", "cRT+LAS", "cRT+BN", "cRT+LAS+BN")


def row_values(results, found: dict, seconds=None) -> dict | None:
    """The numbers of one run's row (None for a run without results): the argmax's validation and
    test top-1, many/medium/few, each other way to classify as (validation, test, tau), the seconds."""
    if results is None:
        return None
    shots = results.get("many_medium_few", {})
    return {
        "validation": found["argmax"][0],
        "test": found["argmax"][1],
        **{shot: shots.get(shot) for shot in ("many", "medium", "few")},
        **{name: found.get(name) for name in CHOICE_COLUMNS},
        "seconds": seconds or results.get("train_seconds"),  # Every start's epochs, else the last's.
    }


def _mean(values: list):
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def mean_values(rows: list) -> dict | None:
    """The seeds' mean of every number (a cell missing from any seed stays missing); None until every
    seed has finished. A choice's tau is shown where every seed chose the same."""
    if not rows or any(row is None for row in rows):
        return None
    mean = {key: _mean([row[key] for row in rows]) for key in rows[0] if key not in CHOICE_COLUMNS}
    for name in CHOICE_COLUMNS:
        cells = [row[name] for row in rows]
        present = all(cell is not None for cell in cells)
        if present:
            taus = {cell[2] for cell in cells}
            tau = taus.pop() if len(taus) == 1 else None
            mean[name] = (_mean([c[0] for c in cells]), _mean([c[1] for c in cells]), tau)
        else:
            mean[name] = None
    return mean


def table_row(rung: str, values: dict | None, label: str | None = None) -> str:
    """One Markdown row: validation first (what chooses), then test, then the other ways to classify."""
    what = " + ".join(LEVERS[lever][0] for lever in rung_levers(rung)) or "CDT γ = 0.3, the paper's recipe"
    label = label or rung
    if values is None:
        return f"| {label} | {what} | " + " | ".join(["—"] * (6 + len(CHOICE_COLUMNS))) + " |"

    def cell(name: str) -> str:
        if values[name] is None:
            return "—"
        validation, test, tau = values[name]
        return f"{_percent(validation)} / {_percent(test)}" + ("" if tau is None else f" (τ {tau:g})")

    seconds = values["seconds"]
    cells = [
        *(_percent(values[key]) for key in ("validation", "test", "many", "medium", "few")),
        *(cell(name) for name in CHOICE_COLUMNS),
        "—" if seconds is None else f"{seconds / 60:.0f}",
    ]
    return f"| {label} | {what} | " + " | ".join(cells) + " |"


def best_cells(values: dict | None) -> dict:
    """Every way to classify of a row that has a validation top-1: name -> (validation, test)."""
    if values is None:
        return {}
    cells = {"argmax": (values["validation"], values["test"])}
    cells.update({name: values[name][:2] for name in CHOICE_COLUMNS if values[name] is not None})
    return {name: cell for name, cell in cells.items() if cell[0] is not None}


def report(rows: list[str], best, runner: Runner) -> str:
    """The Markdown table of the rungs so far, the best cell on validation and the commands."""
    lines = [
        f"CDT+ ladder: CIFAR-10-LT ρ = 100, {_EPOCHS.value} epochs, {_PRECISION.value}, "
        f"seed{'s' if len(seeds()) > 1 else ''} {', '.join(map(str, seeds()))}, "
        f"{_VAL_PER_CLASS.value} validation images a class; {datetime.date.today().isoformat()}, "
        f"{platform.node()} ({os.cpu_count()} CPUs). Top-1 %; the last columns are validation / test.",
        "",
        "| rung | levers | validation | test | many | medium | few | "
        + " | ".join(f"{name} (val / test)" for name in CHOICE_COLUMNS)
        + " | min |",
        "|---" * (8 + len(CHOICE_COLUMNS)) + "|",
        *rows,
        "",
        ("Best on mean validation of the seeds: " if len(seeds()) > 1 else "Best on validation: ")
        + (
            "—"
            if best is None
            else f"{best[0]}, {best[1]} ({_percent(best[2])}; its test top-1 {_percent(best[3])})"
        ),
        "",
        "Commands:",
        "",
        *(f"    {c}" for c in runner.commands),
    ]
    if runner.failures:
        lines += ["", "Failed: " + ", ".join(runner.failures)]
    return "\n".join(lines) + "\n"


def write_output(text: str) -> None:
    """--output, atomically: a ladder killed mid-rung leaves the table of the rungs before it."""
    if _OUTPUT.value:
        temporary = f"{_OUTPUT.value}.tmp"
        with open(temporary, "w") as f:
            f.write(text)
        os.replace(temporary, _OUTPUT.value)


def main(argv):
    del argv
    runs_dir = os.path.expanduser(_RUNS_DIR.value)
    for rung in _RUNGS.value:
        rung_levers(rung)  # Every name and seed is checked before hours of training start.
    several = len(seeds()) > 1
    runner, rows, best = Runner(_RUN.value), [], None
    for rung in _RUNGS.value:
        per_seed = []
        for seed in seeds():
            run_dir = rung_dir(runs_dir, rung, seed)
            name = rung if seed == 0 else f"{rung} seed {seed}"
            results = runner.ensure(
                rung_command(rung, run_dir, seed), os.path.join(run_dir, "results.json"), name
            )
            if _SECOND_STAGE.value and results is not None:
                for stage, (record_name, stage_command) in stage_two_commands(run_dir).items():
                    runner.ensure(stage_command, os.path.join(run_dir, record_name), f"{name} {stage}")
            seconds = (training_time(run_dir) or {}).get("epoch_seconds")
            per_seed.append(row_values(results, choices(results, run_dir), seconds))
            if several:
                rows.append(table_row(rung, per_seed[-1], f"{rung} (seed {seed})"))
        mean = mean_values(per_seed)
        rows.append(table_row(rung, mean, f"**{rung} (mean)**" if several else rung))
        for choice, (validation, test) in best_cells(mean).items():
            if best is None or validation > best[2]:
                best = (rung, choice, validation, test)
        write_output(report(rows, best, runner))  # After every rung.
    text = report(rows, best, runner)
    print(text)
    write_output(text)
    if runner.failures:
        sys.exit(1)


if __name__ == "__main__":
    cli.run_tool(main)
