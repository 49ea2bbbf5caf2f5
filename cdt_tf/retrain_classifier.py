r"""Classifier retraining on frozen features (cRT, Kang et al. 2020) and the paper's Table 5.

  # cRT: a new linear classifier on the run's own (imbalanced) subset, class-balanced batches.
  python -m cdt_tf.retrain_classifier --model_dir=runs/cifar10_lt100_ce
  # Table 5: imbalanced features, classifier retrained on a balanced subset of 1,240 a class.
  python -m cdt_tf.retrain_classifier --model_dir=runs/cifar10_lt100_ce \
      --imbalance=none --max_per_class=1240 --sampler=instance
  # Table 5: balanced features (flags/cifar10_balanced1240_ce.cfg), imbalanced classifier.
  python -m cdt_tf.retrain_classifier --model_dir=runs/cifar10_balanced1240_ce \
      --imbalance=exp --imbalance_ratio=100 --max_per_class=5000 --sampler=instance

The network is frozen: the features f(x) of the chosen training subset are extracted once,
unaugmented (one inference pass), and a new Dense classifier (with bias) is trained on them
with SGD (momentum 0.9, cosine-decayed learning rate, weight decay as the run's). Kang et
al. retrain through the frozen network with augmentation; precomputed features make it
seconds instead of epochs (our choice, stated in results). Writes
`<model_dir>/retrained_<tag>.json`, the new classifier's weights beside it
(`retrained_<tag>.npz`, kernel and bias) and, for cRT proper (the run's own subset with
class-balanced sampling), the `post_hoc.crt` entry of results.json (`crt_las` with label-aware
smoothing, `crt_bn`/`crt_las_bn` on re-estimated batch-norm statistics). `python -m cdt_tf.export
--classifier=<that key>` exports the network with that classifier in place of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time

import numpy as np

from cdt_tf import catalog, class_stats, cli, durability, evaluate, rundir
from cdt_tf.errors import UserError
from cdt_tf.features import extract, probe

BN_STATS = ("trained", "class_balanced")


def posthoc_key(smoothing: bool, batch_norm: bool) -> str:
    """results.json's post_hoc key of a cRT variant: one of catalog.SECOND_STAGES."""
    return "crt" + ("_las" if smoothing else "") + ("_bn" if batch_norm else "")


def second_stage(
    model_dir: str, name: str, smooth_head: float, smooth_tail: float, data_dir: str | None = None
) -> dict:
    """One of catalog.SECOND_STAGES on a finished run (cRT on its own subset): its record.

    smooth_head/smooth_tail apply to the *_las stages only. A record already in results.json's
    post_hoc.<name> with the same smoothing is returned as it is; else the classifier is retrained.
    """
    if name not in catalog.SECOND_STAGES:
        raise UserError(f"unknown second stage {name!r}; use one of {', '.join(catalog.SECOND_STAGES)}")
    smoothing = (smooth_head, smooth_tail) if "_las" in name else (0.0, 0.0)
    results = rundir.read_json(os.path.join(model_dir, rundir.RESULTS), "object")
    record = (results.get("post_hoc") or {}).get(name)
    if record:
        recorded = record.get("label_aware_smoothing") or {}
        if (recorded.get("head", 0.0), recorded.get("tail", 0.0)) == smoothing:
            return record
    print(f"Second stage: {name} on the frozen features ...", flush=True)
    bn_stats = "class_balanced" if name.endswith("_bn") else "trained"
    return retrain(
        model_dir, data_dir=data_dir, smooth_head=smoothing[0], smooth_tail=smoothing[1], bn_stats=bn_stats
    )


def train_linear_classifier(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    sampler: str = "class_balanced",
    epochs: int = 30,
    batch_size: int = 512,
    learning_rate: float = 0.1,
    weight_decay: float = 2e-4,
    seed: int = 0,
    smoothing=None,
):
    """A new Dense(num_classes) on fixed features; returns (kernel [D, C], bias [C]).

    sampler: "class_balanced" (each class equally likely per example; cRT) or "instance".
    smoothing: per-class label smoothing eps_c [C] (label-aware smoothing), or None for one-hot
    targets; the loss is then the cross-entropy against `class_stats.smoothed_targets`.
    An epoch is len(labels) // batch_size steps (at least 1).
    """
    import keras
    import tensorflow as tf

    from cdt_tf import input_pipeline
    from cdt_tf.optimizers import CoupledDecaySGD

    keras.utils.set_random_seed(seed)
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int64)
    steps = max(1, len(labels) // batch_size)
    if sampler == "class_balanced":
        features_t, labels_t = tf.constant(features), tf.constant(labels)
        dataset = input_pipeline.class_balanced_indices(labels, seed).map(
            lambda i: (tf.gather(features_t, i), tf.gather(labels_t, i))
        )
    elif sampler == "instance":
        dataset = (
            tf.data.Dataset.from_tensor_slices((features, labels))
            .shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
            .repeat()
        )
    else:
        raise UserError(f"unknown --sampler {sampler!r}; use class_balanced or instance")
    dataset = dataset.batch(batch_size, drop_remainder=True)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if smoothing is not None:
        targets = tf.constant(class_stats.smoothed_targets(smoothing), tf.float32)
        dataset = dataset.map(lambda x, y: (x, tf.gather(targets, y)))
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    inputs = keras.Input(shape=(features.shape[1],), name="features")
    outputs = keras.layers.Dense(num_classes, name="classifier")(inputs)
    head = keras.Model(inputs, outputs)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps)
    head.compile(
        optimizer=CoupledDecaySGD(coupled_weight_decay=weight_decay, learning_rate=schedule, momentum=0.9),
        loss=loss,
    )
    head.fit(dataset, epochs=epochs, steps_per_epoch=steps, verbose=0, shuffle=False)
    layer = head.get_layer("classifier")
    return keras.ops.convert_to_numpy(layer.kernel), keras.ops.convert_to_numpy(layer.bias)


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
) -> dict:
    """Retrains the classifier of a finished run on frozen features; writes and returns the record.

    smooth_head, smooth_tail: label-aware smoothing (MiSLAS's second stage) of the new classifier's
    targets, eps from smooth_head (largest class) to smooth_tail (smallest); both 0: one-hot (cRT).
    bn_stats: "trained" keeps the network's batch-norm statistics; "class_balanced" re-estimates
    them first on one pass of class-balanced, pad-crop-flipped batches of the classifier data
    (`models.reestimate_batch_norm`), and the weights file carries them.
    The record holds the test split's accuracy and, for a run with --val_per_class, the
    validation split's (choose the smoothing there), and the stage's wall time in `seconds`.
    """
    _check_options(smooth_head, smooth_tail, bn_stats)
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
    batch_norm = None
    if bn_stats == "class_balanced":
        batch_norm = class_balanced_batch_norm(run.model, config, data)
    network = probe(run.model)
    train = extract(network, data.eval_dataset("train"), data.labels("train"))
    kernel, bias = train_linear_classifier(
        train.features,
        train.labels,
        len(run.class_names),
        sampler=sampler,
        epochs=epochs,
        weight_decay=config.weight_decay,
        seed=config.seed,
        smoothing=smoothing,
    )
    summary, validation = _evaluate_classifier(network, run, kernel, bias)
    record = {
        "features_from": os.path.basename(os.path.normpath(model_dir)),
        **_training_record(config, counts, sampler, epochs, smoothing, smooth_head, smooth_tail, bn_stats),
        **_accuracy_record(summary, validation),
        # Wall time of the whole second stage: loading the run, the feature passes and the training.
        "seconds": round(time.monotonic() - started, 1),
    }
    name = f"retrained_{record_tag(config, own, smoothing, smooth_head, smooth_tail, batch_norm)}_{sampler}"
    rundir.write_classifier(os.path.join(model_dir, f"{name}.npz"), kernel, bias, batch_norm)
    record["weights"] = f"{name}.npz"  # `python -m cdt_tf.export --classifier=crt` serves these.
    rundir.write_json(os.path.join(model_dir, f"{name}.json"), record)
    if own and sampler == "class_balanced":
        _record_post_hoc(model_dir, posthoc_key(smoothing is not None, batch_norm is not None), record)
    return record


def _check_options(smooth_head: float, smooth_tail: float, bn_stats: str) -> None:
    """Refuses (UserError) a --bn_stats or a label-aware smoothing that `retrain` does not take."""
    if bn_stats not in BN_STATS:
        raise UserError(f"--bn_stats must be one of {', '.join(BN_STATS)}, got {bn_stats!r}")
    for flag, value in (("--smooth_head", smooth_head), ("--smooth_tail", smooth_tail)):
        if not 0 <= value < 1:
            raise UserError(f"{flag} must be in [0, 1) (both 0: plain cRT), got {value}")


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

    stream = data.train_dataset(
        dataclasses.replace(
            config,
            sampler="class_balanced",
            mixup_alpha=0.0,
            cutmix_alpha=0.0,
            randaugment_magnitude=0.0,
            cutout=0,
        )
    )
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
    with lock:
        record = retrain(
            f.model_dir,
            f.imbalance,
            f.imbalance_ratio,
            f.max_per_class,
            f.sampler,
            f.epochs,
            f.data_dir,
            f.smooth_head,
            f.smooth_tail,
            f.bn_stats,
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
        for kind in ("string", "enum", "float", "integer")
    }
    define["string"]("model_dir", None, "A finished run directory: its network gives the features.")
    define["string"]("data_dir", None, "Read the data from here instead of the run's own --data_dir.")
    define["enum"](
        "imbalance", None, class_stats.PROFILES, "Classifier data: profile (default: the run's own subset)."
    )
    define["float"]("imbalance_ratio", None, "Classifier data: rho (default: the run's).")
    define["integer"]("max_per_class", None, "Classifier data: N_max (default: the run's).")
    define["enum"]("sampler", "class_balanced", catalog.SAMPLERS[::-1], "Batches for the new classifier.")
    define["integer"]("epochs", 30, "Epochs over the classifier data.")
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
