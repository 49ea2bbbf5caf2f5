r"""Throughput of the training input pipeline alone and of ResNet-32 training steps.

  python tools/benchmark_throughput.py --data_dir=../shared/data/cifar10-jpeg

Builds the CIFAR-10-LT (rho = 100) subset exactly as `cdt_tf.main` does, then
times (1) iterating the tf.data training pipeline (augmentation included), and
(2) `model.fit` on it with the run's compile (CDT loss, coupled-decay SGD,
metrics), after one warm-up epoch that pays for tracing. Prints images/s.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from cdt_tf import (  # noqa: E402
    catalog,
    cli,
    distribution,
    input_pipeline,
    models,
    network_layers,
    objective,
    run_data,
)
from cdt_tf import config as config_lib  # noqa: E402
from cdt_tf.optimizers import CoupledDecaySGD  # noqa: E402

flags.DEFINE_string("data_dir", "../shared/data/cifar10-jpeg", "CIFAR-10 image folder or TFDS data_dir.")
flags.DEFINE_string("model", "resnet32", "Network to time.")
flags.DEFINE_enum("loss", "cdt", catalog.LOSSES, "Training objective.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("train_steps", 60, "Timed training steps.")
flags.DEFINE_integer("pipeline_epochs", 3, "Timed passes over the input pipeline.")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_enum(
    "precision",
    None,
    catalog.PRECISIONS,
    "Precision to time (resolved as cdt_tf.main's --precision). Default: the CLI's default.",
)
flags.DEFINE_enum(
    "conv_padding",
    config_lib.Config.conv_padding,
    catalog.CONV_PADDINGS,
    "How strided convolutions pad (cdt_tf.main's --conv_padding; default: the CLI's default).",
)
flags.DEFINE_string(
    "profile_dir",
    None,
    "Also trace --train_steps steps with the TensorFlow profiler into this folder (open it in "
    "TensorBoard's Profile tab, or read its op statistics with xprof).",
)
flags.DEFINE_integer("repeats", 3, "Timed fits of --train_steps each; the median and each are printed.")
flags.DEFINE_bool(
    "bn_cast_float32",
    False,
    "Cast each batch norm's low-precision input to float32 and back around the fused kernel (the "
    "path before 2026-12-03), to time against the default that feeds it bfloat16 directly.",
)
flags.DEFINE_bool(
    "keras_batchnorm", False, "Use keras.layers.BatchNormalization instead of the fused TensorFlow kernel."
)
FLAGS = flags.FLAGS


def main(_):
    config = config_lib.Config(
        dataset="cifar10",
        data_dir=FLAGS.data_dir,
        model_dir="/tmp/unused",
        imbalance="exp",
        imbalance_ratio=100,
        loss=FLAGS.loss,
        gamma=0.3,
        batch_size=FLAGS.batch_size,
    ).validate()
    keras.utils.set_random_seed(0)
    data = run_data.load(config)
    images, labels, class_counts = data.images("train"), data.labels("train"), data.class_counts
    dataset = input_pipeline.build_train_dataset(images, labels, FLAGS.batch_size, "crop_flip", 0)

    for _ in dataset:  # Fills the cache.
        pass
    start, seen = time.time(), 0
    for _ in range(FLAGS.pipeline_epochs):
        for batch, _ in dataset:
            seen += int(batch.shape[0])
    pipeline_rate = seen / (time.time() - start)
    print(f"input pipeline alone: {pipeline_rate:,.0f} images/s ({seen} images)", flush=True)

    requested = FLAGS.precision or config_lib.Config.precision  # The dataclass default is the CLI's.
    precision = distribution.set_precision(distribution.machine_precision(requested))
    network_layers.FusedBatchNormalization.cast_to_float32 = FLAGS.bn_cast_float32
    if FLAGS.keras_batchnorm:  # network_layers.conv_bn builds every network's batch norms.
        network_layers.FusedBatchNormalization = keras.layers.BatchNormalization
    model = models.build_model(
        FLAGS.model, 10, images.shape[1:], *data.normalization(), padding=FLAGS.conv_padding
    )
    model.compile(
        optimizer=CoupledDecaySGD(coupled_weight_decay=2e-4, learning_rate=0.1, momentum=0.9),
        loss=objective.build_loss(config, class_counts),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=FLAGS.jit_compile,
    )
    repeated = dataset.repeat()
    model.fit(repeated, steps_per_epoch=10, epochs=1, verbose=0)  # Tracing and warm-up.
    rates = []
    for _ in range(FLAGS.repeats):
        start = time.time()
        model.fit(repeated, steps_per_epoch=FLAGS.train_steps, epochs=1, verbose=0)
        rates.append(FLAGS.train_steps * FLAGS.batch_size / (time.time() - start))
    train_rate = float(np.median(rates))
    if FLAGS.profile_dir:
        import tensorflow as tf

        tf.profiler.experimental.start(FLAGS.profile_dir)
        model.fit(repeated, steps_per_epoch=FLAGS.train_steps, epochs=1, verbose=0)
        tf.profiler.experimental.stop()
        print(f"profile of {FLAGS.train_steps} steps: {FLAGS.profile_dir}", flush=True)
    variant = (
        f"{precision} (--precision={requested}), conv_padding={FLAGS.conv_padding}, "
        f"bn_cast_float32={FLAGS.bn_cast_float32}, jit_compile={FLAGS.jit_compile}, "
        f"keras_batchnorm={FLAGS.keras_batchnorm}"
    )
    print(
        f"{FLAGS.model} training ({FLAGS.loss}, batch {FLAGS.batch_size}, {variant}): "
        f"{train_rate:,.0f} images/s (median of {', '.join(f'{r:,.0f}' for r in rates)})",
        flush=True,
    )
    print(f"pipeline / training = {pipeline_rate / train_rate:.1f}x")


if __name__ == "__main__":
    cli.run_tool(main)
