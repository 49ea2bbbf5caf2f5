"""--strategy=multi_worker: workers on 127.0.0.1 train in step (custom loop, cdt_tf/multi_worker.py)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import zipfile

import h5py
import numpy as np
import pytest

from cdt_tf import distribution
from cdt_tf.errors import UserError
from conftest import DIGITS_SMOKE, REPO_ROOT


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _tf_config(ports: list[int], index: int) -> str:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def _run_together(commands: list[tuple[list[str], str | None]], log_dir, timeout: int = 240) -> list[str]:
    """Starts `python -m cdt_tf.main ARGS` once per (ARGS, TF_CONFIG or None), all at once; waits for
    all; returns their outputs and asserts that each exited 0."""
    processes, logs = [], []
    try:
        for i, (args, tf_config) in enumerate(commands):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO_ROOT}
            env.pop("TF_CONFIG", None)
            if tf_config is not None:
                env["TF_CONFIG"] = tf_config
            logs.append(open(log_dir / f"process{i}.log", "w+"))
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cdt_tf.main", *args],
                    cwd=REPO_ROOT,
                    env=env,
                    stdout=logs[-1],
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        deadline = time.monotonic() + timeout
        for process in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        hung = [i for i, process in enumerate(processes) if process.poll() is None]
    else:
        hung = []
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    # A hang names the process(es) still running at the deadline, with every process's last lines.
    assert not hung, f"process(es) {hung} still running after {timeout} s:\n" + "\n".join(
        f"--- process{i}:\n{output[-1500:]}" for i, output in enumerate(outputs)
    )
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    return outputs


def _arrays(file) -> dict[str, np.ndarray]:
    """Every array of a Keras .weights.h5 file (layers/<layer>/vars/<i>, optimizer/vars/<i>)."""
    arrays = {}
    with h5py.File(file, "r") as f:
        f.visititems(
            lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
        )
    return arrays


def _is_moving_statistic(name: str) -> bool:
    # BatchNormalization's variables are gamma, beta, moving mean, moving variance (vars/0..3).
    return "batch_normalization" in name and name.endswith(("/vars/2", "/vars/3"))


def test_two_workers_train_in_step_and_only_the_chief_writes(tmp_path):
    ports = _free_ports(2)
    model_dir = tmp_path / "run"  # Shared by both workers, as on a shared file system.
    args = [*DIGITS_SMOKE, "--strategy=multi_worker", f"--model_dir={model_dir}"]
    chief_out, worker_out = _run_together(
        [(args, _tf_config(ports, 0)), (args, _tf_config(ports, 1))], tmp_path
    )

    results = json.load(open(model_dir / "results.json"))
    assert results["strategy"] == "MultiWorkerMirroredStrategy"
    assert results["replicas"] == 2 and results["workers"] == 2
    assert 0 <= results["top1"] <= 1
    assert "Results:" in chief_out and "is not the chief" in worker_out
    epochs = [json.loads(line) for line in open(model_dir / "metrics.jsonl")]
    assert [e["epoch"] for e in epochs] == [1, 2]  # One writer.
    assert all(np.isfinite(e["loss"]) and "test_top1" in e for e in epochs)
    assert (model_dir / "model.keras").exists() and (model_dir / "post_hoc.png").exists()
    # The other worker wrote only under its scratch directory, and none of the run's outputs.
    scratch = model_dir / "workers" / "worker1"
    written = {name for _, _, files in os.walk(scratch) for name in files}
    assert "final.weights.h5" in written
    assert not written & {"results.json", "metrics.jsonl", "model.keras", "post_hoc.png"}
    assert not (scratch / "checkpoints").exists() or not os.listdir(scratch / "checkpoints")
    assert not (scratch / "backup").exists()  # Deleted at the end of training, as the chief's.

    # Both workers end with the same weights and optimizer state. Batch-norm moving statistics are per
    # replica (as under MirroredStrategy and PyTorch's DataParallel): the chief's are the model's.
    chief = _arrays(model_dir / "checkpoints" / "epoch_002.weights.h5")
    worker = _arrays(scratch / "final.weights.h5")
    assert sorted(chief) == sorted(worker)
    shared = [name for name in chief if not _is_moving_statistic(name)]
    assert any(name.startswith("optimizer/") for name in shared) and any("conv2d" in name for name in shared)
    difference = max(float(np.abs(chief[n].astype(float) - worker[n].astype(float)).max()) for n in shared)
    momentum = float(np.abs(chief["optimizer/vars/1"]).max())  # A momentum buffer: training moved it.
    print(f"{len(shared)} arrays; max |chief - worker| = {difference}; max |momentum| = {momentum}")
    assert difference == 0.0 and momentum > 0
    # model.keras (the evaluation copy) holds exactly the chief's final weights.
    with zipfile.ZipFile(model_dir / "model.keras") as archive:
        saved = _arrays(io.BytesIO(archive.read("model.weights.h5")))
    assert all(np.array_equal(saved[name], chief[name]) for name in chief if name.startswith("layers/"))


@pytest.mark.parametrize(
    "extra",
    [(), ("--sam_rho=0.05", "--sam_classes=tail", "--sam_tail_threshold=50")],
    ids=["plain", "imbsam"],
)
def test_one_worker_matches_the_single_device_fit(tmp_path, extra):
    """The custom loop takes fit's steps: plain ones, and SAM's (cdt_tf/sam.py) with --sam_rho."""
    (port,) = _free_ports(1)
    mw_dir, fit_dir = tmp_path / "multi_worker", tmp_path / "fit"
    _run_together(
        [
            (
                [*DIGITS_SMOKE, *extra, "--strategy=multi_worker", f"--model_dir={mw_dir}"],
                _tf_config([port], 0),
            ),
            ([*DIGITS_SMOKE, *extra, f"--model_dir={fit_dir}"], None),
        ],
        tmp_path,
    )
    ours = [json.loads(line) for line in open(mw_dir / "metrics.jsonl")]
    theirs = [json.loads(line) for line in open(fit_dir / "metrics.jsonl")]
    print([(a["loss"], b["loss"]) for a, b in zip(ours, theirs, strict=True)])
    assert [sorted(a) for a in ours] == [sorted(b) for b in theirs]  # The same logs.
    for a, b in zip(ours, theirs, strict=True):
        for key in ("loss", "accuracy", "top5", "learning_rate", "gamma", "test_top1"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    mw, fit = _arrays(mw_dir / "checkpoints" / "epoch_002.weights.h5"), _arrays(
        fit_dir / "checkpoints" / "epoch_002.weights.h5"
    )
    assert sorted(mw) == sorted(fit)
    assert all(np.allclose(mw[n], fit[n], rtol=1e-4, atol=1e-6) for n in mw)
    assert json.load(open(mw_dir / "results.json"))["workers"] == 1


@pytest.mark.parametrize(
    "tf_config, chief",
    [
        ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
        ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
        (
            {"cluster": {"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "task": {"type": "chief", "index": 0}},
            True,
        ),
        (
            {"cluster": {"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}},
            False,
        ),
    ],
)
def test_the_chief_is_the_chief_task_else_worker_0(tf_config, chief):
    parsed = distribution.read_tf_config({"TF_CONFIG": json.dumps(tf_config)})
    assert distribution.is_chief(parsed) is chief
    assert distribution.worker_count(parsed) == len(tf_config["cluster"].get("chief", [])) + 2
    task = tf_config["task"]
    assert distribution.task_name(parsed) == f"{task['type']}{task['index']}"


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "needs the TF_CONFIG environment variable"),
        ("{not json", "TF_CONFIG is not JSON"),
        ('{"cluster": {"worker": ["a:1"]}}', 'needs a "cluster" and a "task"'),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "is not in its cluster"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "evaluator", "index": 0}}', "task type must be"),
    ],
)
def test_bad_tf_config_is_a_one_line_error(value, message):
    with pytest.raises(UserError, match=message) as error:
        distribution.read_tf_config({"TF_CONFIG": value} if value else {})
    assert "\n" not in str(error.value)


def test_missing_tf_config_on_the_cli(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = cli(*DIGITS_SMOKE, "--strategy=multi_worker", f"--model_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cdt_tf: error: --strategy=multi_worker needs the TF_CONFIG environment variable")
    assert not (tmp_path / "run").exists()
