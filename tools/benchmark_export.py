r"""CPU latency and throughput of the exported SavedModel, next to Keras' model.predict on the same model.

  python tools/benchmark_export.py --model=digits_convnet        # 8x8 digits ConvNet, seconds
  python tools/benchmark_export.py --model=resnet32              # CIFAR ResNet-32, about a minute
  python tools/benchmark_export.py --model_dir=runs/cifar10_lt100_cdt   # a trained run's model.keras

Exports the model (cdt_tf.export.export_model, into a temporary directory), reloads it with
tf.saved_model.load, and times on random uint8 images:
  latency    batch 1: the median of --calls calls, after --warmup calls;
  throughput batch --batch_size: images/s from the median of --throughput_calls calls.
for the `serving_default` signature (preprocessing, network, N_c^tau, softmax, class names),
`model.predict` and `model.predict_on_batch`. Weights do not change the speed, so --model times an
untrained network. Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags, logging  # noqa: E402

from cdt_tf import cli, export, models  # noqa: E402
from cdt_tf.rundir import load_model, read_finished  # noqa: E402

flags.DEFINE_string("model", "digits_convnet", f"Network to time, untrained: one of {models.MODEL_NAMES}.")
flags.DEFINE_integer("num_classes", 10, "Classes of the untrained --model.")
flags.DEFINE_integer(
    "image_size", 0, "Input side of the untrained --model (0: 8 for digits_convnet, else 32)."
)
flags.DEFINE_string("model_dir", None, "Time this finished run's model.keras instead of --model.")
flags.DEFINE_integer("calls", 50, "Timed batch-1 calls (the median is reported).")
flags.DEFINE_integer("warmup", 5, "Untimed calls before each measurement (tracing, caches).")
flags.DEFINE_integer("batch_size", 128, "Batch of the throughput measurement.")
flags.DEFINE_integer("throughput_calls", 10, "Timed calls at --batch_size (the median is reported).")
FLAGS = flags.FLAGS


def median_seconds(function, calls: int, warmup: int) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(flag_values):
    """(model, class_counts, class_names, description)."""
    if flag_values.model_dir:
        _, _, results = read_finished(flag_values.model_dir)
        model = load_model(os.path.join(flag_values.model_dir, "model.keras"))
        return model, results["class_counts"], results["class_names"], flag_values.model_dir
    size = flag_values.image_size or (8 if flag_values.model == "digits_convnet" else 32)
    keras.utils.set_random_seed(0)
    model = models.build_model(
        flag_values.model, flag_values.num_classes, (size, size, 3), (0.5,) * 3, (0.25,) * 3
    )
    counts = [max(1, 1000 // (c + 1)) for c in range(flag_values.num_classes)]
    names = [f"class_{c}" for c in range(flag_values.num_classes)]
    return model, counts, names, f"{flag_values.model} (untrained, {size}x{size})"


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Not TensorFlow's INFO lines about the temporary export.
    model, counts, names, description = build(FLAGS)
    height, width = model.inputs[0].shape[1:3]
    rng = np.random.default_rng(0)
    single = rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (FLAGS.batch_size, height, width, 3), dtype=np.uint8)

    with tempfile.TemporaryDirectory() as export_dir:
        path = export.export_model(model, counts, names, export_dir, tau=0.5)
        serve = tf.saved_model.load(path).signatures["serving_default"]
        single_tensor, batch_tensor = tf.constant(single), tf.constant(batch)
        np.testing.assert_allclose(
            serve(images=batch_tensor)["logits"].numpy(),
            model.predict(batch, verbose=0),
            rtol=1e-4,
            atol=1e-4,
        )
        candidates = {
            "SavedModel serving_default": lambda x, t: serve(images=t)["classes"].numpy(),
            "model.predict": lambda x, t: model.predict(x, verbose=0),
            "model.predict_on_batch": lambda x, t: model.predict_on_batch(x),
        }
        rows = []
        for name, function in candidates.items():
            latency = median_seconds(lambda f=function: f(single, single_tensor), FLAGS.calls, FLAGS.warmup)
            per_batch = median_seconds(
                lambda f=function: f(batch, batch_tensor), FLAGS.throughput_calls, FLAGS.warmup
            )
            rows.append((name, latency * 1000, FLAGS.batch_size / per_batch))
            print(f"{name}: {latency * 1000:.2f} ms at batch 1, {rows[-1][2]:,.0f} images/s", flush=True)

    print(
        f"\n{description}; {os.cpu_count()} CPU cores; TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )
    print(f"| path | latency, batch 1 (median of {FLAGS.calls}) | throughput, batch {FLAGS.batch_size} |")
    print("|---|---|---|")
    for name, latency, throughput in rows:
        print(f"| {name} | {latency:.2f} ms | {throughput:,.0f} images/s |")


if __name__ == "__main__":
    cli.run_tool(main)
