"""Keras callbacks of a training run: scalars, per-class test evaluation, Fig. 7 statistics, NaN guard."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from cdt_tf import diagnosis, durability, evaluate, features, rundir
from cdt_tf.errors import EvaluationDataError, TrainingError


class ScheduleLogger(keras.callbacks.Callback):
    """Adds the learning rate and CDT gamma in force during the epoch to its logs.

    Read at the epoch's start (the optimizer's rate at epoch end is already the
    next epoch's); list it before TensorBoard so that it writes them.
    """

    def __init__(self, gamma_variable=None):
        super().__init__()
        self.gamma_variable = gamma_variable
        self._values = {}

    def on_epoch_begin(self, epoch, logs=None):
        self._values = {
            "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        }
        if self.gamma_variable is not None:
            self._values["gamma"] = float(keras.ops.convert_to_numpy(self.gamma_variable))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self._values)


class VariableSchedule(keras.callbacks.Callback):
    """At each epoch's start, assigns `schedule(epoch)` to a variable (a loss's gamma or class weights).

    Resumed runs get the right value: Keras calls on_epoch_begin with the restored epoch.
    `log_name`/`log_value` add a scalar of the value to the epoch's logs (TensorBoard); list
    this callback before TensorBoard.
    """

    def __init__(self, variable, schedule, log_name: str | None = None, log_value=None):
        super().__init__()
        self.variable, self.schedule = variable, schedule
        self.log_name = log_name
        self.log_value = log_value or (lambda value: float(np.mean(value)))
        self._logged = None

    def on_epoch_begin(self, epoch, logs=None):
        value = self.schedule(epoch)
        self.variable.assign(keras.ops.cast(value, self.variable.dtype))
        self._logged = self.log_value(value)

    def on_epoch_end(self, epoch, logs=None):
        if self.log_name and logs is not None:
            logs[self.log_name] = self._logged


class PerClassEvaluation(keras.callbacks.Callback):
    """Every `every` epochs (and after the last), evaluates the test set per class.

    Writes test top-1/top-5, many/medium/few and one accuracy per class to
    TensorBoard (`<log_dir>/test`), and adds `test_top1` to the epoch's logs.
    Each evaluation is one pass of `features.extract`: `latest` holds (epoch, Features) of the
    last one, so that the end of training reuses the final pass (logits and post-hoc features).
    """

    def __init__(
        self,
        dataset: tf.data.Dataset,
        labels: np.ndarray,
        class_counts: Sequence[int],
        class_names: Sequence[str],
        log_dir: str,
        every: int,
        epochs: int,
    ):
        super().__init__()
        self.dataset, self.labels = dataset, np.asarray(labels, np.int64)
        self.class_counts, self.class_names = list(class_counts), list(class_names)
        self.every, self.epochs = every, epochs
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "test"))
        self.latest = None
        self.failure = None  # An EvaluationDataError: an image of the split could not be read.
        self._probe = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every and epoch + 1 != self.epochs:
            return
        if self._probe is None:  # Shares the network's layers, so it always sees the current weights.
            self._probe = features.probe(self.model)
        try:
            seen = features.extract(self._probe, self.dataset, self.labels)
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.DataLossError) as error:
            # ReportEvaluationFailure raises it once the epoch is backed up; run_data names the file.
            self.failure = EvaluationDataError("test", epoch + 1, error)
            return
        self.latest = (epoch, seen)
        summary = evaluate.summarize(seen.logits, self.labels, self.class_counts)
        with self.writer.as_default(step=epoch):
            tf.summary.scalar("top1", summary["top1"])
            if summary["top5"] is not None:
                tf.summary.scalar("top5", summary["top5"])
            for group, value in summary["many_medium_few"].items():
                if value is not None:
                    tf.summary.scalar(f"shot/{group}", value)
            for c, accuracy in enumerate(summary["per_class_accuracy"]):
                if accuracy is not None:
                    tf.summary.scalar(f"per_class/{c:03d}_{self.class_names[c]}", accuracy)
        self.writer.flush()
        if logs is not None:
            logs["test_top1"] = summary["top1"]


class ReportEvaluationFailure(keras.callbacks.Callback):
    """Raises the evaluation's data error after the callbacks that log and back up the epoch (put it
    after them): an unreadable test image stops the run without costing the epoch just trained."""

    def __init__(self, evaluation: PerClassEvaluation):
        super().__init__()
        self.evaluation = evaluation

    def on_epoch_end(self, epoch, logs=None):
        if self.evaluation.failure is not None:
            raise self.evaluation.failure


class MetricsJsonl(keras.callbacks.Callback):
    """Appends one JSON line of the epoch's logs (and wall time) to a file.

    Each line also says when this process started ("started", UTC): the lines of a run resumed after
    a kill carry a new value, so `rundir.training_time` counts the starts.
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self._start = time.time()
        self._trimmed = False
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def on_epoch_begin(self, epoch, logs=None):
        if not self._trimmed:  # The first epoch of this start: the backup has been restored by now.
            self._trimmed = True
            rundir.trim_metrics(self.path, epoch)
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, "seconds": round(time.time() - self._start, 2), "started": self.started}
        record.update({k: float(v) for k, v in (logs or {}).items()})
        durability.fault_point("metrics")
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and remembers the epoch (1-based)."""

    def __init__(self):
        super().__init__()
        self.nan_epoch = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_epoch = self._epoch + 1
            self.model.stop_training = True


class GuardedBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose backup survives a kill or a full disk mid-write.

    Each epoch's weights go to a temporary file that is flushed and renamed to
    `epoch_<N>.weights.h5`; only then does training_metadata.json (written the same way) name it,
    and only then is the backup before the previous one deleted. So at every instant the metadata
    names a complete file, and the previous epoch's file is still there: a damaged latest file (a
    disk that lied) falls back to it with one line. Never backs up non-finite weights: after
    `stop_on_nan` trips, nothing is written. The backup is never deleted here: rundir.remove_backup removes it
    once model.keras is complete. Reads the layout of Keras' own callback (latest.weights.h5) too,
    so runs started before resume.
    """

    def __init__(self, backup_dir: str, stop_on_nan: StopOnNaN, **kwargs):
        super().__init__(backup_dir, delete_checkpoint=False, **kwargs)
        self.stop_on_nan = stop_on_nan

    def on_train_begin(self, logs=None):
        self._restore()
        epoch = getattr(self.model, "_initial_epoch", 0) or 0
        if epoch:
            print(
                f"Resuming from epoch {epoch + 1} (epochs 1-{epoch} restored from {self.backup_dir})",
                flush=True,
            )

    def _candidates(self) -> list[tuple[str, int]]:
        """(weights file, epoch) to try, best first: the one the metadata names, then older ones."""
        named, epoch = None, None
        if os.path.exists(self._training_metadata_path):
            try:
                with open(self._training_metadata_path) as f:
                    metadata = json.load(f)
                epoch = int(metadata["epoch"])
                named = metadata.get("weights", os.path.basename(self._weights_path))  # Keras' layout.
            except (OSError, ValueError, KeyError, TypeError):
                pass  # Damaged metadata: the numbered files say their epochs.
        numbered = sorted(
            (
                (name, int(name[6:-11]))
                for name in os.listdir(self.backup_dir)
                if _BACKUP_NAME.fullmatch(name)
            ),
            key=lambda item: -item[1],
        )
        candidates = [(named, epoch)] if named is not None else []
        return candidates + [
            (name, e) for name, e in numbered if name != named and (epoch is None or e <= epoch)
        ]

    def _restore(self) -> None:
        if not os.path.isdir(self.backup_dir):
            return
        candidates = self._candidates()
        if not candidates:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)  # Its state is in the file.
        failures = []
        for name, epoch in candidates:
            try:
                self.model.load_weights(os.path.join(self.backup_dir, name))
            except Exception as error:  # h5py and Keras raise many types for a damaged file.
                failures.append(f"{name}: {(str(error).strip().splitlines() or [type(error).__name__])[0]}")
                continue
            if failures:
                print(
                    f"Backup {failures[0]} is damaged; resuming from the previous one ({name}).", flush=True
                )
            self.model._initial_epoch = epoch
            return
        raise TrainingError(
            f"every backup in {self.backup_dir} is damaged ({'; '.join(failures)[:300]}); move that folder "
            "away to start again from epoch 1 (checkpoints/ keeps weights of earlier epochs)"
        )

    def _save_model(self):
        if self.stop_on_nan.nan_epoch is not None:
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"epoch_{self._current_epoch:05d}.weights.h5"
        partial = os.path.join(self.backup_dir, PARTIAL_WEIGHTS)
        self.model.save_weights(partial, overwrite=True)
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        durability.fault_point("backup.partial")
        os.replace(partial, os.path.join(self.backup_dir, name))
        durability.fault_point("backup.renamed")
        previous = [n for n, _ in self._candidates() if n != name][:1]
        rundir.write_json(
            self._training_metadata_path,
            {"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": name},
        )
        durability.fault_point("backup.cleanup")
        for old in os.listdir(self.backup_dir):  # Keep the new file and the one before it.
            if old not in (name, *previous) and (_BACKUP_NAME.fullmatch(old) or old == "latest.weights.h5"):
                os.remove(os.path.join(self.backup_dir, old))


# The backup's weights files, and the temporary name each is written under.
_BACKUP_NAME = re.compile(r"epoch_\d{5}\.weights\.h5")
PARTIAL_WEIGHTS = "partial.weights.h5"


class GuardedModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """`keras.callbacks.ModelCheckpoint` that writes nothing once `stop_on_nan` has tripped."""

    def __init__(self, filepath: str, stop_on_nan: StopOnNaN, **kwargs):
        super().__init__(filepath, **kwargs)
        self.stop_on_nan = stop_on_nan

    def _save_model(self, epoch, batch, logs):
        if self.stop_on_nan.nan_epoch is None:
            super()._save_model(epoch, batch, logs)


class TrainingStatistics(keras.callbacks.Callback):
    """Every `every` epochs (and after the last), logs the statistics of the paper's Fig. 7.

    Per class, to TensorBoard (`<log_dir>/stats`): `train_accuracy/<c>_<name>` on a fixed,
    unaugmented sample of the training subset, `test_accuracy/...` on the test split,
    `classifier_norm/...` (||w_c||_2) and `feature_deviation/...`: the distance between the class's
    mean l2-normalised feature on that training sample and on the test split. A Custom Scalars
    layout shows each statistic with all classes in one chart, as in Fig. 7.

    It is handed its data (the training wiring builds the pipelines) and makes one inference pass
    over each per logged epoch; training itself is unchanged (same weights with --deterministic).
    BENCHMARKS.md measures its cost.
    """

    def __init__(
        self,
        train_sample: tf.data.Dataset,
        train_labels: np.ndarray,
        test: tf.data.Dataset,
        test_labels: np.ndarray,
        class_names: Sequence[str],
        log_dir: str,
        every: int,
        epochs: int,
        evaluation: PerClassEvaluation | None = None,
    ):
        """
        Args:
          train_sample: unaugmented (images, labels) batches of a sample of the training subset.
          train_labels: its labels [N].
          test: unaugmented (images, labels) batches of the test split.
          test_labels: its labels [M].
          class_names: C names (TensorBoard tags).
          log_dir: the run's TensorBoard directory.
          every: log every this many epochs (and after the last).
          epochs: the run's epochs.
          evaluation: the run's PerClassEvaluation, listed before this callback: on an epoch that
            both log, its test pass is reused instead of a second one.
        """
        super().__init__()
        self.class_names = list(class_names)
        self.train_sample, self.train_labels = train_sample, np.asarray(train_labels, np.int64)
        self.test, self.test_labels = test, np.asarray(test_labels, np.int64)
        self.every, self.epochs = every, epochs
        self.evaluation = evaluation
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "stats"))
        self._probe = None

    def on_train_begin(self, logs=None):
        with self.writer.as_default():
            _write_custom_scalars_layout(
                {
                    "train_accuracy": "training accuracy (sample)",
                    "test_accuracy": "test accuracy",
                    "classifier_norm": "classifier norm ||w_c||",
                    "feature_deviation": "train/test feature mean distance",
                }
            )
        self.writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every and epoch + 1 != self.epochs:
            return
        num_classes = len(self.class_names)
        if self._probe is None:  # Shares the network's layers, so it always sees the current weights.
            self._probe = features.probe(self.model)
        train = features.extract(self._probe, self.train_sample, self.train_labels)
        shared = self.evaluation.latest if self.evaluation is not None else None
        if shared is not None and shared[0] == epoch:
            test = shared[1]
        else:
            test = features.extract(self._probe, self.test, self.test_labels)
        statistics = {
            "train_accuracy": evaluate.per_class_accuracy(train.logits.argmax(1), train.labels, num_classes),
            "test_accuracy": evaluate.per_class_accuracy(test.logits.argmax(1), test.labels, num_classes),
            "classifier_norm": diagnosis.classifier_norms(features.classifier(self.model)[1]),
            "feature_deviation": diagnosis.mean_deviation(
                train.features, train.labels, test.features, test.labels, num_classes
            ),
        }
        with self.writer.as_default(step=epoch):
            for name, values in statistics.items():
                for c, value in enumerate(values):
                    if np.isfinite(value):
                        tf.summary.scalar(f"{name}/{c:03d}_{self.class_names[c]}", float(value))
        self.writer.flush()


def _write_custom_scalars_layout(charts: dict[str, str]) -> None:
    """One TensorBoard Custom Scalars chart per tag prefix, holding every tag `<prefix>/...`."""
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.custom_scalar import summary as custom_scalar_summary

    layout = layout_pb2.Layout(
        category=[
            layout_pb2.Category(
                title="per-class statistics (Fig. 7)",
                chart=[
                    layout_pb2.Chart(
                        title=title, multiline=layout_pb2.MultilineChartContent(tag=[rf"^{prefix}/"])
                    )
                    for prefix, title in charts.items()
                ],
            )
        ]
    )
    tf.summary.experimental.write_raw_pb(custom_scalar_summary.pb(layout).SerializeToString(), step=0)
