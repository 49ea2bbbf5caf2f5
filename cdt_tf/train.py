"""train_and_evaluate(config): the one place that wires data, model, loss and callbacks together."""

from __future__ import annotations

import os
import sys
import time

import keras
import tensorflow as tf
from absl import logging

from cdt_tf import (
    class_stats,
    contrastive,
    distribution,
    durability,
    evaluate,
    max_norm,
    models,
    multi_worker,
    objective,
    post_hoc,
    run_data,
    rundir,
    sam,
    schedules,
)
from cdt_tf.callbacks import (
    GuardedBackupAndRestore,
    GuardedModelCheckpoint,
    MetricsJsonl,
    PerClassEvaluation,
    ReportEvaluationFailure,
    ScheduleLogger,
    StopOnNaN,
    TrainingStatistics,
)
from cdt_tf.config import Config
from cdt_tf.errors import TrainingError
from cdt_tf.features import Features
from cdt_tf.optimizers import CoupledDecaySGD
from cdt_tf.schedules import WarmupStepDecay


def train_and_evaluate(config: Config) -> dict | None:
    """Trains, evaluates on the balanced test split, writes model_dir; returns results.json's dict.

    Re-running the same command resumes a killed run from its last finished epoch, evaluates a run
    whose training finished but whose evaluation did not (model.keras without results.json), and
    returns a finished run's results without computing anything.

    Under --strategy=multi_worker every worker calls this: the chief writes model_dir and returns the
    results, the other workers train with it and return None (cdt_tf/multi_worker.py).
    """
    strategy = distribution.make_strategy(config.strategy)  # First: multi_worker configures collectives.
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        if not distribution.is_chief(distribution.read_tf_config()):  # Writes only its scratch folder.
            return multi_worker.run(config, strategy, _train_and_evaluate)
        with durability.exclusive(config.model_dir):
            return multi_worker.run(config, strategy, _train_and_evaluate)
    with durability.exclusive(config.model_dir):  # One writer: a second start is refused at once.
        return _train_and_evaluate(config, strategy)


def resolve_precision(config: Config, stored: dict) -> str:
    """The run's precision: the one config.json recorded when it started, else resolved now and recorded.

    Resolved from the precision config.json asked for (a run from before --precision: float32, or
    --mixed_precision), so that a run resumes with what it started with whatever the flags say now.
    """
    precision = stored.get("resolved_precision")
    if precision is None:
        mixed = Config.stored_value(stored, "mixed_precision")
        precision = distribution.machine_precision(
            "mixed" if mixed else Config.stored_value(stored, "precision")
        )
        rundir.record(config.model_dir, resolved_precision=precision)
    return precision


def _train_and_evaluate(config: Config, strategy: tf.distribute.Strategy) -> dict | None:
    stored = rundir.prepare(config)
    finished = rundir.finished_results(config.model_dir)
    if finished is not None:
        logging.info("%s already holds a finished run with this config.", config.model_dir)
        return finished
    precision = distribution.set_precision(resolve_precision(config, stored))
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

    data = run_data.load(config)
    subset = write_data_records(config, data)
    if config.eval_per_class:
        print(
            f"Evaluating on {data.size('test')} test images ({config.eval_per_class} per class, "
            "--eval_per_class): a smoke run, not comparable with full-test results",
            flush=True,
        )
    test_data = data.eval_dataset("test")
    start = time.time()
    if rundir.trained(config.model_dir):  # Killed after training, before results.json: evaluate again.
        print("Training finished earlier (model.keras); evaluating it.", flush=True)
        model, final_test = rundir.load_model(os.path.join(config.model_dir, rundir.MODEL)), None
    else:
        with (
            run_data.unreadable_data_as_user_error(config, data),
            durability.disk_full_as_user_error(config.model_dir, "training"),
        ):
            model, final_test = fit(config, strategy, data, test_data)
        if model is None:  # A multi_worker worker other than the chief: the chief evaluates and writes.
            return None
        with durability.disk_full_as_user_error(config.model_dir, "saving the trained model"):
            durability.save_model_atomically(model, os.path.join(config.model_dir, rundir.MODEL))
    rundir.remove_backup(
        config.model_dir
    )  # Only now: model.keras is complete (also after a kill right here).
    train_seconds = time.time() - start

    with run_data.unreadable_data_as_user_error(config, data, "evaluating the trained model"):
        results = _evaluate(config, strategy, data, model, final_test, taus_from, taus_from_name)
    results["subset_hash"] = subset["hash"]
    results["train_seconds"] = round(train_seconds, 1)  # This start's; "training" covers every start.
    results["training"] = rundir.training_time(config.model_dir)
    results["precision"] = precision
    with durability.disk_full_as_user_error(config.model_dir, "writing results.json"):
        rundir.write_json(os.path.join(config.model_dir, rundir.RESULTS), results)
        post_hoc.plot_sweeps(
            results["post_hoc"],
            os.path.join(config.model_dir, rundir.POST_HOC_PLOT),
            os.path.basename(os.path.normpath(config.model_dir)),
        )
    return results


def _evaluate(config, strategy, data, model, final_test, taus_from, taus_from_name) -> dict:
    """results.json's content but the subset hash, timing and precision: the test summary and post-hoc."""
    if final_test is None:  # One pass over the test split gives both the logits and post-hoc features.
        from cdt_tf import features

        final_test = features.extract(model, data.eval_dataset("test"), data.labels("test"))
    results = {
        **evaluate.summarize(final_test.logits, final_test.labels, data.class_counts),
        "class_counts": data.class_counts,
        "class_names": data.class_names,
        "num_train_images": data.size("train"),
        "num_test_images": data.size("test"),
        "eval_per_class": config.eval_per_class,  # 0: the whole test split; else a smoke evaluation.
        # --bad_images=skip: the files left out of each split (ids), with their count.
        "skipped_images": {
            split: {"count": len(ids), "ids": list(ids)}
            for split, ids in getattr(data.source, "skipped_images", {}).items()
        },
        "epochs": config.epochs,
        "strategy": distribution.strategy_name(strategy),
        "replicas": int(strategy.num_replicas_in_sync),
        "workers": distribution.num_workers(strategy),
        "config": config.to_dict(),
    }
    if data.size("validation"):
        results["validation"] = evaluate_validation(model, data)
    print("Post-hoc calibration (one pass over the training and held-out features) ...", flush=True)
    results["post_hoc"] = post_hoc.compute(
        model, data, final_test, taus_from=taus_from, taus_from_name=taus_from_name
    )
    return results


def evaluate_validation(model, data: run_data.RunData) -> dict:
    """results.json's "validation": top-1/5, per class and many/medium/few on the --val_per_class split."""
    from cdt_tf import features

    validation = features.extract(model, data.eval_dataset("validation"), data.labels("validation"))
    summary = evaluate.summarize(validation.logits, validation.labels, data.class_counts)
    print(f"Validation top-1 ({data.size('validation')} images): {100 * summary['top1']:.2f}%", flush=True)
    return {**summary, "num_images": data.size("validation"), "from": data.validation_from}


def write_data_records(config: Config, data: run_data.RunData) -> dict:
    """Writes subset.json (and classes.json for sources read from files), prints a line about the
    subset; returns subset.json's content."""
    subset = data.subset_record()
    rundir.write_json(os.path.join(config.model_dir, rundir.SUBSET), subset)
    counts = data.class_counts
    shown = counts if len(counts) <= 20 else f"{max(counts)} to {min(counts)} ({len(counts)} classes)"
    origin = ""
    if not data.in_memory:
        source = data.source
        classes = {"dataset": source.name, "origin": source.origin, "classes": source.classes()}
        rundir.write_json(os.path.join(config.model_dir, rundir.CLASSES), classes)
        origin = f", read from {source.origin}"
    print(f"Training subset: {data.size('train')} images, per class {shown}{origin}", flush=True)
    return subset


def compile_model(config: Config, data: run_data.RunData, steps_per_epoch: int):
    """(model builder, compiled model, loss): call inside the strategy's scope. With --sam_rho the
    compiled model is a sam.SharpnessAwareModel over the builder's network, with --contrastive_weight
    a contrastive.ContrastiveModel (fit unwraps either)."""
    mean, std = data.normalization()
    input_shape = data.input_shape()

    def build_model() -> keras.Model:
        model = models.build_model(
            config.resolved_model,
            data.num_classes,
            input_shape,
            mean,
            std,
            config.resolved_classifier,
            config.conv_padding,
        )
        return max_norm.constrain_classifier(model, config.max_norm) if config.max_norm else model

    model = build_model()
    if config.sam_rho:  # Its train_step takes SAM steps; fit unwraps it (plain_model) after training.
        tail = config.sam_classes == "tail"
        tail_classes = sam.tail_classes(data.class_counts, config.sam_tail_threshold) if tail else None
        if tail:  # No tail class makes every step the plain one, at twice its cost: say so.
            print(
                f"ImbSAM: {int(tail_classes.sum())} of {data.num_classes} classes have fewer than "
                f"{config.sam_tail_threshold} training images (the tail)",
                flush=True,
            )
        model = sam.SharpnessAwareModel.wrap(model, config.sam_rho, tail_classes)
    if config.contrastive_weight:  # Its train_step adds BCL's loss; fit unwraps it (plain_model).
        model = contrastive.ContrastiveModel.wrap(
            model, config.contrastive_weight, config.contrastive_temperature, config.contrastive_dim
        )
    loss = objective.build_loss(config, data.class_counts)
    optimizer = CoupledDecaySGD(
        coupled_weight_decay=config.weight_decay,
        learning_rate=learning_rate_schedule(config, steps_per_epoch),
        momentum=config.momentum,
    )
    metrics = training_metrics(data.num_classes, config.mixes_batches)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=False)
    return build_model, model, loss


def learning_rate_schedule(config: Config, steps_per_epoch: int):
    """The --lr_schedule: WarmupStepDecay (step, per epoch) or WarmupCosineDecay (cosine, per step)."""
    if config.lr_schedule == "cosine":
        return schedules.WarmupCosineDecay(
            config.learning_rate, steps_per_epoch, config.warmup_epochs, config.epochs
        )
    return WarmupStepDecay(
        config.learning_rate,
        steps_per_epoch,
        config.warmup_epochs,
        config.decay_epochs,
        config.decay_multipliers,
    )


def training_metrics(num_classes: int, soft_labels: bool) -> list[keras.metrics.Metric]:
    """Training accuracy (and top-5 with more than 5 classes) for sparse labels, or for soft labels.

    Soft (MixUp/CutMix) labels count the argmax of the label vector, the larger share of a mixed
    pair, as the class: `CategoricalAccuracy`/`TopKCategoricalAccuracy` take that argmax.
    """
    if soft_labels:
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
        top5 = keras.metrics.TopKCategoricalAccuracy(5, name="top5")
    else:
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        top5 = keras.metrics.SparseTopKCategoricalAccuracy(5, name="top5")
    return metrics + ([top5] if num_classes > 5 else [])


def build_callbacks(
    config: Config, data: run_data.RunData, test_data, loss, steps_per_epoch: int, mix_prob=None
) -> tuple[list[keras.callbacks.Callback], StopOnNaN, PerClassEvaluation]:
    """The run's callbacks in the order they must run, the NaN guard and the per-class evaluation.

    mix_prob: the pipeline's mixing-probability variable (--mix_until_epoch), scheduled here.
    """
    log_dir = os.path.join(config.model_dir, rundir.LOGS)
    checkpoint_dir = os.path.join(config.model_dir, rundir.CHECKPOINTS)
    os.makedirs(checkpoint_dir, exist_ok=True)
    stop_on_nan = StopOnNaN()
    evaluation = PerClassEvaluation(
        test_data,
        data.labels("test"),
        data.class_counts,
        data.class_names,
        log_dir,
        config.eval_every,
        config.epochs,
    )
    scheduled = objective.loss_schedules(config, loss, data.class_counts)
    if mix_prob is not None:
        scheduled.append(objective.mix_schedule(config, mix_prob))
    callbacks = [
        *scheduled,  # First: later callbacks log the values they set.
        stop_on_nan,
        ScheduleLogger(getattr(loss, "gamma", None)),
        evaluation,
    ]
    if config.stats_every > 0:
        # A fixed, unaugmented sample of the training subset (up to STATS_PER_CLASS a class).
        labels = data.labels("train")
        sample = class_stats.sample_up_to(labels, STATS_PER_CLASS, data.num_classes, config.seed)
        callbacks.append(
            TrainingStatistics(
                data.eval_dataset("train", sample),
                labels[sample],
                test_data,
                data.labels("test"),
                data.class_names,
                log_dir,
                config.stats_every,
                config.epochs,
                evaluation=evaluation,
            )
        )
    callbacks += [
        # The epoch's line before its backup: a kill between them redoes the epoch (no gap in the file).
        MetricsJsonl(os.path.join(config.model_dir, rundir.METRICS)),
        GuardedBackupAndRestore(os.path.join(config.model_dir, rundir.BACKUP), stop_on_nan),
        ReportEvaluationFailure(evaluation),  # After the backup: the epoch is kept.
        GuardedModelCheckpoint(
            os.path.join(checkpoint_dir, "epoch_{epoch:03d}.weights.h5"),
            stop_on_nan,
            save_weights_only=True,
            save_freq=config.checkpoint_every * steps_per_epoch,
        ),
        keras.callbacks.TensorBoard(log_dir, profile_batch=config.profile_steps or 0),
    ]
    return callbacks, stop_on_nan, evaluation


# Training images per class in the --stats_every sample (Fig. 7's training accuracy and feature means).
STATS_PER_CLASS = 100


def fit(
    config: Config, strategy, data: run_data.RunData, test_data
) -> tuple[keras.Model | None, Features | None]:
    """Builds, compiles and trains the model; returns it (None on a multi_worker non-chief) and the
    final epoch's test pass when the per-class evaluation made one (else None)."""
    mix_prob = None
    if config.mix_until_epoch:  # The pipeline reads it per batch; a callback lowers it (--mix_schedule).
        mix_prob = tf.Variable(config.mix_prob, trainable=False, dtype=tf.float32, name="mix_prob")
    train_data = data.train_dataset(config, mix_prob)
    steps_per_epoch = config.steps_per_epoch or data.size("train") // config.batch_size
    with strategy.scope():
        build_model, model, loss = compile_model(config, data, steps_per_epoch)
    callbacks, stop_on_nan, evaluation = build_callbacks(
        config, data, test_data, loss, steps_per_epoch, mix_prob
    )
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
        if isinstance(model, (sam.SharpnessAwareModel, contrastive.ContrastiveModel)):
            model = model.plain_model()  # model.keras holds an ordinary model.
    if stop_on_nan.nan_epoch is not None:
        raise TrainingError(
            f"the training loss became NaN in epoch {stop_on_nan.nan_epoch}; the last good epoch "
            f"({stop_on_nan.nan_epoch - 1}) is kept in {os.path.join(config.model_dir, rundir.BACKUP)} and "
            f"earlier checkpoints in {os.path.join(config.model_dir, rundir.CHECKPOINTS)}; lower "
            "--learning_rate or check the data"
        )
    final = evaluation.latest[1] if evaluation.latest and evaluation.latest[0] == config.epochs - 1 else None
    return model, final
