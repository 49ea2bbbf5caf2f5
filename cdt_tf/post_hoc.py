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
--holdout_per_class split, the paper's Table 9 protocol), "validation" (the run's --val_per_class
split), "holdout of <run>" (--tau_from: taus
chosen on another run's held-out split), or "test" (the paper's Table 2 protocol: tuned and
reported on the same test set; said so wherever shown). Ties go to the smallest tau.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from cdt_tf import calibration, class_stats, cli, diagnosis, evaluate, rundir
from cdt_tf.errors import UserError
from cdt_tf.features import Features

# 0, 0.01, ..., 0.5, then 0.55, ..., 2: N_c^tau's optimum for an ERM network is often near 0.1-0.3,
# where top-1 moves by points per 0.05 (log N_c spans about 8.5 on CIFAR-10-LT).
TAU_GRID = tuple(sorted({round(0.01 * i, 2) for i in range(51)} | {round(0.05 * i, 2) for i in range(41)}))
TAU_METHODS = ("nc_tau", "w_norm", "logit_adjustment")
METHODS = TAU_METHODS + ("ncm",)


def nc_tau(logits, features, kernel, class_counts, tau):
    return calibration.nc_tau_calibrate(logits, class_counts, tau)


def w_norm(logits, features, kernel, class_counts, tau):
    norms = np.linalg.norm(kernel, axis=0)
    return np.asarray(features, np.float64) @ (kernel / np.maximum(norms, 1e-12) ** tau)


def logit_adjustment(logits, features, kernel, class_counts, tau):
    return np.asarray(logits, np.float64) - tau * class_stats.log_prior(class_counts)


RULES: dict[str, Callable] = {"nc_tau": nc_tau, "w_norm": w_norm, "logit_adjustment": logit_adjustment}


def _top1(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(scores).argmax(1) == labels).mean())


def sweep(
    rule: Callable, split: Features, kernel, class_counts, taus: Sequence[float] = TAU_GRID
) -> list[float]:
    """Top-1 on `split` of `rule` at each tau."""
    return [
        _top1(rule(split.logits, split.features, kernel, class_counts, tau), split.labels) for tau in taus
    ]


def evaluate_post_hoc(
    class_counts: Sequence[int],
    kernel: np.ndarray,
    classifier_kind: str,
    train: Features,
    test: Features,
    holdout: Features | None = None,
    taus_from: dict | None = None,
    taus_from_name: str | None = None,
    holdout_name: str = "holdout",
) -> dict:
    """The results.json `post_hoc` section.

    Args:
      class_counts: N_c of the training subset the network was trained on.
      kernel: the classifier's kernel [D, C].
      classifier_kind: "linear" or "cosine" (w_norm is skipped for cosine: its norms are all 1).
      train: the training subset, unaugmented (its features give NCM's centres).
      test: the test split.
      holdout: the held-out split (selects tau), or None.
      taus_from: method -> tau chosen elsewhere (--tau_from); wins over holdout and test.
      taus_from_name: what to call where taus_from came from.
      holdout_name: what to call the selection split in `selected_on` ("holdout", or "validation"
        for the --val_per_class split).

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
            split_name, split = (holdout_name, holdout) if holdout is not None else ("test", test)
            top1s = sweep(rule, split, kernel, class_counts)
            tau = TAU_GRID[int(np.argmax(top1s))]  # argmax: the first (smallest) tau of the best.
            entry["selected_on"] = split_name
            entry["sweep"] = {"split": split_name, "taus": list(TAU_GRID), "top1": top1s}
        scores = rule(test.logits, test.features, kernel, class_counts, tau)
        section[method] = {"tau": tau, **_summary(scores, test.labels, class_counts), **entry}
    centres = diagnosis.class_means(diagnosis.l2_normalize(train.features), train.labels, len(class_counts))
    scores = diagnosis.nearest_center_scores(test.features, centres)
    section["ncm"] = {"tau": None, "selected_on": None, **_summary(scores, test.labels, class_counts)}
    return section


def _summary(scores, labels, class_counts) -> dict:
    summary = evaluate.summarize(scores, labels, class_counts)
    keys = ("top1", "top5", "many_medium_few", "per_class_accuracy")
    return {key: summary[key] for key in keys}


def read_taus(run_dir: str) -> tuple[dict, str]:
    """Taus selected on held-out data by a finished --holdout_per_class or --val_per_class run:
    ({method: tau}, its name)."""
    path = os.path.join(run_dir, rundir.RESULTS)
    if not os.path.exists(path):
        raise UserError(f"--tau_from={run_dir} holds no results.json; finish that run first")
    section = rundir.read_json(path, "object").get("post_hoc") or {}
    taus = {m: e["tau"] for m, e in section.items() if e.get("selected_on") in ("holdout", "validation")}
    if not taus:
        raise UserError(
            f"--tau_from={run_dir} has no held-out-selected taus; train it with --holdout_per_class=K "
            "or --val_per_class=K"
        )
    return taus, os.path.basename(os.path.normpath(run_dir))


def compute(model, data, test: Features | None = None, **kwargs) -> dict:
    """`evaluate_post_hoc` for a model and its `run_data.RunData`: one inference pass per split.

    Args:
      model: the trained network.
      data: the run's data (training subset, held-out or validation split, test split); tau is
        selected on the validation split when there is one, else on the held-out split, else on test.
      test: the test split's features when already extracted (the end of training has them).
      kwargs: taus_from, taus_from_name.
    """
    from cdt_tf import features  # Imports TensorFlow.

    probe = features.probe(model)
    kind, kernel = features.classifier(model)

    def extract(split: str) -> Features:
        positions = data.eval_positions(split) if split == "train" else None  # --eval_per_class.
        labels = data.labels(split) if positions is None else data.labels(split)[positions]
        return features.extract(probe, data.eval_dataset(split, positions), labels)

    selection = next((name for name in ("validation", "holdout") if data.size(name)), None)
    return evaluate_post_hoc(
        data.class_counts,
        kernel,
        kind,
        extract("train"),
        test if test is not None else extract("test"),
        extract(selection) if selection else None,
        **kwargs,
        holdout_name=selection or "holdout",
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
    run = rundir.load_finished(model_dir, data_dir)
    tau_from = tau_from or run.config.tau_from  # A --tau_from run keeps its held-out taus.
    taus_from, taus_from_name = read_taus(tau_from) if tau_from else (None, None)
    section = compute(run.model, run.data, taus_from=taus_from, taus_from_name=taus_from_name)
    results_path = os.path.join(model_dir, rundir.RESULTS)
    results = rundir.read_json(results_path, "object")
    # Keep entries this command does not compute (crt, from retrain_classifier).
    kept = {k: v for k, v in (results.get("post_hoc") or {}).items() if k not in METHODS}
    results["post_hoc"] = {**section, **kept}
    rundir.write_json(results_path, results)
    plot_sweeps(
        section,
        os.path.join(model_dir, rundir.POST_HOC_PLOT),
        os.path.basename(os.path.normpath(model_dir)),
    )
    return section


def define_flags(flag_values) -> None:
    """The flags of `python -m cdt_tf.post_hoc`."""
    from absl import flags

    flags.DEFINE_string(
        "model_dir",
        None,
        "A finished run directory (holds results.json and model.keras).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "data_dir",
        None,
        "Read the data from here instead of the run's own --data_dir.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "tau_from",
        None,
        "A finished --holdout_per_class run: apply its held-out-selected taus here.",
        flag_values=flag_values,
    )
    flags.mark_flag_as_required("model_dir", flag_values=flag_values)


def command(flag_values) -> None:
    """`python -m cdt_tf.post_hoc`: recompute a finished run's post_hoc section and print it."""
    section = update_run(flag_values.model_dir, flag_values.data_dir, flag_values.tau_from)
    print(format_section(section))
    print(f"Results: {os.path.join(flag_values.model_dir, rundir.RESULTS)} (post_hoc); plot: post_hoc.png")


def run() -> None:
    cli.run(define_flags, command)


if __name__ == "__main__":
    run()
