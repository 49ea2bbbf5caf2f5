"""train_and_evaluate(config): the one place that wires data, model, loss and callbacks together."""

from __future__ import annotations

import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cdt_tf import (
    class_stats,
    datasets,
    distribution,
    evaluate,
    input_pipeline,
    losses,
    models,
    multi_worker,
    post_hoc,
    schedules,
)
from cdt_tf.callbacks import (
    GuardedBackupAndRestore,
    GuardedModelCheckpoint,
    MetricsJsonl,
    PerClassEvaluation,
    ScheduleLogger,
    StopOnNaN,
    TrainingStatistics,
    VariableSchedule,
)
from cdt_tf.config import Config
from cdt_tf.errors import TrainingError, UserError
from cdt_tf.optimizers import CoupledDecaySGD
from cdt_tf.schedules import WarmupStepDecay

EVAL_BATCH_SIZE = 500


def prepare_model_dir(config: Config) -> dict | None:
    """Creates model_dir and writes config.json; refuses a directory holding another run.

    Returns the stored results when this exact run already finished, else None.
    """
    os.makedirs(config.model_dir, exist_ok=True)
    config_path = os.path.join(config.model_dir, "config.json")
    if os.path.exists(config_path):
        try:
            with open(config_path) as f:
                stored = json.load(f)
        except (OSError, json.JSONDecodeError) as error:
            raise UserError(f"{config_path} is unreadable ({error}); use a new --model_dir") from error
        differences = config.differences(stored)
        if differences:
            shown = ", ".join(
                f"{k}: {stored.get(k)!r} -> {config.to_dict().get(k)!r}" for k in differences[:4]
            )
            raise UserError(
                f"--model_dir {config.model_dir} holds a run with another config ({shown}); "
                "use a new --model_dir, or the same flags to resume it"
            )
        results_path = os.path.join(config.model_dir, "results.json")
        if os.path.exists(results_path):
            with open(results_path) as f:
                return json.load(f)
    write_json(config_path, config.to_dict())
    return None


def write_json(path: str, value) -> None:
    """Writes JSON atomically: a killed process never leaves a half-written file."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
    os.replace(temporary, path)


def split_holdout(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into labels) of the kept and held-out examples: per_class of each class held out.

    Seeded per class, like `select_subset`. Raises UserError when a class would keep no image.
    """
    labels = np.asarray(labels)
    held = []
    for c in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == c)
        if len(members) <= per_class:
            raise UserError(
                f"--holdout_per_class={per_class} leaves class {c} ({len(members)} images) nothing to "
                "train on; lower --holdout_per_class"
            )
        held.append(np.random.default_rng([seed, c, 1]).choice(members, size=per_class, replace=False))
    held = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), held), held


def load_data(config: Config):
    """The source, the training subset (indices, labels, counts) and the held-out indices.

    With --holdout_per_class=K, K images per class of the imbalanced subset are held out
    (the returned counts are of what is left); otherwise the held-out indices are empty.
    """
    source = datasets.load_source(config.dataset, config.data_dir, config.image_size)
    pool_counts = np.bincount(source.train.labels, minlength=source.num_classes)
    if (pool_counts == 0).any():
        empty = [source.class_names[c] for c in np.flatnonzero(pool_counts == 0)]
        raise UserError(f"classes {empty} have no training images; add images or remove those classes")
    if config.dataset in datasets.AS_IS_DATASETS and config.imbalance == "none":
        indices = np.arange(len(source.train.labels))
    else:
        max_per_class = config.max_per_class or int(pool_counts.min())
        counts = class_stats.imbalanced_counts(
            source.num_classes, max_per_class, config.imbalance_ratio, config.imbalance
        )
        if min(counts) < 1:
            raise UserError(
                f"--imbalance_ratio={config.imbalance_ratio} leaves a class with no image "
                f"(N_max={max_per_class}); lower the ratio or raise --max_per_class"
            )
        indices = input_pipeline.select_subset(source.train.labels, counts, config.seed)
    holdout = np.zeros(0, np.int64)
    if config.holdout_per_class:
        kept, held = split_holdout(source.train.labels[indices], config.holdout_per_class, config.seed)
        indices, holdout = indices[kept], indices[held]
    labels = source.train.labels[indices]
    class_counts = np.bincount(labels, minlength=source.num_classes).tolist()
    return source, indices, labels, class_counts, holdout


def build_loss(config: Config, class_counts) -> keras.losses.Loss:
    """The --loss objective. With DRW its class weights start at 1 (see `loss_schedules`)."""
    common = {"weight_reduction": config.class_weight_reduction}
    if config.drw_epoch:
        common["class_weights"] = [1.0] * len(class_counts)
    if config.loss == "ce":
        if not config.drw_epoch:
            return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return losses.WeightedCrossEntropy(class_counts, **common)
    if config.loss == "cdt":
        return losses.CDTLoss(class_counts, _initial_gamma(config), **common)
    if config.loss == "reweight":
        return losses.ReweightedCrossEntropy(class_counts, _initial_gamma(config), **common)
    if config.loss == "focal":
        return losses.FocalLoss(class_counts, config.focal_gamma, **common)
    if config.loss == "cb":
        focal_gamma = config.focal_gamma if config.cb_loss == "focal" else 0.0
        return losses.ClassBalancedLoss(class_counts, config.cb_beta, focal_gamma, **common)
    if config.loss == "ldam":
        return losses.LDAMLoss(class_counts, config.ldam_max_margin, config.ldam_scale, **common)
    if config.loss == "la":
        return losses.LogitAdjustedLoss(class_counts, config.la_tau, **common)
    raise UserError(f"unknown loss {config.loss!r}")


def _initial_gamma(config: Config) -> float:
    return schedules.gamma_at(0, config.gamma, config.gamma_schedule, config.gamma_epoch)


def loss_schedules(config: Config, loss, class_counts) -> list[keras.callbacks.Callback]:
    """Callbacks that move the loss's gamma (--gamma_schedule) and class weights (--drw_epoch)."""
    callbacks = []
    if config.gamma_schedule != "constant":
        callbacks.append(
            VariableSchedule(
                loss.gamma,
                lambda epoch: schedules.gamma_at(
                    epoch, config.gamma, config.gamma_schedule, config.gamma_epoch
                ),
            )
        )
    if config.drw_epoch:
        weights = class_stats.effective_number_weights(class_counts, config.cb_beta).tolist()
        callbacks.append(
            VariableSchedule(
                loss.class_weights,
                lambda epoch: schedules.deferred_weights_at(epoch, weights, config.drw_epoch),
                log_name="drw",
                log_value=lambda value: float(any(w != 1.0 for w in value)),
            )
        )
    return callbacks


def train_and_evaluate(config: Config) -> dict | None:
    """Trains, evaluates on the balanced test split, writes model_dir; returns results.json's dict.

    Under --strategy=multi_worker every worker calls this: the chief writes model_dir and returns the
    results, the other workers train with it and return None (cdt_tf/multi_worker.py).
    """
    strategy = distribution.make_strategy(config.strategy)  # First: multi_worker configures collectives.
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return multi_worker.run(config, strategy, _train_and_evaluate)
    return _train_and_evaluate(config, strategy)


def _train_and_evaluate(config: Config, strategy: tf.distribute.Strategy) -> dict | None:
    precision = distribution.set_precision(config.mixed_precision)
    finished = prepare_model_dir(config)
    if finished is not None:
        logging.info("%s already holds a finished run with this config.", config.model_dir)
        return finished
    print(
        f"Strategy: {distribution.strategy_name(strategy)} with {strategy.num_replicas_in_sync} replica(s); "
        f"precision {precision}",
        flush=True,
    )
    # Fail before training, not after, when --tau_from is not a finished held-out run.
    taus_from, taus_from_name = post_hoc.read_taus(config.tau_from) if config.tau_from else (None, None)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    source, indices, train_labels, class_counts, holdout = load_data(config)
    if isinstance(source, datasets.FileSource):  # inat2018: decoded from files every epoch (see below).
        train_images = test_images = None
        train_data, test_data, digest = build_file_datasets(config, source, indices, class_counts, holdout)
        test_labels, mean, std = source.test.labels, source.mean, source.std
        input_shape = (source.image_size, source.image_size, 3)
    else:
        ids = source.train.ids[indices]
        digest = input_pipeline.subset_hash(ids)
        subset_record = {"hash": digest, "class_counts": class_counts, "ids": ids.tolist()}
        if len(holdout):
            subset_record["holdout_ids"] = source.train.ids[holdout].tolist()
        write_json(os.path.join(config.model_dir, "subset.json"), subset_record)
        print(f"Training subset: {len(indices)} images, per class {class_counts}", flush=True)
        train_images = source.train.images(indices)
        test_images, test_labels = source.test.images(), source.test.labels
        if source.mean is not None:
            mean, std = source.mean, source.std
        else:
            mean, std = input_pipeline.channel_stats(train_images)

        train_data = input_pipeline.build_train_dataset(
            train_images,
            train_labels,
            config.batch_size,
            config.augmentation_name,
            config.seed,
            repeat=config.steps_per_epoch > 0,
            sampler=config.sampler,
        )
        test_data = input_pipeline.build_eval_dataset(test_images, test_labels, EVAL_BATCH_SIZE)
        input_shape = train_images.shape[1:]
    steps_per_epoch = config.steps_per_epoch or len(indices) // config.batch_size

    def build_model() -> keras.Model:
        return models.build_model(
            config.model_name, source.num_classes, input_shape, mean, std, config.classifier_name
        )

    with strategy.scope():
        model = build_model()
        loss = build_loss(config, class_counts)
        schedule = WarmupStepDecay(
            config.learning_rate,
            steps_per_epoch,
            config.warmup_epochs,
            config.decay_epochs,
            config.decay_multipliers,
        )
        optimizer = CoupledDecaySGD(
            coupled_weight_decay=config.weight_decay, learning_rate=schedule, momentum=config.momentum
        )
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        if source.num_classes > 5:
            metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(5, name="top5"))
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=False)

    log_dir = os.path.join(config.model_dir, "logs")
    checkpoint_dir = os.path.join(config.model_dir, "checkpoints")
    os.makedirs(checkpoint_dir, exist_ok=True)
    stop_on_nan = StopOnNaN()
    per_class_evaluation = PerClassEvaluation(
        test_data, test_labels, class_counts, source.class_names, log_dir, config.eval_every, config.epochs
    )
    callbacks = [
        *loss_schedules(config, loss, class_counts),  # First: later callbacks log the values they set.
        stop_on_nan,
        GuardedBackupAndRestore(os.path.join(config.model_dir, "backup"), stop_on_nan),
        ScheduleLogger(getattr(loss, "gamma", None)),
        per_class_evaluation,
        MetricsJsonl(os.path.join(config.model_dir, "metrics.jsonl")),
        GuardedModelCheckpoint(
            os.path.join(checkpoint_dir, "epoch_{epoch:03d}.weights.h5"),
            stop_on_nan,
            save_weights_only=True,
            save_freq=config.checkpoint_every * steps_per_epoch,
        ),
        keras.callbacks.TensorBoard(log_dir, profile_batch=config.profile_steps or 0),
    ]
    if config.stats_every > 0 and train_images is not None:  # In-memory sources only.
        callbacks.append(
            TrainingStatistics(
                train_images,
                train_labels,
                test_images,
                test_labels,
                source.class_names,
                log_dir,
                config.stats_every,
                config.epochs,
                seed=config.seed,
            )
        )
    start = time.time()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):  # A custom loop: fit fails there.
        # On the chief, the trained model copied outside the strategy (predict works there); else None.
        model = multi_worker.fit(strategy, model, build_model, train_data, config, steps_per_epoch, callbacks)
    else:
        model.fit(
            train_data,
            epochs=config.epochs,
            # The class-balanced stream is endless; an instance epoch is one pass.
            steps_per_epoch=(
                steps_per_epoch if config.steps_per_epoch or config.sampler != "instance" else None
            ),
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
            shuffle=False,  # The tf.data pipeline shuffles.
        )
    if stop_on_nan.nan_epoch is not None:
        raise TrainingError(
            f"the training loss became NaN in epoch {stop_on_nan.nan_epoch}; the last good epoch "
            f"({stop_on_nan.nan_epoch - 1}) is kept in {os.path.join(config.model_dir, 'backup')} and "
            f"earlier checkpoints in {checkpoint_dir}; lower --learning_rate or check the data"
        )
    train_seconds = time.time() - start
    if model is None:  # A multi_worker worker other than the chief: the chief evaluates and writes.
        return None
    model.save(os.path.join(config.model_dir, "model.keras"))

    if per_class_evaluation.latest and per_class_evaluation.latest[0] == config.epochs - 1:
        logits = per_class_evaluation.latest[1]  # The callback evaluated these final weights.
    else:
        logits = model.predict(test_data, verbose=0)
    summary = evaluate.summarize(logits, test_labels, class_counts)
    results = {
        **summary,
        "class_counts": class_counts,
        "class_names": source.class_names,
        "subset_hash": digest,
        "num_train_images": int(len(indices)),
        "num_test_images": int(len(test_labels)),
        "epochs": config.epochs,
        "train_seconds": round(train_seconds, 1),
        "strategy": distribution.strategy_name(strategy),
        "replicas": int(strategy.num_replicas_in_sync),
        "workers": distribution.num_workers(strategy),
        "precision": precision,
        "config": config.to_dict(),
    }
    print("Post-hoc calibration (one pass over the training, held-out and test features) ...", flush=True)
    if isinstance(source, datasets.FileSource):
        results["post_hoc"] = file_post_hoc(
            model, config, source, indices, holdout, class_counts, taus_from, taus_from_name
        )
    else:
        results["post_hoc"] = post_hoc.compute(
            model,
            class_counts,
            train_images,
            train_labels,
            test_images,
            test_labels,
            holdout_images=source.train.images(holdout) if len(holdout) else None,
            holdout_labels=source.train.labels[holdout] if len(holdout) else None,
            taus_from=taus_from,
            taus_from_name=taus_from_name,
        )
    write_json(os.path.join(config.model_dir, "results.json"), results)
    post_hoc.plot_sweeps(
        results["post_hoc"],
        os.path.join(config.model_dir, "post_hoc.png"),
        os.path.basename(config.model_dir),
    )
    return results


# ----------------------------------------------------------------------------- sources read from files
# inat2018 (437,513 images) is never decoded into memory: tf.data reads, decodes and augments its
# images every epoch. What differs from the in-memory path: subset.json records the subset's hash
# and counts but not its ids; <model_dir>/classes.json maps class indices to the dataset's category
# ids; mean/std are the source's (ImageNet's); --stats_every (which needs the images in memory) is
# skipped; the test split is evaluated in batches of --batch_size; post-hoc features come from the
# evaluation pipeline (resize + centre crop).


def build_file_datasets(
    config: Config, source: datasets.FileSource, indices: np.ndarray, class_counts, holdout: np.ndarray
) -> tuple[tf.data.Dataset, tf.data.Dataset, str]:
    """Writes classes.json and subset.json; returns (training data, test data, the subset's hash)."""
    classes = {"dataset": source.name, "origin": source.origin, "classes": source.classes()}
    write_json(os.path.join(config.model_dir, "classes.json"), classes)
    digest = input_pipeline.subset_hash(source.train.ids[indices])
    subset_record = {"hash": digest, "class_counts": class_counts, "num_images": int(len(indices))}
    if len(holdout):
        subset_record["holdout_hash"] = input_pipeline.subset_hash(source.train.ids[holdout])
    write_json(os.path.join(config.model_dir, "subset.json"), subset_record)
    print(
        f"Training subset: {len(indices)} images of {source.num_classes} classes "
        f"({max(class_counts)} to {min(class_counts)} per class), read from {source.origin}",
        flush=True,
    )
    if config.stats_every > 0:
        logging.warning("--stats_every is skipped for %s: its statistics need images in memory", source.name)
    split, size = source.train, source.image_size
    common = {
        "batch_size": config.batch_size,
        "seed": config.seed,
        "image_size": size,
        "augmentation": config.augmentation_name,
        "repeat": config.steps_per_epoch > 0,
    }
    if split.paths is not None:
        train_data = input_pipeline.build_file_train_dataset(
            split.paths[indices], split.labels[indices], sampler=config.sampler, **common
        )
    else:
        if config.sampler != "instance":
            raise UserError(
                f"--sampler={config.sampler} needs random access to the images, which TFDS records lack; "
                "give --data_dir the competition's JSON files and images instead"
            )
        if len(indices) < config.batch_size:
            raise UserError(f"the training subset has {len(indices)} images; lower --batch_size")
        train_data = input_pipeline.build_record_train_dataset(split.records(indices), **common)
    return train_data, _file_eval_dataset(source.test, None, config.batch_size, size), digest


def _file_eval_dataset(split: datasets.FileSplit, indices, batch_size: int, image_size: int):
    if split.paths is None:
        return input_pipeline.build_record_eval_dataset(split.records(indices), batch_size, image_size)
    chosen = slice(None) if indices is None else indices
    return input_pipeline.build_file_eval_dataset(
        split.paths[chosen], split.labels[chosen], batch_size, image_size
    )


def file_post_hoc(
    model,
    config: Config,
    source: datasets.FileSource,
    indices,
    holdout,
    class_counts,
    taus_from,
    taus_from_name,
) -> dict:
    """`post_hoc.compute` for a FileSource: one pass of the evaluation pipeline per split.

    Holds the training subset's features in memory (437,513 x 2,048 float32, 3.6 GB, for iNat).
    """
    probe = keras.Model(model.inputs, [model.get_layer("classifier").input, model.outputs[0]])

    def extract(split, chosen):
        dataset = _file_eval_dataset(split, chosen, config.batch_size, source.image_size)
        features, logits = probe.predict(dataset, verbose=0)
        labels = split.labels if chosen is None else split.labels[chosen]
        return {"features": np.asarray(features), "logits": np.asarray(logits), "labels": labels}

    kind, kernel, _ = post_hoc.classifier_weights(model)
    return post_hoc.evaluate_post_hoc(
        class_counts,
        kernel,
        kind,
        extract(source.train, indices),
        extract(source.test, None),
        extract(source.train, holdout) if len(holdout) else None,
        taus_from=taus_from,
        taus_from_name=taus_from_name,
    )
