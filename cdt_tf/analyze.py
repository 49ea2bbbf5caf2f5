r"""The paper's analysis of a finished run, as numbers (analysis.json) and figures (PNG).

  python -m cdt_tf.analyze --model_dir=runs/cifar10_lt100_ce
  python -m cdt_tf.analyze --model_dir=runs/cifar10_lt100_cdt --out_dir=/tmp/cdt_analysis

Re-creates the run's training subset from its config.json (checked against subset.json's hash),
loads model.keras, and passes the training subset (unaugmented) and the test split through the
network once each, keeping the penultimate features f(x) and the decision values w_c^T f(x).
Writes to --out_dir (default <model_dir>/analysis/):

  analysis.json          per class: N_c, train/test accuracy, ||w_c||, dis(c); both confusion
                         matrices for train and test; nearest-centre accuracy (Table 1)
  accuracy.png           per-class training and test accuracy against N_c (Fig. 3a-b)
  classifier_norms.png   ||w_c||_2 per class (Fig. 3c)
  feature_deviation.png  dis(c) per class (Fig. 3d)
  confusion.png          mean decision values and predicted labels, train vs test (Fig. 4/5)
  tsne.png               t-SNE of --tsne_per_class training (o) and test (x) features per class
                         (Fig. 1/16)

Figures order the classes by decreasing N_c (for --imbalance=exp runs: class index order).
"""

from __future__ import annotations

import functools
import json
import math
import os

import numpy as np
from absl import flags

from cdt_tf import class_stats, cli, diagnosis, evaluate, rundir
from cdt_tf.config import Config
from cdt_tf.errors import UserError
from cdt_tf.features import Features

FIGURES = (
    "accuracy.png",
    "classifier_norms.png",
    "feature_deviation.png",
    "confusion.png",
    "tsne.png",
)
# Copied into analysis.json to say which run the numbers describe.
CONFIG_SUMMARY_FIELDS = (
    "dataset",
    "imbalance",
    "imbalance_ratio",
    "max_per_class",
    "loss",
    "gamma",
    "epochs",
    "seed",
)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the flags of `python -m cdt_tf.analyze` in flag_values (called by `run`, not on import)."""
    define_string = functools.partial(flags.DEFINE_string, flag_values=flag_values)
    define_integer = functools.partial(flags.DEFINE_integer, flag_values=flag_values)
    define_string("model_dir", None, "Directory of a finished cdt_tf.main run.")
    define_string(
        "out_dir", None, "Where to write analysis.json and the PNGs (default <model_dir>/analysis)."
    )
    define_integer("num_rounds", 1000, "R, sub-sampling rounds of the feature deviation dis(c).")
    define_integer(
        "sample_size", 0, "K, training features sub-sampled per round (0: the smallest class size)."
    )
    define_integer("tsne_per_class", 25, "Training and test images per class in the t-SNE (0: no t-SNE).")
    define_integer("seed", 0, "Seeds the sub-sampling and the t-SNE.")
    define_string("data_dir", None, "Read the data from here instead of the run's --data_dir (moved data).")
    flags.mark_flag_as_required("model_dir", flag_values=flag_values)


# ----------------------------------------------------------------------------- the numbers


def compute_statistics(
    class_counts,
    train: Features,
    test: Features,
    kernel: np.ndarray,
    num_rounds: int = 1000,
    sample_size: int | None = None,
    seed: int = 0,
) -> dict:
    """Every statistic of analysis.json, as NumPy arrays (C classes; shapes as for cdt_tf.diagnosis).

    Args:
      class_counts: N_c of the training subset.
      train: the training subset (unaugmented) seen by the network.
      test: the test split seen by the network.
      kernel: the classifier's kernel [D, C].
      num_rounds, sample_size, seed: R, K and the seed of the feature deviation dis(c).
    """
    train_features, train_logits, train_labels = train.features, train.logits, train.labels
    test_features, test_logits, test_labels = test.features, test.logits, test.labels
    num_classes = len(class_counts)
    train_counts = np.bincount(train_labels, minlength=num_classes)
    if sample_size is None:
        sample_size = int(train_counts[train_counts > 0].min())
    statistics = {
        "num_rounds": num_rounds,
        "sample_size": sample_size,
        "train_counts": train_counts,
        "test_counts": np.bincount(test_labels, minlength=num_classes),
        "classifier_norms": diagnosis.classifier_norms(kernel),
        "feature_deviation": diagnosis.feature_deviation(
            train_features,
            train_labels,
            test_features,
            test_labels,
            num_rounds,
            sample_size,
            seed,
            num_classes,
        ),
        "mean_distance": diagnosis.mean_deviation(
            train_features, train_labels, test_features, test_labels, num_classes
        ),
    }
    for split, logits, labels in (("train", train_logits, train_labels), ("test", test_logits, test_labels)):
        predictions = logits.argmax(1)
        statistics[split] = {
            "top1": float((predictions == labels).mean()),
            "per_class_accuracy": evaluate.per_class_accuracy(predictions, labels, num_classes),
            "decision_values": diagnosis.decision_value_confusion(logits, labels, num_classes),
            "predictions": diagnosis.prediction_confusion(predictions, labels, num_classes),
        }
    normalized_train = diagnosis.l2_normalize(train_features)
    normalized_test = diagnosis.l2_normalize(test_features)
    statistics["nearest_center"] = {}
    for centers_from, features, labels in (
        ("train_means", normalized_train, train_labels),
        ("test_means", normalized_test, test_labels),
    ):
        centers = diagnosis.class_means(features, labels, num_classes)
        top1, per_class = diagnosis.nearest_center_accuracy(normalized_test, test_labels, centers)
        statistics["nearest_center"][centers_from] = {"top1": top1, "per_class_accuracy": per_class}
    return statistics


def analysis_json(statistics: dict, class_names, config: Config, model_dir: str, figures) -> dict:
    """The content of analysis.json (see README's Analysis section)."""
    classes = [
        {
            "class": c,
            "name": name,
            "train_count": statistics["train_counts"][c],
            "test_count": statistics["test_counts"][c],
            "train_accuracy": statistics["train"]["per_class_accuracy"][c],
            "test_accuracy": statistics["test"]["per_class_accuracy"][c],
            "classifier_norm": statistics["classifier_norms"][c],
            "feature_deviation": statistics["feature_deviation"][c],
            "mean_distance": statistics["mean_distance"][c],
        }
        for c, name in enumerate(class_names)
    ]
    return rundir.plain(
        {
            "model_dir": os.path.abspath(model_dir),
            "config": {
                **{name: getattr(config, name) for name in CONFIG_SUMMARY_FIELDS},
                "model": config.resolved_model,
            },
            "class_names": list(class_names),
            "feature_deviation": {
                "num_rounds": statistics["num_rounds"],
                "sample_size": statistics["sample_size"],
                "features": "l2-normalised penultimate features",
            },
            "classes": classes,
            "train": {k: v for k, v in statistics["train"].items() if k != "per_class_accuracy"},
            "test": {k: v for k, v in statistics["test"].items() if k != "per_class_accuracy"},
            "nearest_center": statistics["nearest_center"],
            "figures": list(figures),
        }
    )


# ----------------------------------------------------------------------------- the figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # Files only; no display needed.
    import matplotlib.pyplot as plt

    return plt


def _class_axis(ax, order, class_names, class_counts) -> None:
    """Classes on the x axis in `order`, each labelled with its name and N_c."""
    step = max(1, math.ceil(len(order) / 20))
    positions = np.arange(0, len(order), step)
    if len(order) <= 20:
        labels = [f"{class_names[c]}\n{class_counts[c]}" for c in order]
    else:
        labels = [str(class_counts[order[p]]) for p in positions]
    # Names longer than a few characters would run into each other side by side: slant them.
    slanted = len(order) > 20 or max(len(class_names[c]) for c in order) > 6
    ax.set_xticks(
        positions, labels, fontsize=8, rotation=45 if slanted else 0, ha="right" if slanted else "center"
    )
    ax.set_xlabel("class (and its training images N_c)")


def _per_class_plot(path, panels, order, class_names, class_counts, ylabel) -> None:
    """One line per panel: panels is [(title, values [C])]."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False, sharey=True)
    for ax, (title, values) in zip(axes[0], panels, strict=True):
        ax.plot(np.arange(len(order)), np.asarray(values, dtype=float)[order], marker="o")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        _class_axis(ax, order, class_names, class_counts)
    axes[0][0].set_ylabel(ylabel)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_confusions(path, statistics, order, class_names) -> None:
    """2x2: mean decision values (top) and predicted labels (bottom), train (left) vs test (right)."""
    plt = _pyplot()
    num_classes = len(order)
    figure, axes = plt.subplots(2, 2, figsize=(11, 10))
    index = np.ix_(order, order)
    decision = [statistics[s]["decision_values"][index] for s in ("train", "test")]
    low, high = np.nanmin(decision), np.nanmax(decision)
    for column, split in enumerate(("train", "test")):
        for row, (key, limits, fmt) in enumerate(
            (("decision_values", (low, high), "{:.1f}"), ("predictions", (0.0, 1.0), "{:.2f}"))
        ):
            ax = axes[row][column]
            matrix = statistics[split][key][index]
            image = ax.imshow(matrix, cmap="viridis", vmin=limits[0], vmax=limits[1])
            figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
            what = "mean decision value" if key == "decision_values" else "fraction predicted"
            ax.set_title(f"{split}: {what}")
            ax.set_xlabel("class c'")
            ax.set_ylabel("true class")
            if num_classes <= 20:
                names = [class_names[c] for c in order]
                ax.set_xticks(range(num_classes), names, fontsize=7, rotation=90)
                ax.set_yticks(range(num_classes), names, fontsize=7)
            if num_classes <= 12:
                middle = (limits[0] + limits[1]) / 2
                for i in range(num_classes):
                    for j in range(num_classes):
                        if np.isfinite(matrix[i, j]):
                            color = "black" if matrix[i, j] > middle else "white"
                            ax.text(
                                j,
                                i,
                                fmt.format(matrix[i, j]),
                                ha="center",
                                va="center",
                                fontsize=6,
                                color=color,
                            )
    figure.suptitle("Confusion matrices, classes by decreasing N_c (Fig. 4/5)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def tsne_embedding(features: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE of l2-normalised features [N, D] -> [N, 2] (scikit-learn, seeded)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = min(30.0, (len(features) - 1) / 3.0)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    # One thread: OpenMP's spinning threads made t-SNE far slower on a busy 2-core machine
    # (BENCHMARKS.md, "Analysis").
    with threadpool_limits(1):
        return tsne.fit_transform(diagnosis.l2_normalize(features))


def plot_tsne(path, points, labels, is_test, class_names, class_counts) -> None:
    """Training (circle) and test (cross) points, one colour per class."""
    plt = _pyplot()
    num_classes = len(class_names)
    colormap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "hsv")
    figure, ax = plt.subplots(figsize=(8, 7))
    for c in range(num_classes):
        color = colormap(c % colormap.N if num_classes <= 20 else c / num_classes)
        train, test = (labels == c) & ~is_test, (labels == c) & is_test
        ax.scatter(
            *points[train].T, marker="o", s=18, color=color, label=f"{class_names[c]} ({class_counts[c]})"
        )
        ax.scatter(*points[test].T, marker="x", s=22, color=color)
    if num_classes <= 20:
        ax.legend(fontsize=7, title="class (N_c)", loc="best", markerscale=1.2)
    ax.set_title("t-SNE of penultimate features: training (o) and test (x)")
    ax.set_xticks([])
    ax.set_yticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ----------------------------------------------------------------------------- the command


def run_analysis(
    model_dir: str,
    out_dir: str | None = None,
    num_rounds: int = 1000,
    sample_size: int = 0,
    tsne_per_class: int = 25,
    seed: int = 0,
    data_dir: str | None = None,
) -> str:
    """Analyses a finished run; returns the path of the analysis.json it wrote. See the module docstring."""
    _check_options(model_dir, num_rounds, sample_size, tsne_per_class)
    out_dir = out_dir or os.path.join(model_dir, "analysis")
    print(f"Loading the run in {model_dir} ...", flush=True)
    run = rundir.load_finished(model_dir, data_dir)
    from cdt_tf import features  # Imports TensorFlow.

    counts, data = run.class_counts, run.data
    print(
        f"Extracting features: {data.size('train')} training and {data.size('test')} test images ...",
        flush=True,
    )
    probe = features.probe(run.model)
    train = features.extract(probe, data.eval_dataset("train"), data.labels("train"))
    test = features.extract(probe, data.eval_dataset("test"), data.labels("test"))
    _, kernel = features.classifier(run.model)
    print(f"Feature deviation ({num_rounds} rounds) and the other statistics ...", flush=True)
    statistics = compute_statistics(counts, train, test, kernel, num_rounds, sample_size or None, seed)

    os.makedirs(out_dir, exist_ok=True)
    order = np.argsort(-np.asarray(counts), kind="stable")
    names = run.class_names
    plot_per_class_figures(out_dir, statistics, order, names, counts, num_rounds)
    plot_confusions(os.path.join(out_dir, "confusion.png"), statistics, order, names)
    figures = list(FIGURES[:-1])
    if tsne_per_class and _tsne_figure(out_dir, train, test, tsne_per_class, names, counts, seed):
        figures.append("tsne.png")

    path = os.path.join(out_dir, "analysis.json")
    content = analysis_json(statistics, names, run.config, model_dir, figures)
    rundir.write_json(path, content)
    return path


def _check_options(model_dir: str, num_rounds: int, sample_size: int, tsne_per_class: int) -> None:
    """Refuses (UserError) bad counts and a bad directory, before TensorFlow loads."""
    if num_rounds < 1 or sample_size < 0 or tsne_per_class < 0:
        raise UserError("--num_rounds must be >= 1 and --sample_size and --tsne_per_class >= 0")
    _, subset, _ = rundir.read_finished(model_dir)
    smallest = min((n for n in subset.get("class_counts", []) if n > 0), default=0)
    if sample_size > smallest:
        raise UserError(f"--sample_size={sample_size} exceeds the smallest class size N_min={smallest}")


def plot_per_class_figures(out_dir, statistics, order, class_names, class_counts, num_rounds: int) -> None:
    """Fig. 3 (a)-(d): accuracy.png, classifier_norms.png and feature_deviation.png in out_dir."""
    train_accuracy = 100 * statistics["train"]["per_class_accuracy"]
    test_accuracy = 100 * statistics["test"]["per_class_accuracy"]
    deviation_title = f"(d) feature deviation (K={statistics['sample_size']}, R={num_rounds})"
    for file_name, panels, ylabel in (
        (
            "accuracy.png",
            [
                (f"(a) training accuracy (mean {np.nanmean(train_accuracy):.1f}%)", train_accuracy),
                (f"(b) test accuracy (mean {np.nanmean(test_accuracy):.1f}%)", test_accuracy),
            ],
            "accuracy (%)",
        ),
        ("classifier_norms.png", [("(c) classifier norm", statistics["classifier_norms"])], "||w_c||_2"),
        ("feature_deviation.png", [(deviation_title, statistics["feature_deviation"])], "dis(c)"),
    ):
        _per_class_plot(os.path.join(out_dir, file_name), panels, order, class_names, class_counts, ylabel)


def _tsne_figure(out_dir, train, test, per_class: int, class_names, class_counts, seed: int) -> bool:
    """tsne.png of up to per_class training and test features of each class; False (no figure)
    for fewer than 4 features."""
    train_pick = train.take(class_stats.sample_up_to(train.labels, per_class, len(class_names), seed))
    test_pick = test.take(class_stats.sample_up_to(test.labels, per_class, len(class_names), seed))
    picked = np.concatenate([train_pick.features, test_pick.features])
    if len(picked) < 4:
        return False
    print(f"t-SNE of {len(picked)} features ...", flush=True)
    labels = np.concatenate([train_pick.labels, test_pick.labels])
    is_test = np.arange(len(picked)) >= len(train_pick)
    points = tsne_embedding(picked, seed)
    plot_tsne(os.path.join(out_dir, "tsne.png"), points, labels, is_test, class_names, class_counts)
    return True


def format_summary(content: dict) -> str:
    """A plain-text per-class table of analysis.json's main numbers."""
    width = max(5, *(len(c["name"]) for c in content["classes"]))
    lines = [f"{'class':<{width}}  {'N_c':>6}  {'train':>7}  {'test':>7}  {'||w_c||':>7}  {'dis(c)':>7}"]
    show = lambda value, scale=1.0, digits=2: (
        "n/a" if value is None else f"{scale * value:.{digits}f}"
    )  # noqa: E731
    for c in content["classes"]:
        lines.append(
            f"{c['name']:<{width}}  {c['train_count']:>6}  {show(c['train_accuracy'], 100, 1):>6}%  "
            f"{show(c['test_accuracy'], 100, 1):>6}%  {show(c['classifier_norm']):>7}  "
            f"{show(c['feature_deviation'], 1, 3):>7}"
        )
    ncm = content["nearest_center"]
    lines.append(
        f"test top-1: linear {100 * content['test']['top1']:.2f}%, nearest centre with training means "
        f"{100 * ncm['train_means']['top1']:.2f}%, with test means {100 * ncm['test_means']['top1']:.2f}%"
    )
    return "\n".join(lines)


def command(flag_values) -> None:
    """`python -m cdt_tf.analyze`: analyse a finished run and print the per-class table."""
    path = run_analysis(
        flag_values.model_dir,
        flag_values.out_dir,
        flag_values.num_rounds,
        flag_values.sample_size,
        flag_values.tsne_per_class,
        flag_values.seed,
        flag_values.data_dir,
    )
    with open(path) as f:
        content = json.load(f)
    print(format_summary(content))
    print(f"Analysis: {path}; figures: {', '.join(content['figures'])}")


def run() -> None:
    cli.run(define_flags, command)


if __name__ == "__main__":
    run()
