"""--strategy=multi_worker: synchronous data-parallel training across machines, with a custom loop.

Why not Model.fit: Keras 3's fit (and predict) fail under tf.distribute.MultiWorkerMirroredStrategy
(keras-team/keras#20585, tensorflow/tensorflow#72388): fit's symbolic build reduces the PerReplica
input batch ("Attempt to convert a value (PerReplica...)") and its per-replica output reduction fails
("Invalid reduction dimension 0 for input with 0 dimensions"). `fit` below stands in for Model.fit
under this strategy and leaves the rest of a run (train.py) as it is:

- the same model, loss, optimizer (its learning-rate schedule reads optimizer.iterations) and
  tf.data pipeline, distributed with strategy.experimental_distribute_dataset and DATA sharding: every
  worker builds the same seeded pipeline and keeps its replicas' slices of each global batch
  (--batch_size stays global);
- one step: each replica computes its per-example losses (loss.call) and reduces them with
  tf.nn.compute_average_loss over the global batch, so that the gradients summed over the replicas
  are those of the global-batch mean (as in fit); optimizer.apply all-reduces them and updates;
  with --sam_rho (a sam.SharpnessAwareModel) the gradients are those of its SAM or ImbSAM step
  (sam.sharpness_aware_gradients), as its train_step takes them under fit;
- the run's Keras callbacks, driven through keras.callbacks.CallbackList as fit drives them, with fit's
  logs (loss, accuracy, top5: running means over the epoch's global batches), fit's resume epoch
  (BackupAndRestore's model._initial_epoch) and model.stop_training (StopOnNaN).

Roles. The chief is TF_CONFIG's "chief" task, else worker 0. Only the chief writes --model_dir; every
other worker runs with the scratch directory <model_dir>/workers/<task> as its model_dir (its own
config.json, subset.json, backup/ and, at the end, final.weights.h5), skips the callbacks that
evaluate or write the run's outputs, and after training waits until the chief has written
results.json (the chief's collectives would fail if a worker left early). Only the chief evaluates:
predict does not work on the distributed model either, so PerClassEvaluation, TrainingStatistics,
the final test predictions, post-hoc and model.keras use an evaluation copy of the model, built
outside the strategy, into which the trained weights are copied before each use.

Resume: every worker restores its own backup, then the chief's weights, optimizer state and epoch are
copied to all workers, so that workers whose backups differ (one killed while writing) resume in step.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cdt_tf import distribution, rundir, sam
from cdt_tf.callbacks import MetricsJsonl, PerClassEvaluation, TrainingStatistics
from cdt_tf.errors import TrainingError

# Callbacks that only the chief runs: they evaluate or write the run's outputs.
CHIEF_ONLY = (
    PerClassEvaluation,
    TrainingStatistics,
    MetricsJsonl,
    keras.callbacks.ModelCheckpoint,
    keras.callbacks.TensorBoard,
)
# Callbacks that predict: on the chief they get the evaluation model.
PREDICTING = (PerClassEvaluation, TrainingStatistics)


def worker_dir(model_dir: str, tf_config: dict) -> str:
    """A non-chief worker's scratch directory: <model_dir>/workers/<task type><index>."""
    return os.path.join(model_dir, "workers", distribution.task_name(tf_config))


def run(config, strategy: tf.distribute.Strategy, train_and_evaluate):
    """Runs train_and_evaluate(config, strategy) on this worker; the results on the chief, else None.

    A non-chief worker gets its scratch directory as model_dir. When the chief's model_dir already
    holds results.json, the chief returns them (train_and_evaluate checks the config) and the other
    workers return at once. A worker that stops (killed, or an error) makes the others fail with a
    TrainingError instead of waiting for it.
    """
    tf_config = distribution.read_tf_config()
    chief = distribution.is_chief(tf_config)
    if not chief:
        config = dataclasses.replace(config, model_dir=worker_dir(config.model_dir, tf_config))
    finished = chief and os.path.exists(os.path.join(config.model_dir, "results.json"))
    try:
        if _from_chief(strategy, [np.int64(finished)])[0]:
            return train_and_evaluate(config, strategy) if chief else None
        results = train_and_evaluate(config, strategy)
        # results.json is written: now the other workers may exit.
        _from_chief(strategy, [np.int64(1)])
    except (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.AbortedError) as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        first_line = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", lines[0])
        raise TrainingError(
            f"another worker of the cluster stopped or cannot be reached ({first_line}); see its log, "
            "then start the same command on every worker again to resume"
        ) from error
    return results


def fit(strategy, model, build_model, train_data, config, steps_per_epoch: int, callbacks):
    """Model.fit for MultiWorkerMirroredStrategy (see the module docstring).

    Args:
      strategy: the MultiWorkerMirroredStrategy.
      model: built and compiled (optimizer, loss) under strategy.scope().
      build_model: builds the same architecture; called outside the strategy for the evaluation model.
      train_data: the global-batch training pipeline (endless, or one epoch per iteration).
      config: the run's Config (epochs, batch_size; model_dir is this worker's).
      steps_per_epoch: training steps per epoch.
      callbacks: the run's Keras callbacks, in fit's order.

    Returns:
      On the chief, the evaluation model (built outside the strategy) holding the trained weights,
      compiled as `model` with its optimizer state; on the other workers None, after saving their
      final weights to <model_dir>/final.weights.h5.
    """
    tf_config = distribution.read_tf_config()
    chief = distribution.is_chief(tf_config)
    optimizer, loss = model.optimizer, model.loss
    with strategy.scope():
        optimizer.build(model.trainable_variables)  # Before a restore builds it outside the scope.

    evaluation_model = build_model() if chief else None  # Outside the scope: predict works on it.
    callback_list = _callback_list(callbacks, chief, model, evaluation_model, config.epochs, steps_per_epoch)
    distributed_data, endless = _distribute(strategy, train_data)
    train_step, names = _train_step(strategy, model, loss, optimizer, config.batch_size)

    model.stop_training = False
    callback_list.on_train_begin()
    initial_epoch = getattr(model, "_initial_epoch", None) or 0  # Set by BackupAndRestore.
    if distribution.worker_count(tf_config) > 1:
        initial_epoch = _adopt_chief_state(strategy, model, optimizer, initial_epoch)
    training_logs = _train_epochs(
        model,
        callback_list,
        train_step,
        names,
        distributed_data,
        endless,
        range(initial_epoch, config.epochs),
        steps_per_epoch,
    )
    optimizer.finalize_variable_values(model.trainable_weights)
    callback_list.on_train_end(logs=training_logs)

    if not chief:
        if not model.stop_training:  # Never write the weights of a NaN epoch.
            model.save_weights(os.path.join(config.model_dir, "final.weights.h5"))
            # Nothing to resume any more (a restart adopts the chief's state): as the chief's backup.
            shutil.rmtree(os.path.join(config.model_dir, rundir.BACKUP), ignore_errors=True)
        return None
    _copy_trained_state(model, evaluation_model)
    return evaluation_model


def _callback_list(callbacks, chief: bool, model, evaluation_model, epochs: int, steps_per_epoch: int):
    """The run's callbacks as this worker drives them: a CallbackList as Model.fit builds one.

    A non-chief worker drops the CHIEF_ONLY callbacks; on the chief the PREDICTING ones get the
    evaluation model, and a `_CopyWeights` before the first of them copies the trained weights in.
    """
    kept = []
    for callback in callbacks:
        if not chief and isinstance(callback, CHIEF_ONLY):
            continue
        if chief and isinstance(callback, PREDICTING) and not any(isinstance(c, _CopyWeights) for c in kept):
            kept.append(_CopyWeights(evaluation_model))
        kept.append(callback)
    callback_list = keras.callbacks.CallbackList(
        kept,
        add_history=True,
        add_progbar=chief,
        verbose=1 if sys.stdout.isatty() else 2,
        epochs=epochs,
        steps=steps_per_epoch,
        model=model,
    )
    for callback in kept:
        if isinstance(callback, PREDICTING):
            callback.set_model(evaluation_model)
    return callback_list


def _distribute(strategy, train_data) -> tuple:
    """(the distributed dataset, whether train_data is endless) for the custom loop."""
    options = tf.data.Options()
    # The pipelines read in-memory arrays (or a list of files), not file shards: every worker builds
    # the whole seeded pipeline and keeps its replicas' parts of each global batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    distributed_data = strategy.experimental_distribute_dataset(train_data.with_options(options))
    endless = int(train_data.cardinality()) == int(tf.data.INFINITE_CARDINALITY)
    return distributed_data, endless


def _train_epochs(
    model, callback_list, train_step, names, distributed_data, endless: bool, epochs, steps_per_epoch: int
):
    """Model.fit's epoch loop over `epochs` (a range), driving the callbacks; the last epoch's logs.

    The logs are running means over the epoch's global batches; model.stop_training (StopOnNaN)
    ends the loop after the step that set it.
    """
    iterator = iter(distributed_data) if endless else None
    training_logs = None
    for epoch in epochs:
        callback_list.on_epoch_begin(epoch)
        if not endless:  # One pass per epoch, reshuffled, as fit iterates a finite dataset.
            iterator = iter(distributed_data)
        totals, seen, logs = np.zeros(len(names)), 0.0, {}
        for step in range(steps_per_epoch):
            callback_list.on_train_batch_begin(step)
            sums, count = train_step(next(iterator))
            totals += sums.numpy()
            seen += float(count.numpy())
            logs = {name: float(total / seen) for name, total in zip(names, totals, strict=True)}
            callback_list.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        else:
            if not endless:
                # Model.fit makes a new iterator after a full pass and another at the next epoch's
                # start, so its epoch e reads the (2e-1)-th shuffle of the pipeline: the same here.
                iter(distributed_data)
        epoch_logs = dict(sorted(logs.items()))
        callback_list.on_epoch_end(epoch, epoch_logs)
        training_logs = epoch_logs
        if model.stop_training:
            break
    return training_logs


def _copy_trained_state(model, evaluation_model) -> None:
    """Copies the trained weights, the compile config and (where they match) the optimizer's
    variables of the distributed model into the chief's evaluation model."""
    evaluation_model.set_weights(model.get_weights())
    evaluation_model.compile_from_config(model.get_compile_config())
    source, target = model.optimizer.variables, evaluation_model.optimizer.variables
    if [tuple(v.shape) for v in source] == [tuple(v.shape) for v in target]:
        for variable, value in zip(target, source, strict=True):
            variable.assign(keras.ops.convert_to_numpy(value))
    else:
        logging.warning("model.keras holds no optimizer state: its optimizer's variables differ")


def _train_step(strategy, model, loss, optimizer, global_batch_size: int):
    """A tf.function that trains one global batch; returns the global sums of the logged metrics
    (loss, accuracy[, top5]) and the number of examples, and the metrics' names."""
    top5 = model.outputs[0].shape[-1] > 5  # As train.py's compiled metrics.
    names = ["loss", "accuracy"] + (["top5"] if top5 else [])

    def forward(images, labels):
        logits = model(images, training=True)
        per_example = loss.call(labels, logits)
        regularization = tf.add_n(model.losses) if model.losses else tf.constant(0.0)
        return logits, per_example, regularization

    def sharpness_aware_step(images, labels):
        """--sam_rho: the gradients of a SAM (ImbSAM) step (cdt_tf/sam.py), and the first pass."""
        first = []
        share = None if model.tail_classes is None else sam.tail_share(labels, model.tail_classes)

        def losses():
            logits, per_example, regularization = forward(images, labels)
            first.append((logits, per_example, regularization))  # Traced once per pass: [0] is at w.
            shares = tf.cast(per_example, tf.float32) / global_batch_size
            return (*sam.split_loss(shares, tf.nn.scale_regularization_loss(regularization), share), logits)

        gradients, _, _ = sam.sharpness_aware_gradients(
            losses, model.trainable_variables, model.rho, model.non_trainable_variables, optimizer.scale_loss
        )
        return gradients, *first[0]

    def replica_step(images, labels):
        if isinstance(model, sam.SharpnessAwareModel):
            gradients, logits, per_example, regularization = sharpness_aware_step(images, labels)
        else:
            with tf.GradientTape() as tape:
                logits, per_example, regularization = forward(images, labels)
                mean = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
                total = mean + tf.nn.scale_regularization_loss(regularization)
                scaled = optimizer.scale_loss(total)  # Loss scaling under mixed_float16; else the loss.
            gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)  # All-reduces the gradients.

        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        logits = tf.cast(logits, tf.float32)
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        correct = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
        sums = [
            tf.reduce_sum(tf.cast(per_example, tf.float32)) + regularization * count,
            tf.reduce_sum(tf.cast(correct, tf.float32)),
        ]
        if top5:
            sums.append(tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 5), tf.float32)))
        return tf.stack(sums), count

    @tf.function
    def train_step(batch):
        sums, count = strategy.run(replica_step, args=batch)
        reduce = tf.distribute.ReduceOp.SUM
        return strategy.reduce(reduce, sums, axis=None), strategy.reduce(reduce, count, axis=None)

    return train_step, names


def _from_chief(strategy, values: list) -> list[np.ndarray]:
    """The chief's `values` (arrays) on every worker: an all-reduce that only the chief's first
    replica (replica 0) feeds. Every worker must call it, with values of the same shapes and dtypes.
    Sent as float64 (one packed all-reduce), which holds float32 and int64 counters below 2^53 exactly."""
    values = [np.asarray(v) for v in values]
    tensors = [tf.constant(v, tf.float64) for v in values]

    @tf.function
    def broadcast():
        def replica_fn():
            context = tf.distribute.get_replica_context()
            first = tf.equal(context.replica_id_in_sync_group, 0)
            return context.all_reduce(
                tf.distribute.ReduceOp.SUM, [tf.where(first, t, tf.zeros_like(t)) for t in tensors]
            )

        return strategy.run(replica_fn)

    results = [strategy.experimental_local_results(r)[0].numpy() for r in broadcast()]
    return [r.astype(v.dtype) for r, v in zip(results, values, strict=True)]


def _adopt_chief_state(strategy, model, optimizer, epoch: int) -> int:
    """Copies the chief's weights, optimizer state and resume epoch to this worker; returns the epoch."""
    variables = [*model.weights, *optimizer.variables]
    values = _from_chief(strategy, [np.int64(epoch), *(keras.ops.convert_to_numpy(v) for v in variables)])
    for variable, value in zip(variables, values[1:], strict=True):
        variable.assign(value)
    chief_epoch = int(values[0])
    if chief_epoch != epoch:
        logging.warning(
            "Resuming from the chief's epoch %d (this worker's backup held epoch %d)", chief_epoch, epoch
        )
    return chief_epoch


class _CopyWeights(keras.callbacks.Callback):
    """At each epoch's end, copies the trained weights into the evaluation model (listed before the
    callbacks that predict with it)."""

    def __init__(self, target: keras.Model):
        super().__init__()
        self.target = target

    def on_epoch_end(self, epoch, logs=None):
        self.target.set_weights(self.model.get_weights())
