"""Shared test helpers: the repository root, the offline CIFAR-10 folder, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10_JPEG = os.path.join(REPO_ROOT, "..", "shared", "data", "cifar10-jpeg")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# A two-step CDT training run on digits: the fastest real run of the CLI.
DIGITS_SMOKE = (
    "--dataset=digits",
    "--imbalance=exp",
    "--imbalance_ratio=10",
    "--loss=cdt",
    "--gamma=0.3",
    "--epochs=2",
    "--steps_per_epoch=2",
    "--batch_size=32",
    "--warmup_epochs=1",
    "--decay_epochs=1",
    "--decay_multipliers=0.1",
    "--eval_every=1",
    "--checkpoint_every=1",
)


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs `python -m cdt_tf.main ARGS` in the repository root and returns the finished process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO_ROOT}
    return subprocess.run(
        [sys.executable, "-m", "cdt_tf.main", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli
