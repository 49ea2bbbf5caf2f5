r"""Classifier retraining on frozen features (cRT, Kang et al. 2020) and the paper's Table 5.

  # cRT: a new linear classifier on the run's own (imbalanced) subset, class-balanced batches.
  python -m cdt_tf.retrain_classifier --model_dir=runs/cifar10_lt100_ce
  # Table 5: imbalanced features, classifier retrained on a balanced subset of 1,240 a class.
  python -m cdt_tf.retrain_classifier --model_dir=runs/cifar10_lt100_ce \
      --imbalance=none --max_per_class=1240 --sampler=instance
  # Table 5: balanced features (flags/cifar10_balanced1240_ce.cfg), imbalanced classifier.
  python -m cdt_tf.retrain_classifier --model_dir=runs/cifar10_balanced1240_ce \
      --imbalance=exp --imbalance_ratio=100 --max_per_class=5000 --sampler=instance
  # MiSLAS's stage 2 with shift learning on batch normalization (crt_las_shift; shift_learning).
  python -m cdt_tf.retrain_classifier --model_dir=runs/cifar10_lt100_ce --method=shift --smooth_head=0.3
  # Weight balancing's stage 2: class-balanced loss, weight decay and MaxNorm (wb; weight_balancing).
  python -m cdt_tf.retrain_classifier --model_dir=runs/cifar10_lt100_ce --method=wb

The network is frozen: the features f(x) of the chosen training subset are extracted once,
unaugmented (one inference pass), and a new Dense classifier (with bias) is trained on them
with SGD (momentum 0.9, cosine-decayed learning rate, weight decay as the run's). Kang et
al. retrain through the frozen network with augmentation; precomputed features make it
seconds instead of epochs (our choice, stated in results). Writes
`<model_dir>/retrained_<tag>.json`, the new classifier's weights beside it
(`retrained_<tag>.npz`, kernel and bias) and, for cRT proper (the run's own subset with
class-balanced sampling), the `post_hoc.crt` entry of results.json (`crt_las` with label-aware
smoothing, `crt_bn`/`crt_las_bn` on re-estimated batch-norm statistics). --method=shift and
--method=wb record `crt_shift`/`crt_las_shift` and `wb` on the run's own subset (their modules say
what they do and how they differ from their papers' code). `python -m cdt_tf.export
--classifier=<that key>` exports the network with that classifier in place of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time

from cdt_tf import (
    catalog,
    class_stats,
    cli,
    durability,
    evaluate,
    linear_head,
    rundir,
    shift_learning,
    weight_balancing,
)
from cdt_tf.errors import UserError
from cdt_tf.features import extract, probe

BN_STATS = ("trained", "class_balanced")
# --epochs when not given: cRT's 30; MiSLAS's and weight balancing's second stages run 10.
DEFAULT_EPOCHS = {"crt": 30, "shift": shift_learning.EPOCHS, "wb": weight_balancing.EPOCHS}


def posthoc_key(smoothing: bool, batch_norm: bool, method: str = "crt") -> str:
    """results.json's post_hoc key of a retrained classifier: one of catalog.SECOND_STAGES."""
    if method == "wb":
        return "wb"
    suffix = "_shift" if method == "shift" else "_bn" if batch_norm else ""
    return "crt" + ("_las" if smoothing else "") + suffix


def stage_options(
    method: str, shift_lr_factor=0.2, shift_affine=False, wb_weight_decay=0.1, wb_threshold=0.1
):
    """The hyperparameters a second stage's record keeps (`options`) for a catalog.RETRAIN_METHODS
    entry (`catalog.retrain_method` of a stage's name); {} for cRT's."""
    if method == "shift":
        return {"lr_factor": shift_lr_factor, "affine": bool(shift_affine)}
    if method == "wb":
        return {"weight_decay": wb_weight_decay, "threshold": wb_threshold}
    return {}


def second_stage(
    model_dir: str,
    name: str,
    smooth_head: float,
    smooth_tail: float,
    data_dir: str | None = None,
    options: dict | None = None,
) -> dict:
    """One of catalog.SECOND_STAGES on a finished run (on its own subset): its record.

    smooth_head/smooth_tail apply to the *_las stages only; options are `stage_options(method, ...)`.
    A record already in results.json's post_hoc.<name> with the same smoothing and options is
    returned as it is; else the classifier is retrained.
    """
    if name not in catalog.SECOND_STAGES:
        raise UserError(f"unknown second stage {name!r}; use one of {', '.join(catalog.SECOND_STAGES)}")
    smoothing = (smooth_head, smooth_tail) if "_las" in name else (0.0, 0.0)
    options = options or {}
    results = rundir.read_json(os.path.join(model_dir, rundir.RESULTS), "object")
    record = (results.get("post_hoc") or {}).get(name)
    if record:
        recorded = record.get("label_aware_smoothing") or {}
        same = (recorded.get("head", 0.0), recorded.get("tail", 0.0)) == smoothing
        if same and (record.get("options") or {}) == options:
            return record
    print(f"Second stage: {name} on the trained network ...", flush=True)
    method = catalog.retrain_method(name)
    return retrain(
        model_dir,
        epochs=DEFAULT_EPOCHS[method],
        data_dir=data_dir,
        smooth_head=smoothing[0],
        smooth_tail=smoothing[1],
        bn_stats="class_balanced" if name.endswith("_bn") else "trained",
        method=method,
        options=options,
    )


def retrain(
    model_dir: str,
    imbalance: str | None = None,
    imbalance_ratio: float | None = None,
    max_per_class: int | None = None,
    sampler: str = "class_balanced",
    epochs: int = 30,
    data_dir: str | None = None,
    smooth_head: float = 0.0,
    smooth_tail: float = 0.0,
    bn_stats: str = "trained",
    method: str = "crt",
    options: dict | None = None,
) -> dict:
    """Retrains the classifier of a finished run on its frozen network; writes and returns the record.

    smooth_head, smooth_tail: label-aware smoothing (MiSLAS's second stage) of the new classifier's
    targets, eps from smooth_head (largest class) to smooth_tail (smallest); both 0: one-hot (cRT).
    bn_stats: "trained" keeps the network's batch-norm statistics; "class_balanced" re-estimates
    them first on one pass of class-balanced, pad-crop-flipped batches of the classifier data
    (`models.reestimate_batch_norm`), and the weights file carries them.
    method: "crt" (a new classifier on frozen features, `sampler`'s batches), "shift" (MiSLAS's
    stage 2 with shift learning on batch normalization, `shift_learning`; class-balanced) or "wb"
    (weight balancing's stage 2, `weight_balancing`; instance batches); options: their
    `stage_options` (None: the defaults).
    The record holds the test split's accuracy and, for a run with --val_per_class, the
    validation split's (choose the smoothing there), and the stage's wall time in `seconds`.
    """
    options = {**stage_options(method), **(options or {})}
    _check_options(smooth_head, smooth_tail, bn_stats, method, options)
    started = time.monotonic()
    run = rundir.load_finished(model_dir, data_dir)
    config, data, own = classifier_data(run, imbalance, imbalance_ratio, max_per_class)
    counts = data.class_counts
    print(
        f"Retraining the classifier on {data.size('train')} images, per class {list(counts)} ...", flush=True
    )
    smoothing = None
    if smooth_head or smooth_tail:
        smoothing = class_stats.label_aware_smoothing(counts, smooth_head, smooth_tail)
    kernel, bias, batch_norm, affine, fields = _train_head(
        method, run, config, data, sampler, epochs, smoothing, bn_stats, options
    )
    summary, validation = _evaluate_classifier(probe(run.model), run, kernel, bias)
    record = {
        "features_from": os.path.basename(os.path.normpath(model_dir)),
        **_training_record(config, counts, sampler, epochs, smoothing, smooth_head, smooth_tail, bn_stats),
        **fields,
        **_accuracy_record(summary, validation),
        # Wall time of the whole second stage: loading the run, the network passes and the training.
        "seconds": round(time.monotonic() - started, 1),
    }
    tag = record_tag(
        config, own, smoothing, smooth_head, smooth_tail, batch_norm if method == "crt" else None
    )
    name = f"retrained_{tag}{'' if method == 'crt' else '_' + method}_{record['sampler']}"
    rundir.write_classifier(os.path.join(model_dir, f"{name}.npz"), kernel, bias, batch_norm, affine)
    record["weights"] = f"{name}.npz"  # `python -m cdt_tf.export --classifier=crt` serves these.
    rundir.write_json(os.path.join(model_dir, f"{name}.json"), record)
    if own and (sampler == "class_balanced" or method != "crt"):
        key = posthoc_key(smoothing is not None, batch_norm is not None, method)
        _record_post_hoc(model_dir, key, record)
    return record


def _train_head(method, run, config, data, sampler, epochs, smoothing, bn_stats, options):
    """The new classifier of `retrain`: (kernel [D, C], bias [C], batch-norm statistics to save or
    None, batch-norm (gamma, beta) to save or None, the record's fields of the method)."""
    from cdt_tf import models  # Imports TensorFlow: after the run directory is known good.

    if method == "shift":  # Through the network: it leaves the batch norms shifted in run.model.
        kernel, bias, fields = shift_learning.train_with_shift(
            run.model, config, data, smoothing, epochs, options["lr_factor"], options["affine"]
        )
        affine = models.batch_norm_affine(run.model) if options["affine"] else None
        return kernel, bias, models.batch_norm_statistics(run.model), affine, fields
    batch_norm = None
    if bn_stats == "class_balanced":
        batch_norm = class_balanced_batch_norm(run.model, config, data)
    train = extract(probe(run.model), data.eval_dataset("train"), data.labels("train"))
    if method == "wb":
        start = linear_head.trained_classifier(run.model)
        kernel, bias, fields = weight_balancing.train(
            train, data.class_counts, start, epochs=epochs, seed=config.seed, **options
        )
        return kernel, bias, batch_norm, None, fields
    kernel, bias = linear_head.train_linear_classifier(
        train.features,
        train.labels,
        len(run.class_names),
        sampler=sampler,
        epochs=epochs,
        weight_decay=config.weight_decay,
        seed=config.seed,
        smoothing=smoothing,
    )
    return kernel, bias, batch_norm, None, {}


def _check_options(smooth_head: float, smooth_tail: float, bn_stats: str, method: str, options: dict) -> None:
    """Refuses (UserError) a --bn_stats, smoothing or method option that `retrain` does not take."""
    if bn_stats not in BN_STATS:
        raise UserError(f"--bn_stats must be one of {', '.join(BN_STATS)}, got {bn_stats!r}")
    for flag, value in (("--smooth_head", smooth_head), ("--smooth_tail", smooth_tail)):
        if not 0 <= value < 1:
            raise UserError(f"{flag} must be in [0, 1) (both 0: plain cRT), got {value}")
    if method not in catalog.RETRAIN_METHODS:
        raise UserError(f"--method must be one of {', '.join(catalog.RETRAIN_METHODS)}, got {method!r}")
    if method != "crt" and bn_stats != "trained":
        raise UserError(
            f"--bn_stats=class_balanced is cRT's (crt_bn); --method={method} keeps the trained ones"
        )
    if method == "wb" and (smooth_head or smooth_tail):
        raise UserError("--method=wb trains with the class-balanced loss; drop --smooth_head/--smooth_tail")
    for flag, key, valid, wanted in (
        ("--shift_lr_factor", "lr_factor", lambda v: v > 0, "> 0"),
        ("--wb_weight_decay", "weight_decay", lambda v: v >= 0, ">= 0"),
        ("--wb_threshold", "threshold", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ):
        if key in options and not valid(options[key]):
            raise UserError(f"{flag} must be {wanted}, got {options[key]}")


def classifier_data(run, imbalance, imbalance_ratio, max_per_class):
    """The data the new classifier trains on: the run's own subset, or another subset of its source.

    Args:
      run: the finished run (`rundir.load_finished`).
      imbalance, imbalance_ratio, max_per_class: the other subset's; None keeps the run's value.
        All three None: the run's own subset (cRT proper).

    Returns:
      (config, data, own): the config that draws the subset (no held-out or validation images
      when it is another subset), its `run_data` data, and whether it is the run's own.
    """
    from cdt_tf import run_data  # Imports TensorFlow: after the directory is known good.

    own = imbalance is None and imbalance_ratio is None and max_per_class is None
    if own:
        return run.config, run.data, own
    config = dataclasses.replace(
        run.config,
        imbalance=imbalance if imbalance is not None else run.config.imbalance,
        imbalance_ratio=imbalance_ratio if imbalance_ratio is not None else run.config.imbalance_ratio,
        max_per_class=max_per_class if max_per_class is not None else run.config.max_per_class,
        holdout_per_class=0,
        val_per_class=0,
    ).validate()
    return config, run_data.load(config), own


def class_balanced_batch_norm(model, config, data) -> dict:
    """Re-estimates the model's batch-norm statistics on class-balanced batches; returns them.

    One pass (the training images' count in batches) of class-balanced batches of `data`, augmented
    by pad-crop-flip only (no MixUp, CutMix, RandAugment or Cutout), as `batch_norm_statistics`.
    """
    from cdt_tf import models

    stream = shift_learning.pad_crop_flip_batches(config, data)
    steps = max(1, data.size("train") // config.batch_size)
    print(f"Re-estimating the batch-norm statistics on {steps} class-balanced batches ...", flush=True)
    models.reestimate_batch_norm(model, stream, steps)
    return models.batch_norm_statistics(model)


def _evaluate_classifier(network, run, kernel, bias) -> tuple[dict, dict | None]:
    """`evaluate.summarize` of features @ kernel + bias on the run's test split and validation split
    (None for a run without one), counted by the run's own class counts."""
    test = extract(network, run.data.eval_dataset("test"), run.data.labels("test"))
    summary = evaluate.summarize(test.features @ kernel + bias, test.labels, run.class_counts)
    validation = None
    if run.data.size("validation"):
        held = extract(network, run.data.eval_dataset("validation"), run.data.labels("validation"))
        validation = evaluate.summarize(held.features @ kernel + bias, held.labels, run.class_counts)
    return summary, validation


def record_tag(config, own: bool, smoothing, smooth_head: float, smooth_tail: float, batch_norm) -> str:
    """The files' tag: the classifier data ("own", "balanced_max<N>", "<imbalance><ratio>_max<N>"),
    then "_las<head>-<tail>" with label-aware smoothing and "_bn" with re-estimated batch norms."""
    if own:
        tag = "own"
    elif config.imbalance == "none":
        tag = f"balanced_max{config.max_per_class}"
    else:
        tag = f"{config.imbalance}{config.imbalance_ratio:g}_max{config.max_per_class}"
    if smoothing is not None:
        tag += f"_las{smooth_head:g}-{smooth_tail:g}"
    if batch_norm is not None:
        tag += "_bn"
    return tag


def _training_record(config, counts, sampler, epochs, smoothing, smooth_head, smooth_tail, bn_stats) -> dict:
    """The record's description of how the new classifier was trained: data, sampler, smoothing."""
    return {
        "classifier_data": {
            "imbalance": config.imbalance,
            "imbalance_ratio": config.imbalance_ratio,
            "max_per_class": config.max_per_class,
            "class_counts": [int(c) for c in counts],
        },
        "sampler": sampler,
        "epochs": epochs,
        "label_aware_smoothing": (
            None
            if smoothing is None
            else {
                "head": smooth_head,
                "tail": smooth_tail,
                "epsilon": [round(float(e), 6) for e in smoothing],
            }
        ),
        "bn_stats": bn_stats,
        "method": "new Dense on frozen, unaugmented features; SGD 0.9, cosine-decayed LR 0.1, batch 512",
    }


def _accuracy_record(summary: dict, validation: dict | None) -> dict:
    """The record's accuracies: the test split's, and the validation split's (or None)."""
    return {
        "top1": summary["top1"],
        "top5": summary["top5"],
        "many_medium_few": summary["many_medium_few"],
        "per_class_accuracy": summary["per_class_accuracy"],
        "validation": (
            None
            if validation is None
            else {k: validation[k] for k in ("top1", "top5", "many_medium_few", "per_class_accuracy")}
        ),
    }


def _record_post_hoc(model_dir: str, key: str, record: dict) -> None:
    """Adds a cRT record on the run's own subset to results.json as post_hoc.<key> (its tau: None)."""
    results_path = os.path.join(model_dir, rundir.RESULTS)
    results = rundir.read_json(results_path, "object")
    results.setdefault("post_hoc", {})[key] = {"tau": None, "selected_on": None, **record}
    rundir.write_json(results_path, results)


def command(flag_values) -> None:
    """`python -m cdt_tf.retrain_classifier`: retrain, write the record, print its top-1."""
    f = flag_values
    # One writer: not beside the run's own training or another retraining (a missing folder: retrain says so).
    lock = durability.exclusive(f.model_dir) if os.path.isdir(f.model_dir) else contextlib.nullcontext()
    options = stage_options(f.method, f.shift_lr_factor, f.shift_affine, f.wb_weight_decay, f.wb_threshold)
    with lock:
        record = retrain(
            f.model_dir,
            f.imbalance,
            f.imbalance_ratio,
            f.max_per_class,
            f.sampler,
            f.epochs or DEFAULT_EPOCHS[f.method],
            f.data_dir,
            f.smooth_head,
            f.smooth_tail,
            f.bn_stats,
            f.method,
            options,
        )
    groups = ", ".join(
        f"{k} {'—' if v is None else f'{100 * v:.2f}%'}" for k, v in record["many_medium_few"].items()
    )
    held = "" if record["validation"] is None else f" (validation {100 * record['validation']['top1']:.2f}%)"
    print(
        f"Retrained classifier: top-1 {100 * record['top1']:.2f}%{held} | {groups} "
        f"| {record['seconds']:.0f} s"
    )


def define_flags(flag_values) -> None:
    """The flags of `python -m cdt_tf.retrain_classifier`."""
    from absl import flags

    define = {
        kind: functools.partial(getattr(flags, f"DEFINE_{kind}"), flag_values=flag_values)
        for kind in ("string", "enum", "float", "integer", "bool")
    }
    define["string"]("model_dir", None, "A finished run directory: its network gives the features.")
    define["string"]("data_dir", None, "Read the data from here instead of the run's own --data_dir.")
    define["enum"](
        "imbalance", None, class_stats.PROFILES, "Classifier data: profile (default: the run's own subset)."
    )
    define["float"]("imbalance_ratio", None, "Classifier data: rho (default: the run's).")
    define["integer"]("max_per_class", None, "Classifier data: N_max (default: the run's).")
    define["enum"](
        "method",
        "crt",
        catalog.RETRAIN_METHODS,
        "crt: a new classifier on frozen features; shift: MiSLAS's stage 2 (crt_shift, crt_las_shift); "
        "wb: weight balancing's stage 2.",
    )
    define["enum"]("sampler", "class_balanced", catalog.SAMPLERS[::-1], "--method=crt: the batches.")
    define["integer"]("epochs", None, "Epochs over the classifier data (default: crt 30, shift and wb 10).")
    define["float"](
        "shift_lr_factor",
        0.2,
        "--method=shift: the classifier's learning rate over the logit scale's 0.1 (MiSLAS's lr_factor).",
    )
    define["bool"](
        "shift_affine",
        False,
        "--method=shift: also learn the batch norms' gamma and beta (MiSLAS keeps them fixed).",
    )
    define["float"]("wb_weight_decay", 0.1, "--method=wb: the weight decay of the classifier (theirs: 0.1).")
    define["float"](
        "wb_threshold",
        0.1,
        "--method=wb: MaxNorm radius min + t (max - min) of the trained classifier's norms, t in [0, 1].",
    )
    define["float"](
        "smooth_head",
        0.0,
        "Label-aware smoothing (Zhong et al. 2021): eps of the largest class, in [0, 1). With "
        "--smooth_tail, eps_c falls from head to tail along sin(pi/2 (N_c - N_min) / (N_max - N_min)). "
        "0 and 0: one-hot targets (plain cRT).",
    )
    define["float"]("smooth_tail", 0.0, "Label-aware smoothing: eps of the smallest class, in [0, 1).")
    define["enum"](
        "bn_stats",
        "trained",
        BN_STATS,
        "Batch-norm statistics of the features: the network's own (trained), or re-estimated first "
        "on one pass of class-balanced batches of the classifier data (class_balanced).",
    )
    flags.mark_flag_as_required("model_dir", flag_values=flag_values)


def run() -> None:
    cli.run(define_flags, command)


if __name__ == "__main__":
    run()
