"""Faults: a run killed with SIGKILL resumes from its last epoch; a NaN keeps the last good checkpoint."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

from cdt_tf import durability, rundir
from conftest import REPO_ROOT, run_cli, run_module, subprocess_env

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
    # Continues after the backup, not from epoch 1; a line the backup lacked is redone once: no gap, no
    # duplicate.
    assert _epochs(model_dir) == list(range(1, 13))
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


# Fault injection (cdt_tf.durability.fault_point): short digits runs, killed or given a full disk inside
# every kind of state write, then the same command again.
FAULT_RUN = (
    "--dataset=digits",
    "--imbalance=exp",
    "--imbalance_ratio=10",
    "--loss=cdt",
    "--gamma=0.3",
    "--epochs=8",
    "--steps_per_epoch=1",
    "--batch_size=16",
    "--warmup_epochs=1",
    "--decay_epochs=6",
    "--decay_multipliers=0.1",
    "--eval_every=100",
    "--checkpoint_every=1",
)
FAULT_EPOCHS = 8


def _fault_chains(seed: int = 22) -> list[list[str]]:
    """Four chains of faults, each on a fresh run: a kill at every site (SIGKILL or SIGINT, seeded, at a
    seeded count), and a full disk at every site. model.partial (written once, at the end) closes a
    chain."""
    rng = random.Random(seed)
    sites = [s for s in durability.FAULT_SITES if s != "model.partial"]
    kills = [f"{site}:{rng.randint(1, 2)}:{rng.choice(['KILL', 'INT'])}" for site in sites]
    disk_full = [f"{site}:1:ENOSPC" for site in sites]
    faults = kills + disk_full
    rng.shuffle(faults)
    chains = [faults[k::4] for k in range(4)]
    chains[0].append("model.partial:1:KILL")
    chains[1].append("model.partial:1:ENOSPC")
    chains[2].append("model.partial:1:INT")
    return chains


def _check_state(model_dir: str) -> list[int]:
    """What every fault must leave: metrics.jsonl without gap or duplicate, at most the epoch in progress
    missing from the backup, no results without a complete model."""
    epochs = _epochs(model_dir)
    assert epochs == list(range(1, len(epochs) + 1)), epochs
    if not os.path.exists(os.path.join(model_dir, "model.keras")):
        assert rundir.backed_up_epochs(model_dir) >= len(epochs) - 1
        assert not os.path.exists(os.path.join(model_dir, "results.json"))
    return epochs


def test_kills_and_full_disks_inside_every_write_lose_at_most_the_epoch_in_progress(tmp_path):
    for number, chain in enumerate(_fault_chains()):
        model_dir = str(tmp_path / f"run{number}")
        args = (*FAULT_RUN, f"--model_dir={model_dir}")
        for fault in chain:
            result = run_module("cdt_tf.main", *args, env=subprocess_env(CDT_TF_FAULTS=fault))
            action = fault.rsplit(":", 1)[1]
            expected = {"KILL": -signal.SIGKILL, "INT": 130, "ENOSPC": 2}[action]
            assert result.returncode == expected, f"{fault}: {result.returncode} {result.stderr[-1500:]}"
            if action != "KILL":
                assert "Traceback" not in result.stderr, result.stderr[-3000:]
                last = result.stderr.strip().splitlines()[-1]
                assert ("cdt_tf: interrupted " if action == "INT" else "no space left on the disk") in last
            _check_state(model_dir)
        final = run_cli(*args)
        assert final.returncode == 0, f"after {chain}: {final.stderr[-2000:]}"
        assert _check_state(model_dir) == list(range(1, FAULT_EPOCHS + 1))
        with open(os.path.join(model_dir, "results.json")) as f:
            assert json.load(f)["epochs"] == FAULT_EPOCHS
        left = set(os.listdir(model_dir))
        assert "backup" not in left and "model.partial.keras" not in left
        assert not [name for name in left if name.endswith(".tmp")]


def test_a_second_start_is_refused_and_the_first_run_is_unaffected(tmp_path):
    model_dir = str(tmp_path / "run")
    args = (*FAULT_RUN, "--epochs=6", "--decay_epochs=5", f"--model_dir={model_dir}")
    first = subprocess.Popen(
        [sys.executable, "-m", "cdt_tf.main", *args],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not _epochs(model_dir) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    # The first run is held still (it keeps its lock) while the second starts, however slowly the
    # machine imports TensorFlow: without that, a busy machine let the first run finish first.
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = run_cli(*args)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, first_errors = first.communicate(timeout=300)
    assert second.returncode == 2, second.stderr[-2000:]
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cdt_tf: error: --model_dir {model_dir} is in use by process {first.pid} on ")
    assert first.returncode == 0, first_errors[-2000:]
    assert _epochs(model_dir) == list(range(1, 7))


def test_a_damaged_latest_backup_falls_back_to_the_one_before(tmp_path):
    model_dir = str(tmp_path / "run")
    args = (*FAULT_RUN, f"--model_dir={model_dir}")
    killed = run_module("cdt_tf.main", *args, env=subprocess_env(CDT_TF_FAULTS="metrics:5:KILL"))
    assert killed.returncode == -signal.SIGKILL
    backup = os.path.join(model_dir, "backup")
    assert sorted(n for n in os.listdir(backup) if n.endswith(".h5")) == [
        "epoch_00003.weights.h5",
        "epoch_00004.weights.h5",
    ]
    with open(os.path.join(backup, "epoch_00004.weights.h5"), "r+b") as f:  # A disk that lied.
        f.truncate(1000)
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (
        "epoch_00004.weights.h5" in resumed.stdout
        and "is damaged; resuming from the previous" in resumed.stdout
    )
    assert "Resuming from epoch 4 (epochs 1-3 restored" in resumed.stdout
    assert _epochs(model_dir) == list(range(1, FAULT_EPOCHS + 1))
