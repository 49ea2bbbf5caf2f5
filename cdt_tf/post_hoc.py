r"""Post-hoc calibration and other classifiers on a trained network, from one pass over its features.

  python -m cdt_tf.post_hoc --model_dir=runs/cifar10_lt100_ce
  python -m cdt_tf.post_hoc --model_dir=runs/cifar10_lt100_cdt --tau_from=runs/cifar10_lt100_cdt_holdout3

Writes the `post_hoc` section of the run's results.json (training also writes it when it ends)
and post_hoc.png (top-1 against tau for each rule). The methods, each evaluated on the
balanced test split without retraining the network:

  nc_tau            the paper's eq. 5: argmax_c z_c / N_c^tau
  w_norm            tau-normalisation (Kang et al. 2020): argmax_c f(x)^T w_c / ||w_c||^tau, no bias
                    (the paper's ||w_c||_2^tau rule; linear classifiers only)
  logit_adjustment  post-hoc logit adjustment (Menon et al. 2021): argmax_c z_c - tau log pi_c
  ncm               nearest class mean: l2-normalised features, centres = means of the normalised
                    features of the (unaugmented) training subset

tau is picked from TAU_GRID (0 to 2; steps of 0.01 up to 0.5, then 0.05) by top-1 on a
selection split, recorded with every entry as `selected_on`: "holdout" (the run's
--holdout_per_class split, the paper's Table 9 protocol), "holdout of <run>" (--tau_from: taus
chosen on another run's held-out split), or "test" (the paper's Table 2 protocol: tuned and
reported on the same test set; said so wherever shown). Ties go to the smallest tau.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import numpy as np

from cdt_tf import calibration, class_stats, evaluate
from cdt_tf.errors import UserError

# 0, 0.01, ..., 0.5, then 0.55, ..., 2: N_c^tau's optimum for an ERM network is often near 0.1-0.3,
# where top-1 moves by points per 0.05 (log N_c spans about 8.5 on CIFAR-10-LT).
TAU_GRID = tuple(sorted({round(0.01 * i, 2) for i in range(51)} | {round(0.05 * i, 2) for i in range(41)}))
TAU_METHODS = ("nc_tau", "w_norm", "logit_adjustment")
METHODS = TAU_METHODS + ("ncm",)


def classifier_weights(model) -> tuple[str, np.ndarray, np.ndarray | None]:
    """("linear" | "cosine", kernel [D, C], bias [C] or None) of a cdt_tf model's classifier."""
    import keras

    layer = model.get_layer("classifier")
    kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
    bias = getattr(layer, "bias", None)
    kind = "linear" if isinstance(layer, keras.layers.Dense) else "cosine"
    return kind, kernel, None if bias is None else keras.ops.convert_to_numpy(bias).astype(np.float64)


def nc_tau(logits, features, kernel, class_counts, tau):
    return calibration.nc_tau_calibrate(logits, class_counts, tau)


def w_norm(logits, features, kernel, class_counts, tau):
    norms = np.linalg.norm(kernel, axis=0)
    return np.asarray(features, np.float64) @ (kernel / np.maximum(norms, 1e-12) ** tau)


def logit_adjustment(logits, features, kernel, class_counts, tau):
    return np.asarray(logits, np.float64) - tau * class_stats.log_prior(class_counts)


RULES: dict[str, Callable] = {"nc_tau": nc_tau, "w_norm": w_norm, "logit_adjustment": logit_adjustment}


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Means [C, D] of the l2-normalised features of each class."""
    normalised = _l2_normalise(features)
    sums = np.zeros((num_classes, normalised.shape[1]))
    np.add.at(sums, np.asarray(labels, np.int64), normalised)
    counts = np.bincount(labels, minlength=num_classes)[:, None]
    return sums / np.maximum(counts, 1)


def ncm_scores(features: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Negative Euclidean distances [N, C] from l2-normalised features to the class centres."""
    normalised = _l2_normalise(features)
    squared = (normalised**2).sum(1, keepdims=True) - 2 * normalised @ centres.T + (centres**2).sum(1)
    return -np.sqrt(np.maximum(squared, 0.0))


def _l2_normalise(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _top1(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(scores).argmax(1) == labels).mean())


def sweep(rule: Callable, split: dict, kernel, class_counts, taus: Sequence[float] = TAU_GRID) -> list[float]:
    """Top-1 on `split` ({"logits", "features", "labels"}) of `rule` at each tau."""
    return [
        _top1(rule(split["logits"], split["features"], kernel, class_counts, tau), split["labels"])
        for tau in taus
    ]


def evaluate_post_hoc(
    class_counts: Sequence[int],
    kernel: np.ndarray,
    classifier_kind: str,
    train: dict,
    test: dict,
    holdout: dict | None = None,
    taus_from: dict | None = None,
    taus_from_name: str | None = None,
) -> dict:
    """The results.json `post_hoc` section.

    Args:
      class_counts: N_c of the training subset the network was trained on.
      kernel: the classifier's kernel [D, C].
      classifier_kind: "linear" or "cosine" (w_norm is skipped for cosine: its norms are all 1).
      train: {"features", "labels"} of the training subset (for NCM's centres).
      test: {"logits", "features", "labels"} of the test split.
      holdout: like test, for the held-out split (selects tau), or None.
      taus_from: method -> tau chosen elsewhere (--tau_from); wins over holdout and test.
      taus_from_name: what to call where taus_from came from.

    Returns:
      method -> {tau, selected_on, top1, top5, many_medium_few, per_class_accuracy, sweep}.
      sweep is {"split", "taus", "top1"} on the selection split (absent with taus_from).
    """
    section = {}
    for method in TAU_METHODS:
        if method == "w_norm" and classifier_kind != "linear":
            continue
        rule = RULES[method]
        entry = {}
        if taus_from is not None:
            if method not in taus_from:
                continue
            tau, entry["selected_on"] = float(taus_from[method]), f"holdout of {taus_from_name}"
        else:
            split_name, split = ("holdout", holdout) if holdout is not None else ("test", test)
            top1s = sweep(rule, split, kernel, class_counts)
            tau = TAU_GRID[int(np.argmax(top1s))]  # argmax: the first (smallest) tau of the best.
            entry["selected_on"] = split_name
            entry["sweep"] = {"split": split_name, "taus": list(TAU_GRID), "top1": top1s}
        scores = rule(test["logits"], test["features"], kernel, class_counts, tau)
        section[method] = {"tau": tau, **_summary(scores, test["labels"], class_counts), **entry}
    centres = class_means(train["features"], train["labels"], len(class_counts))
    scores = ncm_scores(test["features"], centres)
    section["ncm"] = {"tau": None, "selected_on": None, **_summary(scores, test["labels"], class_counts)}
    return section


def _summary(scores, labels, class_counts) -> dict:
    summary = evaluate.summarize(scores, labels, class_counts)
    keys = ("top1", "top5", "many_medium_few", "per_class_accuracy")
    return {key: summary[key] for key in keys}


def read_taus(run_dir: str) -> tuple[dict, str]:
    """Held-out-selected taus of a finished --holdout_per_class run: ({method: tau}, its name)."""
    from cdt_tf.analyze import read_json

    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        raise UserError(f"--tau_from={run_dir} holds no results.json; finish that run first")
    section = read_json(path).get("post_hoc") or {}
    taus = {m: e["tau"] for m, e in section.items() if e.get("selected_on") == "holdout"}
    if not taus:
        raise UserError(
            f"--tau_from={run_dir} has no held-out-selected taus; train it with --holdout_per_class=K"
        )
    return taus, os.path.basename(os.path.normpath(run_dir))


def compute(model, class_counts, train_images, train_labels, test_images, test_labels, **kwargs) -> dict:
    """Extracts features (one inference pass per split) and returns `evaluate_post_hoc`'s section.

    kwargs: holdout_images / holdout_labels (both or neither), taus_from, taus_from_name.
    """
    from cdt_tf.analyze import extract

    kind, kernel, _ = classifier_weights(model)
    train_features, _ = extract(model, train_images, train_labels)
    test_features, test_logits = extract(model, test_images, test_labels)
    holdout = None
    holdout_images = kwargs.pop("holdout_images", None)
    holdout_labels = kwargs.pop("holdout_labels", None)
    if holdout_images is not None and len(holdout_images):
        features, logits = extract(model, holdout_images, holdout_labels)
        holdout = {"features": features, "logits": logits, "labels": np.asarray(holdout_labels)}
    return evaluate_post_hoc(
        class_counts,
        kernel,
        kind,
        {"features": train_features, "labels": np.asarray(train_labels)},
        {"features": test_features, "logits": test_logits, "labels": np.asarray(test_labels)},
        holdout,
        **kwargs,
    )


def plot_sweeps(section: dict, path: str, title: str) -> None:
    """post_hoc.png: top-1 against tau of each tau rule on its selection split, chosen tau marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, entry in section.items():
        if "sweep" not in entry:
            continue
        taus, top1 = entry["sweep"]["taus"], 100 * np.asarray(entry["sweep"]["top1"])
        (line,) = ax.plot(taus, top1, label=f"{method} (τ={entry['tau']:g}, on {entry['selected_on']})")
        ax.plot([entry["tau"]], [top1[taus.index(entry["tau"])]], "o", color=line.get_color())
    if "ncm" in section:
        ax.axhline(100 * section["ncm"]["top1"], color="grey", linestyle="--", label="ncm (test)")
    ax.set_xlabel("τ")
    ax.set_ylabel("top-1 (%) on the selection split")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_section(section: dict) -> str:
    """A text table of the section: method, tau, where it was selected, top-1 and many/medium/few."""
    lines = [f"{'post-hoc':<18}{'tau':>6}  {'selected on':<22}{'top-1':>7}{'many':>8}{'medium':>8}{'few':>8}"]
    for method, e in section.items():
        groups = [e["many_medium_few"].get(g) for g in ("many", "medium", "few")]
        shown = "".join(f"{'—':>8}" if g is None else f"{100 * g:>7.2f}%" for g in groups)
        tau = "—" if e["tau"] is None else f"{e['tau']:g}"
        lines.append(
            f"{method:<18}{tau:>6}  {str(e['selected_on'] or '—'):<22}{100 * e['top1']:>6.2f}%{shown}"
        )
    return "\n".join(lines)


def update_run(model_dir: str, data_dir: str | None = None, tau_from: str | None = None) -> dict:
    """Recomputes a finished run's post_hoc section into its results.json (atomically); returns it."""
    from cdt_tf import analyze, train

    run = analyze.load_run(model_dir, data_dir)
    tau_from = tau_from or run.config.tau_from  # A --tau_from run keeps its held-out taus.
    taus_from, taus_from_name = read_taus(tau_from) if tau_from else (None, None)
    section = compute(
        run.model,
        run.class_counts,
        run.train_images,
        run.train_labels,
        run.test_images,
        run.test_labels,
        holdout_images=run.holdout_images,
        holdout_labels=run.holdout_labels,
        taus_from=taus_from,
        taus_from_name=taus_from_name,
    )
    results_path = os.path.join(model_dir, "results.json")
    results = analyze.read_json(results_path)
    # Keep entries this command does not compute (crt, from retrain_classifier).
    kept = {k: v for k, v in (results.get("post_hoc") or {}).items() if k not in METHODS}
    results["post_hoc"] = {**section, **kept}
    train.write_json(results_path, results)
    plot_sweeps(
        section, os.path.join(model_dir, "post_hoc.png"), os.path.basename(os.path.normpath(model_dir))
    )
    return section


def main(argv):
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    values = flags.FLAGS
    try:
        section = update_run(values.model_dir, values.data_dir, values.tau_from)
    except UserError as error:
        print(f"cdt_tf.post_hoc: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(format_section(section))
    print(f"Results: {os.path.join(values.model_dir, 'results.json')} (post_hoc); plot: post_hoc.png")


def define_flags():
    from absl import flags

    flags.DEFINE_string("model_dir", None, "A finished run directory (holds results.json and model.keras).")
    flags.DEFINE_string("data_dir", None, "Read the data from here instead of the run's own --data_dir.")
    flags.DEFINE_string(
        "tau_from", None, "A finished --holdout_per_class run: apply its held-out-selected taus here."
    )
    flags.mark_flag_as_required("model_dir")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import app

    define_flags()
    app.run(main)
