"""tf.distribute strategies (--strategy) and mixed precision (--mixed_precision).

Batch size: --batch_size is the global batch, split evenly over the replicas. Keras divides each
replica's mean loss by the number of replicas and sums the gradients across replicas, so the update
equals the single-device update on the whole batch (tests/distribution_test.py checks it). Batch
normalisation statistics are per replica (as PyTorch's DataParallel and the paper's code). Class-
weighted losses normalise by their replica's weights (Σ w over the replica's share of the batch).

multi_worker: MultiWorkerMirroredStrategy over the machines that the TF_CONFIG environment variable
lists; every machine runs the same command and cdt_tf/multi_worker.py trains with a custom loop.
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from cdt_tf import catalog
from cdt_tf.errors import UserError

STRATEGIES = catalog.STRATEGIES
# multi_worker trains with a custom loop (cdt_tf/multi_worker.py), not Model.fit: Keras 3's fit and
# predict fail under MultiWorkerMirroredStrategy (keras-team/keras#20585, tensorflow/tensorflow#72388).


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy for --strategy=name.

    auto: MirroredStrategy over all GPUs when more than one is visible, else the default
    (single-device) strategy. mirrored: MirroredStrategy over all visible GPUs (or the CPU).
    one_device: the first GPU, else the CPU. multi_worker: MultiWorkerMirroredStrategy configured by
    TF_CONFIG (all local GPUs, or the CPU, of every worker); call this before any other TensorFlow op.
    """
    if name not in STRATEGIES:
        raise UserError(f"unknown --strategy {name!r}; use one of {STRATEGIES}")
    if name == "multi_worker":
        # Before anything touches the devices: collective ops must be configured while the
        # TensorFlow context is still uninitialised (even listing devices initialises it).
        read_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The strategy's public name (MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"
    return type(strategy).__name__


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Machines that train: TF_CONFIG's chief and workers under multi_worker, else 1."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return worker_count(read_tf_config())
    return 1


def read_tf_config(environ=None) -> dict:
    """TF_CONFIG, parsed and checked: {"cluster": {"chief"?: [...], "worker": [...]}, "task": {...}}.

    Raises a UserError (one line) when it is missing or does not name this task in its cluster.
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    example = (
        'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\' (see BUILD.md)'
    )
    if not text.strip():
        raise UserError(
            f"--strategy=multi_worker needs the TF_CONFIG environment variable on every worker: {example}"
        )
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"TF_CONFIG is not JSON ({error}); set it as {example}") from error
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise UserError(f'TF_CONFIG needs a "cluster" and a "task"; set it as {example}')
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in ("chief", "worker"):
        raise UserError(f'TF_CONFIG\'s task type must be "chief" or "worker", got {task_type!r}')
    if not isinstance(index, int) or not 0 <= index < len(cluster.get(task_type) or []):
        raise UserError(f"TF_CONFIG's task {task_type} {index!r} is not in its cluster {cluster}")
    if len(cluster.get("chief") or []) > 1:
        raise UserError("TF_CONFIG's cluster may hold one chief at most")
    return tf_config


def is_chief(tf_config: dict) -> bool:
    """The task that writes the run directory: the "chief" task, else worker 0 when there is no chief."""
    task = tf_config["task"]
    if task["type"] == "chief":
        return True
    return not tf_config["cluster"].get("chief") and task.get("index", 0) == 0


def worker_count(tf_config: dict) -> int:
    """Machines (tasks) that train: the chief, if any, and the workers."""
    cluster = tf_config["cluster"]
    return len(cluster.get("chief") or []) + len(cluster.get("worker") or [])


def task_name(tf_config: dict) -> str:
    """worker<i> or chief<i>: names a worker's scratch directory."""
    return f"{tf_config['task']['type']}{tf_config['task'].get('index', 0)}"


# Overrides what cpu_supports_bfloat16 reads from /proc/cpuinfo: 1 (the CPU has bfloat16 arithmetic),
# 0 (it has not), unset or empty (read /proc/cpuinfo). Tests set it to run as on another x86-64 CPU,
# in-process and in every command they start; so does anyone who wants --precision=auto to resolve
# as on another machine.
CPU_BFLOAT16_ENV = "CDT_TF_CPU_BF16"


def cpu_flags() -> str:
    """The CPU feature flags of /proc/cpuinfo ("" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_supports_bfloat16(flags: str | None = None, environ=None) -> bool:
    """Whether the CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX).

    Args:
      flags: cpuinfo text to judge; None: this machine's, unless CDT_TF_CPU_BF16 (CPU_BFLOAT16_ENV)
        is 1 or 0, which then decides.
      environ: the environment to read CDT_TF_CPU_BF16 from (default os.environ).
    """
    if flags is None:
        forced = (os.environ if environ is None else environ).get(CPU_BFLOAT16_ENV, "").strip()
        if forced in ("0", "1"):
            return forced == "1"
        if forced:
            raise UserError(f"{CPU_BFLOAT16_ENV} must be 1, 0 or unset (read /proc/cpuinfo), got {forced!r}")
        flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """(major, minor) compute capability of each visible GPU ((0, 0) where TensorFlow does not say)."""
    return [
        tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0))
        for gpu in tf.config.list_physical_devices("GPU")
    ]


def resolve_precision(requested: str, gpu_capabilities: list[tuple[int, int]], cpu_has_bfloat16: bool) -> str:
    """The Keras dtype policy for --precision on a machine with these devices (a pure function).

    Args:
      requested: one of catalog.PRECISIONS, or "mixed" (the deprecated --mixed_precision: like auto
        but refusing machines without fast reduced precision).
      gpu_capabilities: (major, minor) per visible GPU; empty on a CPU-only machine.
      cpu_has_bfloat16: whether the CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX).

    Returns:
      "float32", "mixed_bfloat16" or "mixed_float16". auto: mixed_float16 when every GPU has
      tensor cores (compute capability >= 7.0), mixed_bfloat16 on a CPU-only machine with native
      bfloat16, float32 elsewhere (older GPUs, CPUs without bfloat16).
    """
    if requested == "float32" or requested == "mixed_bfloat16":
        return requested
    if requested == "mixed_float16":
        if not gpu_capabilities:
            raise UserError("--precision=mixed_float16 needs a GPU; use --precision=auto or float32")
        return requested
    if requested not in ("auto", "mixed"):
        raise UserError(f"unknown --precision {requested!r}; use one of {catalog.PRECISIONS}")
    if gpu_capabilities:
        if all(tuple(c) >= (7, 0) for c in gpu_capabilities):
            return "mixed_float16"
    elif cpu_has_bfloat16:
        return "mixed_bfloat16"
    if requested == "mixed":
        raise UserError(
            "--mixed_precision needs a GPU of compute capability >= 7.0 or a CPU with bfloat16 arithmetic "
            "(AVX512-BF16/AMX); drop the flag, or use --precision=auto (float32 here)"
        )
    return "float32"


def machine_precision(requested: str) -> str:
    """`resolve_precision` for this machine's devices (CDT_TF_CPU_BF16 overrides its CPU's bfloat16)."""
    return resolve_precision(requested, gpu_compute_capabilities(), cpu_supports_bfloat16())


def set_precision(policy: str) -> str:
    """Sets Keras' global dtype policy (a resolved precision); returns it. Logits, temperatures and
    losses stay float32 (the classifier layer is float32 and every loss casts its inputs); Keras
    wraps the optimizer in a LossScaleOptimizer under mixed_float16."""
    if policy not in catalog.PRECISIONS or policy == "auto":
        raise ValueError(f"set_precision takes a resolved precision, got {policy!r}")
    keras.mixed_precision.set_global_policy(policy)
    return policy
