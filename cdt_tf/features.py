"""What a trained network gives for a split: penultimate features and logits in one pass, and its classifier.

Every report (end-of-training evaluation, post-hoc calibration, cRT, the analysis, the Fig. 7
statistics callback) takes its features from `extract`: one inference pass per split, whether the
split is an in-memory array or a `tf.data.Dataset` streamed from files.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cdt_tf import catalog

# TensorFlow and Keras are imported by the functions that need them, so that the CLIs can read a
# run directory (and refuse a bad one) before TensorFlow loads.


@dataclasses.dataclass(frozen=True)
class Features:
    """One split seen by a network: features [N, D] f(x), logits [N, C] w_c^T f(x) (+ b_c), labels [N]."""

    features: np.ndarray
    logits: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, positions) -> Features:
        """The examples at `positions` (int indices into this split)."""
        positions = np.asarray(positions, np.int64)
        return Features(self.features[positions], self.logits[positions], self.labels[positions])


def probe(model):
    """The network with two outputs, (features, logits); it shares the model's layers and weights."""
    import keras

    from cdt_tf import models

    return keras.Model(model.inputs, [models.feature_extractor(model).output, model.outputs[0]])


def extract(model_or_probe, data, labels, batch_size: int = catalog.EVAL_BATCH_SIZE) -> Features:
    """Features and logits of a split in one inference pass.

    Args:
      model_or_probe: a cdt_tf model (its last layer is named "classifier"), or its `probe` (pass the
        probe when calling repeatedly: its traced predict function is then reused).
      data: uint8 images [N, H, W, 3], or a `tf.data.Dataset` of (images, labels) batches in the
        order of `labels` (e.g. `RunData.eval_dataset`).
      labels: int [N], the split's labels.
      batch_size: examples per batch for an array.
    """
    from cdt_tf import input_pipeline

    network = model_or_probe if len(model_or_probe.outputs) == 2 else probe(model_or_probe)
    labels = np.asarray(labels, np.int64)
    if isinstance(data, np.ndarray):
        data = input_pipeline.build_eval_dataset(data, labels, batch_size)
    features, logits = network.predict(data, verbose=0)
    if len(features) != len(labels):
        raise ValueError(f"the data gave {len(features)} examples for {len(labels)} labels")
    return Features(np.asarray(features, np.float32), np.asarray(logits, np.float32), labels)


def classifier(model) -> tuple[str, np.ndarray]:
    """("linear" | "cosine", kernel [D, C] float64) of a cdt_tf model's classifier: column c is w_c."""
    import keras

    layer = model.get_layer("classifier")
    kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
    return ("linear" if isinstance(layer, keras.layers.Dense) else "cosine"), kernel
