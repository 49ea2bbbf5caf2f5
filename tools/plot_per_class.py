r"""Per-class test accuracy of several runs side by side (grouped bars; the paper's Fig. 3b / 9).

  python tools/plot_per_class.py --runs=runs/cifar10_lt100_ce,runs/cifar10_lt100_cdt --out=per_class.png
  python tools/plot_per_class.py --runs=runs/cifar10_lt100_cdt,runs/cifar10_lt100_cdt_plus \
      --classifiers=argmax,crt_las --out=per_class.png

Reads each run's results.json: the argmax of its logits, or with --classifiers one of its post_hoc
entries (nc_tau, logit_adjustment, crt_las, ...). The legend names each run by its loss and gamma (and
the classifier, and its directory when two runs would get the same name), or by --labels. Classes are
ordered by decreasing N_c of the first run and labelled with its N_c; all runs must have the same
classes.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from cdt_tf import cli  # noqa: E402
from cdt_tf.errors import UserError  # noqa: E402
from cdt_tf.rundir import classifier_summary, read_json  # noqa: E402

flags.DEFINE_list("runs", None, "Run directories (comma-separated), each holding results.json.")
flags.DEFINE_string("out", "per_class_accuracy.png", "Output PNG.")
flags.DEFINE_list(
    "classifiers",
    None,
    "One per run: 'argmax' (the plain logits) or a key of the run's results.json post_hoc section "
    "(e.g. nc_tau, logit_adjustment, crt_las). Default: argmax for every run.",
)
flags.DEFINE_list("labels", None, "Legend entries, one per run (default: loss and gamma of each run).")
flags.mark_flag_as_required("runs")
FLAGS = flags.FLAGS


def read_results(run_dir: str) -> dict:
    """results.json of a finished cdt_tf.main run."""
    return read_json(os.path.join(run_dir, "results.json"))


def run_label(config: dict) -> str:
    """ "ERM (ce)" or "CDT gamma=0.3" from a run's config."""
    if config.get("loss") == "cdt":
        return f"CDT γ={config.get('gamma')}"
    return f"ERM ({config.get('loss', '?')})"


def unique_labels(labels: list[str], run_dirs: list[str]) -> list[str]:
    """Appends the run directory's name to labels that occur more than once."""
    return [
        f"{label} [{os.path.basename(os.path.normpath(run_dir))}]" if labels.count(label) > 1 else label
        for label, run_dir in zip(labels, run_dirs, strict=True)
    ]


def plot(path: str, accuracies: np.ndarray, labels: list[str], class_names, class_counts) -> None:
    """Grouped bars: accuracies [R, C] in [0, 1] (NaN: no bar), one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_runs, num_classes = accuracies.shape
    order = np.argsort(-np.asarray(class_counts), kind="stable")
    width = 0.8 / num_runs
    figure, ax = plt.subplots(figsize=(min(24.0, max(6.0, 0.25 * num_classes * (num_runs + 1))), 4.5))
    positions = np.arange(num_classes)
    for r in range(num_runs):
        mean = np.nanmean(accuracies[r])
        ax.bar(
            positions + (r - (num_runs - 1) / 2) * width,
            100 * accuracies[r][order],
            width,
            label=f"{labels[r]} (mean {100 * mean:.1f}%)",
        )
    step = max(1, int(np.ceil(num_classes / 30)))
    ax.set_xticks(
        positions[::step],
        [f"{class_names[c]}\n{class_counts[c]}" for c in order[::step]],
        fontsize=8,
    )
    ax.set_xlabel("class (and its training images N_c)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Per-class test accuracy")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv):
    del argv
    try:
        results = [read_results(run_dir) for run_dir in FLAGS.runs]
        names = results[0]["class_names"]
        for run_dir, result in zip(FLAGS.runs, results, strict=True):
            if result["class_names"] != names:
                raise UserError(
                    f"{run_dir} has other classes than {FLAGS.runs[0]}; compare runs of one dataset"
                )
        if FLAGS.labels and len(FLAGS.labels) != len(FLAGS.runs):
            raise UserError(f"--labels has {len(FLAGS.labels)} entries for {len(FLAGS.runs)} --runs")
        classifiers = FLAGS.classifiers or ["argmax"] * len(FLAGS.runs)
        if len(classifiers) != len(FLAGS.runs):
            raise UserError(f"--classifiers has {len(classifiers)} entries for {len(FLAGS.runs)} --runs")
        per_class = [
            classifier_summary(r, c, d)["per_class_accuracy"]
            for r, c, d in zip(results, classifiers, FLAGS.runs, strict=True)
        ]
        labels = FLAGS.labels or unique_labels(
            [
                run_label(r.get("config", {})) + ("" if c == "argmax" else f" + {c}")
                for r, c in zip(results, classifiers, strict=True)
            ],
            FLAGS.runs,
        )
        accuracies = np.array([[np.nan if a is None else a for a in p] for p in per_class], dtype=float)
    except UserError as error:
        cli.fail(error)
    plot(FLAGS.out, accuracies, labels, names, results[0]["class_counts"])
    for label, row in zip(labels, accuracies, strict=True):
        print(f"{label}: mean per-class test accuracy {100 * np.nanmean(row):.1f}%")
    print(f"Wrote {FLAGS.out}")


if __name__ == "__main__":
    cli.run_tool(main)
