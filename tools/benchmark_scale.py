r"""Throughput at ImageNet scale on this machine: the iNaturalist file pipeline alone, and ResNet-50 steps.

  python tools/benchmark_scale.py                       # synthetic iNat-sized JPEGs in a temp folder
  python tools/benchmark_scale.py --inat_dir=/data/inat2018   # the real train2018.json + images

(1) Iterates `build_file_train_dataset` (file-level shuffle, parallel read + JPEG decode,
random-resized crop to 224, flip, batch) and prints images/s. Without --inat_dir it writes
--num_files JPEGs of --width x --height (iNat's images are about 800 px on the long side; the
default 500 x 375 is the resolution of many of them) with smooth random content, so decode
cost is realistic. (2) Times `model.fit` steps of ResNet-50 at 224 x 224 with the CDT loss and
the run's optimizer, after a warm-up that pays for tracing.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from cdt_tf import cli, datasets, input_pipeline, losses, models  # noqa: E402
from cdt_tf.optimizers import CoupledDecaySGD  # noqa: E402

flags.DEFINE_string("inat_dir", None, "A real iNaturalist 2018 folder (train2018.json + images).")
flags.DEFINE_integer("num_files", 1000, "Synthetic JPEGs to write when --inat_dir is not given.")
flags.DEFINE_integer("width", 500, "Synthetic image width.")
flags.DEFINE_integer("height", 375, "Synthetic image height.")
flags.DEFINE_integer("batch_size", 64, "Pipeline batch size.")
flags.DEFINE_integer("pipeline_batches", 40, "Timed pipeline batches.")
flags.DEFINE_integer("model_batch_size", 16, "ResNet-50 batch size.")
flags.DEFINE_integer("train_steps", 8, "Timed ResNet-50 steps (0: skip).")
flags.DEFINE_string("precision", "float32", "Keras dtype policy for ResNet-50, e.g. mixed_bfloat16.")
FLAGS = flags.FLAGS


def synthetic_files(folder: str, count: int, width: int, height: int) -> tuple[list[str], np.ndarray]:
    """count JPEGs with smooth random content (upsampled noise), labels 0..99."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        image = tf.image.resize(small, (height, width), method="bilinear")
        path = os.path.join(folder, f"{i:06d}.jpg")
        tf.io.write_file(path, tf.io.encode_jpeg(tf.cast(image, tf.uint8), quality=90))
        paths.append(path)
    return paths, np.arange(count) % 100


def time_pipeline(paths, labels) -> float:
    dataset = input_pipeline.build_file_train_dataset(
        paths, labels, FLAGS.batch_size, seed=0, image_size=224, repeat=True
    )
    iterator = iter(dataset)
    for _ in range(3):  # Warm-up: thread pools, autotuning.
        next(iterator)
    start = time.time()
    for _ in range(FLAGS.pipeline_batches):
        next(iterator)
    return FLAGS.pipeline_batches * FLAGS.batch_size / (time.time() - start)


def time_resnet50(num_classes: int = 8142) -> float:
    keras.mixed_precision.set_global_policy(FLAGS.precision)
    batch = FLAGS.model_batch_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch, 224, 224, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=batch)
    counts = rng.integers(2, 1000, size=num_classes)
    data = tf.data.Dataset.from_tensors((images, labels)).repeat()
    model = models.build_model(
        "resnet50", num_classes, (224, 224, 3), datasets.IMAGENET_MEAN, datasets.IMAGENET_STD
    )
    model.compile(
        optimizer=CoupledDecaySGD(coupled_weight_decay=1e-4, learning_rate=0.1, momentum=0.9),
        loss=losses.CDTLoss(counts.tolist(), 0.1),
    )
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # Tracing and warm-up.
    start = time.time()
    model.fit(data, steps_per_epoch=FLAGS.train_steps, epochs=1, verbose=0, shuffle=False)
    return FLAGS.train_steps * batch / (time.time() - start)


def main(_):
    if FLAGS.inat_dir:
        source = datasets.load_source("inat2018", FLAGS.inat_dir)
        paths, labels = source.train.paths, source.train.labels
        what = f"{len(labels)} iNat training files under {FLAGS.inat_dir}"
    else:
        folder = tempfile.mkdtemp(prefix="inat_synthetic_")
        paths, labels = synthetic_files(folder, FLAGS.num_files, FLAGS.width, FLAGS.height)
        what = f"{FLAGS.num_files} synthetic {FLAGS.width}x{FLAGS.height} JPEGs"
    rate = time_pipeline(paths, labels)
    print(
        f"iNat input pipeline alone ({what}; read + decode + random-resized crop 224 + flip, batch "
        f"{FLAGS.batch_size}, {os.cpu_count()} CPUs): {rate:,.0f} images/s",
        flush=True,
    )
    if FLAGS.train_steps:
        rate = time_resnet50()
        print(
            f"ResNet-50 training at 224x224 (8,142 classes, CDT loss, batch {FLAGS.model_batch_size}, "
            f"{FLAGS.precision}): {rate:,.1f} images/s",
            flush=True,
        )


if __name__ == "__main__":
    cli.run_tool(main)
