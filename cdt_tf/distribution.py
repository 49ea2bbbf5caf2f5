"""tf.distribute strategies (--strategy) and mixed precision (--mixed_precision).

Batch size: --batch_size is the global batch, split evenly over the replicas. Keras divides each
replica's mean loss by the number of replicas and sums the gradients across replicas, so the update
equals the single-device update on the whole batch (tests/distribution_test.py checks it). Batch
normalisation statistics are per replica (as PyTorch's DataParallel and the paper's code). Class-
weighted losses normalise by their replica's weights (Σ w over the replica's share of the batch).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from cdt_tf.errors import UserError

STRATEGIES = ("auto", "mirrored", "one_device")
# Not offered: multi-worker training. Keras 3's Model.fit fails under MultiWorkerMirroredStrategy
# (keras-team/keras#20585, tensorflow/tensorflow#72388: reducing the PerReplica batch in its symbolic
# build, and its per-replica output reduction); it needs a custom training loop.


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy for --strategy=name.

    auto: MirroredStrategy over all GPUs when more than one is visible, else the default
    (single-device) strategy. mirrored: MirroredStrategy over all visible GPUs (or the CPU).
    one_device: the first GPU, else the CPU.
    """
    if name not in STRATEGIES:
        raise UserError(f"unknown --strategy {name!r}; use one of {STRATEGIES}")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def cpu_supports_bfloat16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def mixed_precision_policy() -> str:
    """mixed_float16 on GPUs, mixed_bfloat16 on CPUs with native bfloat16; else a UserError."""
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    if cpu_supports_bfloat16():
        return "mixed_bfloat16"
    raise UserError(
        "--mixed_precision needs a GPU or a CPU with bfloat16 arithmetic (AVX512-BF16/AMX); drop the flag"
    )


def set_precision(mixed: bool) -> str:
    """Sets Keras' global dtype policy; returns its name. Logits, temperatures and losses stay float32
    (the classifier layer is float32 and every loss casts its inputs); Keras wraps the optimizer in a
    LossScaleOptimizer under mixed_float16."""
    policy = mixed_precision_policy() if mixed else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy
