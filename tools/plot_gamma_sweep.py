r"""Per-class training and test accuracy against CDT's gamma (the paper's Fig. 6).

  python tools/plot_gamma_sweep.py --runs=runs/c10_ce,runs/c10_cdt_0.1,runs/c10_cdt_0.3 --out=gamma.png

Each run contributes its gamma (0 for an ERM run), its per-class test accuracy (results.json) and
its per-class training accuracy on the unaugmented training subset: from <run>/analysis/analysis.json
when `python -m cdt_tf.analyze` has written one, else computed here by loading model.keras (one
inference pass over the subset). Runs with the same gamma (other seeds) are averaged. With more than
10 classes, 10 classes spread over the N_c order are drawn; the dashed black line is the mean over
all classes.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from cdt_tf import cli  # noqa: E402
from cdt_tf.errors import UserError  # noqa: E402
from cdt_tf.rundir import read_json  # noqa: E402

flags.DEFINE_list(
    "runs", None, "Run directories (comma-separated) of one dataset, ERM and CDT with any gamma."
)
flags.DEFINE_string("out", "gamma_sweep.png", "Output PNG.")
flags.DEFINE_integer("max_lines", 10, "Classes drawn (spread over the N_c order); all when C is not larger.")
flags.mark_flag_as_required("runs")
FLAGS = flags.FLAGS


def run_gamma(config: dict) -> float:
    """CDT's gamma of a run; 0 for ERM (CDT with gamma = 0 is ERM)."""
    return float(config.get("gamma", 0.0)) if config.get("loss") == "cdt" else 0.0


def _accuracies(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def train_accuracy(run_dir: str) -> np.ndarray:
    """Per-class training accuracy [C] of a run, from its analysis.json or computed from model.keras."""
    analysis_path = os.path.join(run_dir, "analysis", "analysis.json")
    if os.path.exists(analysis_path):
        return _accuracies([c["train_accuracy"] for c in read_json(analysis_path)["classes"]])
    print(
        f"{run_dir}: no analysis/analysis.json; computing the training accuracy from model.keras", flush=True
    )
    from cdt_tf import evaluate, features, rundir

    run = rundir.load_finished(run_dir)
    train = features.extract(run.model, run.data.eval_dataset("train"), run.data.labels("train"))
    return evaluate.per_class_accuracy(train.logits.argmax(1), train.labels, len(run.class_names))


def collect(run_dirs: list[str]):
    """gammas [G] (sorted), train and test accuracy [G, C] (averaged per gamma), runs per gamma, results."""
    by_gamma = defaultdict(list)
    first = None
    for run_dir in run_dirs:
        results = read_json(os.path.join(run_dir, "results.json"))
        if first is None:
            first = results
        elif results["class_names"] != first["class_names"]:
            raise UserError(f"{run_dir} has other classes than {run_dirs[0]}; sweep runs of one dataset")
        test = _accuracies(results["per_class_accuracy"])
        by_gamma[run_gamma(results.get("config", {}))].append((train_accuracy(run_dir), test))
    gammas = sorted(by_gamma)
    train = np.array([np.nanmean([t for t, _ in by_gamma[g]], axis=0) for g in gammas])
    test = np.array([np.nanmean([t for _, t in by_gamma[g]], axis=0) for g in gammas])
    return np.array(gammas), train, test, [len(by_gamma[g]) for g in gammas], first


def plot(path, gammas, train, test, runs_per_gamma, class_names, class_counts, max_lines) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-np.asarray(class_counts), kind="stable")
    shown = (
        order
        if len(order) <= max_lines
        else order[np.linspace(0, len(order) - 1, max_lines).round().astype(int)]
    )
    colormap = plt.get_cmap("viridis")
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, (title, values) in zip(
        axes, (("training accuracy", train), ("test accuracy", test)), strict=True
    ):
        for rank, c in enumerate(shown):
            color = colormap(rank / max(1, len(shown) - 1))
            ax.plot(
                gammas,
                100 * values[:, c],
                marker="o",
                color=color,
                label=f"{class_names[c]} ({class_counts[c]})",
            )
        ax.plot(gammas, 100 * np.nanmean(values, axis=1), "k--", linewidth=2, label="mean of all classes")
        ax.set_title(title)
        ax.set_xlabel("γ")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=7, title="class (N_c)", loc="center left", bbox_to_anchor=(1.02, 0.5))
    seeds = "" if max(runs_per_gamma) == 1 else f"; runs per γ: {runs_per_gamma}"
    figure.suptitle(f"Effect of γ (Fig. 6){seeds}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv):
    del argv
    if FLAGS.max_lines < 1:
        raise app.UsageError("--max_lines must be >= 1")
    try:
        gammas, train, test, runs_per_gamma, first = collect(FLAGS.runs)
    except UserError as error:
        cli.fail(error)
    plot(
        FLAGS.out,
        gammas,
        train,
        test,
        runs_per_gamma,
        first["class_names"],
        first["class_counts"],
        FLAGS.max_lines,
    )
    for g, n, tr, te in zip(gammas, runs_per_gamma, train, test, strict=True):
        runs = f"{n} run{'s' if n > 1 else ''}"
        print(f"γ={g:g} ({runs}): train {100 * np.nanmean(tr):.1f}%, test {100 * np.nanmean(te):.1f}%")
    print(f"Wrote {FLAGS.out}")


if __name__ == "__main__":
    cli.run_tool(main)
