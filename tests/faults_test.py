"""Faults: a run killed with SIGKILL resumes from its last epoch; a NaN keeps the last good checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import REPO_ROOT, run_cli, subprocess_env

RUN = (
    "--dataset=digits",
    "--imbalance=exp",
    "--imbalance_ratio=10",
    "--loss=cdt",
    "--gamma=0.3",
    "--batch_size=8",
    "--warmup_epochs=1",
    "--eval_every=100",
    "--checkpoint_every=1",
)


def _epochs(model_dir):
    path = os.path.join(model_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)["epoch"] for line in f if line.strip()]


def test_sigkilled_run_resumes_from_its_last_epoch(tmp_path):
    model_dir = str(tmp_path / "run")
    args = (*RUN, "--epochs=12", "--decay_epochs=10", "--decay_multipliers=0.1", f"--model_dir={model_dir}")
    process = subprocess.Popen(  # Popen, not run_cli: the test kills it mid-training.
        [sys.executable, "-m", "cdt_tf.main", *args],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while len(_epochs(model_dir)) < 3 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before_kill = _epochs(model_dir)
    assert 3 <= len(done_before_kill) < 12, "the run must be killed mid-training"
    with open(os.path.join(model_dir, "backup", "training_metadata.json")) as f:
        backed_up = json.load(f)["epoch"]
    assert backed_up >= done_before_kill[-1] - 1  # At most one finished epoch is lost.
    assert not os.path.exists(os.path.join(model_dir, "results.json"))

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"Resuming from epoch {backed_up + 1} (epochs 1-{backed_up} restored" in again.stdout
    epochs = _epochs(model_dir)
    resumed = epochs[len(done_before_kill) :]
    assert resumed == list(range(backed_up + 1, 13))  # Continues after the backup, not from epoch 1.
    assert sorted(set(epochs)) == list(range(1, 13))
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    assert results["epochs"] == 12
    # Two processes trained it; the wall time counts every epoch once, over both.
    assert results["training"]["starts"] == 2 and results["training"]["epochs"] == 12
    assert results["training"]["epoch_seconds"] > 0
    assert not os.path.exists(os.path.join(model_dir, "backup"))  # Removed once training finished.


def test_nan_stops_with_the_epoch_and_keeps_the_last_good_checkpoint(tmp_path):
    model_dir = str(tmp_path / "run")
    # Epochs 1-2 train normally; from epoch 3 the learning rate is multiplied by 1e12.
    args = (*RUN, "--epochs=6", "--decay_epochs=2", "--decay_multipliers=1e12", f"--model_dir={model_dir}")
    result = run_cli(*args)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cdt_tf: error: the training loss became NaN in epoch 3")
    assert "last good epoch (2)" in last
    with open(os.path.join(model_dir, "backup", "training_metadata.json")) as f:
        assert json.load(f)["epoch"] == 2  # The NaN epoch was not backed up.
    checkpoints = sorted(os.listdir(os.path.join(model_dir, "checkpoints")))
    assert checkpoints == ["epoch_001.weights.h5", "epoch_002.weights.h5"]
    assert not os.path.exists(os.path.join(model_dir, "model.keras"))
    assert not os.path.exists(os.path.join(model_dir, "results.json"))

    import keras

    from cdt_tf import models

    model = models.digits_convnet(10)
    model.load_weights(os.path.join(model_dir, "checkpoints", "epoch_002.weights.h5"))
    assert all(
        keras.ops.convert_to_numpy(keras.ops.all(keras.ops.isfinite(w))) for w in model.trainable_weights
    )
