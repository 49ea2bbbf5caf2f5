"""Keras callbacks of a training run: scalar logging, per-class test evaluation, NaN guard."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from cdt_tf import evaluate


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


class PerClassEvaluation(keras.callbacks.Callback):
    """Every `every` epochs (and after the last), evaluates the test set per class.

    Writes test top-1/top-5, many/medium/few and one accuracy per class to
    TensorBoard (`<log_dir>/test`), and adds `test_top1` to the epoch's logs.
    `latest` holds (epoch, logits) of the last evaluation, for reuse after training.
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
        self.dataset, self.labels = dataset, labels
        self.class_counts, self.class_names = list(class_counts), list(class_names)
        self.every, self.epochs = every, epochs
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "test"))
        self.latest = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every and epoch + 1 != self.epochs:
            return
        logits = self.model.predict(self.dataset, verbose=0)
        self.latest = (epoch, logits)
        summary = evaluate.summarize(logits, self.labels, self.class_counts)
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


class MetricsJsonl(keras.callbacks.Callback):
    """Appends one JSON line of the epoch's logs (and wall time) to a file."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self._start = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, "seconds": round(time.time() - self._start, 2)}
        record.update({k: float(v) for k, v in (logs or {}).items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


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
