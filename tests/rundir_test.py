"""The run directory: atomic JSON, refusing damaged files with one line, resuming, finishing an evaluation."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from cdt_tf import config as config_lib
from cdt_tf import durability, rundir
from cdt_tf.errors import UserError
from conftest import DIGITS_SMOKE, REPO_ROOT, run_command, run_module, subprocess_env


def _last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_write_json_is_atomic_and_read_json_refuses_non_objects(tmp_path):
    path = str(tmp_path / "a.json")
    rundir.write_json(path, {"x": 1})
    assert rundir.read_json(path, "object") == {"x": 1}
    assert not os.path.exists(path + ".tmp")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(
        UserError, match=r"is unreadable \(it holds a JSON list, not an object\); use a new --model_dir"
    ):
        rundir.read_json(str(tmp_path / "list.json"), "object", "use a new --model_dir")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(UserError, match="cannot read"):
        rundir.read_json(str(tmp_path / "bad.json"))


def test_config_holding_a_list_is_refused_in_one_line(cli, tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("[1, 2]")
    result = cli(*DIGITS_SMOKE, f"--model_dir={model_dir}")
    assert result.returncode == 2
    assert _last_line(result).startswith("cdt_tf: error:") and "config.json is unreadable" in _last_line(
        result
    )
    assert "Traceback" not in result.stderr


def test_epochs_zero_names_epochs():
    with pytest.raises(UserError, match="^--epochs must be >= 1, got 0$"):
        config_lib.Config(dataset="digits", model_dir="/tmp/x", epochs=0).validate()
    # The cross-flag check still fires when --epochs itself is fine.
    with pytest.raises(UserError, match="--drw_epoch must be in"):
        config_lib.Config(dataset="digits", model_dir="/tmp/x", epochs=3, drw_epoch=5).validate()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("runs") / "digits"
    result = run_module("cdt_tf.main", *DIGITS_SMOKE, f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    return model_dir


def test_garbage_results_of_a_finished_run_are_refused_in_one_line(finished_run, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "subset.json", "model.keras"):
        (copy / name).write_bytes((finished_run / name).read_bytes())
    stored = json.loads((finished_run / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**stored, "model_dir": str(copy)}))
    (copy / "results.json").write_text("not json at all")
    for module, args in (
        ("cdt_tf.main", (*DIGITS_SMOKE, f"--model_dir={copy}")),
        ("cdt_tf.post_hoc", (f"--model_dir={copy}",)),
        ("cdt_tf.export", (f"--model_dir={copy}",)),
    ):
        result = run_module(module, *args)
        assert result.returncode == 2, (module, result.stderr[-1500:])
        assert _last_line(result).startswith("cdt_tf: error: cannot read"), (module, _last_line(result))
        assert "results.json" in _last_line(result) and "Traceback" not in result.stderr


def test_a_finished_training_without_results_is_evaluated_not_retrained(finished_run, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "model.keras"):
        (copy / name).write_bytes((finished_run / name).read_bytes())
    stored = json.loads((finished_run / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**stored, "model_dir": str(copy)}))
    result = run_module("cdt_tf.main", *DIGITS_SMOKE, f"--model_dir={copy}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "evaluating it" in result.stdout and "Epoch 1/" not in result.stdout
    original = json.loads((finished_run / "results.json").read_text())
    again = json.loads((copy / "results.json").read_text())
    assert again["top1"] == original["top1"] and again["post_hoc"]["nc_tau"] == original["post_hoc"]["nc_tau"]


def test_a_resumed_run_says_from_which_epoch(tmp_path):
    model_dir = tmp_path / "run"
    args = [a for a in DIGITS_SMOKE if not a.startswith("--epochs=")]
    first = run_module("cdt_tf.main", *args, "--epochs=2", f"--model_dir={model_dir}")
    assert first.returncode == 0, first.stderr[-2000:]
    # Keep the backup of epoch 1 as a killed run would have left it, then run the same command again.
    backup = model_dir / "backup"
    backup.mkdir(exist_ok=True)
    (backup / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
    import keras

    import cdt_tf  # noqa: F401  (registers the custom objects)

    keras.saving.load_model(model_dir / "model.keras").save_weights(backup / "latest.weights.h5")
    for name in ("model.keras", "results.json"):
        os.remove(model_dir / name)
    again = run_module("cdt_tf.main", *args, "--epochs=2", f"--model_dir={model_dir}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Resuming from epoch 2 (epochs 1-1 restored" in again.stdout
    assert "Epoch 2/2" in again.stdout and "Epoch 1/2" not in again.stdout


def test_importing_the_package_registers_every_custom_object(finished_run):
    for order in ("import cdt_tf, keras", "import keras, cdt_tf"):
        code = f"{order}; keras.models.load_model({str(finished_run / 'model.keras')!r}); print('ok')"
        result = run_command(sys.executable, "-c", code)
        assert result.returncode == 0 and "ok" in result.stdout, (order, result.stderr[-1500:])


def test_collect_run_copies_the_record_without_checkpoints(finished_run, tmp_path):
    tool = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "collect_run.py")
    run = tmp_path / "runs" / finished_run.name
    shutil.copytree(finished_run, run)
    (run / "retrained_own_class_balanced.json").write_text('{"top1": 0.5}')  # A second stage's record...
    (run / "retrained_own_class_balanced.npz").write_bytes(b"weights")  # ... and its weights (left).
    result = run_command(sys.executable, tool, f"--run={run}", f"--results_dir={tmp_path / 'results'}")
    assert result.returncode == 0, result.stderr[-2000:]
    copied = tmp_path / "results" / finished_run.name
    assert sorted(os.listdir(copied)) == [
        "config.json",
        "metrics.jsonl",
        "results.json",
        "retrained_own_class_balanced.json",
    ]
    assert json.loads((copied / "results.json").read_text()) == json.loads(
        (finished_run / "results.json").read_text()
    )
    # Exporting a second stage the run does not have: one line, before TensorFlow loads.
    result = run_command(
        sys.executable,
        tool,
        f"--run={run}",
        f"--results_dir={tmp_path / 'results'}",
        "--export",
        "--classifier=crt_las",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "crt_las" in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]
    assert not (copied / "export").exists()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    refused = run_command(sys.executable, tool, f"--run={unfinished}", f"--results_dir={tmp_path}")
    assert refused.returncode == 2 and "no config.json" in refused.stderr


def test_a_run_from_before_conv_padding_resumes_only_with_same_padding(tmp_path):
    config = config_lib.Config(dataset="digits", model_dir=str(tmp_path)).validate()
    legacy = {k: v for k, v in config.to_dict().items() if k != "conv_padding"}
    (tmp_path / rundir.CONFIG).write_text(json.dumps(legacy))
    (tmp_path / rundir.METRICS).write_text('{"epoch": 1}\n')  # It trained: its config is kept.
    with pytest.raises(UserError, match="conv_padding: 'same' -> 'symmetric'"):
        rundir.prepare(config)
    same = config_lib.Config(dataset="digits", model_dir=str(tmp_path), conv_padding="same").validate()
    assert rundir.prepare(same)["gamma"] == config.gamma
    assert rundir.config_from_dict(legacy).conv_padding == "same"


def test_a_run_from_before_precision_loads_with_or_without_mixed_precision():
    config = config_lib.Config(dataset="digits", model_dir="/tmp/x").validate()
    legacy = {k: v for k, v in config.to_dict().items() if k not in ("precision", "conv_padding")}
    assert rundir.config_from_dict({**legacy, "mixed_precision": False}).precision == "float32"
    # The 200-epoch CDT run of results/ was started with --mixed_precision before --precision existed.
    assert rundir.config_from_dict({**legacy, "mixed_precision": True}).mixed_precision
    assert config.differences({**legacy, "mixed_precision": False}) == ["conv_padding"]


def test_training_time_counts_every_start_and_each_epoch_once(tmp_path):
    assert rundir.training_time(str(tmp_path)) is None  # No metrics.jsonl.
    lines = [
        {"epoch": 1, "seconds": 10.0, "started": "2026-12-03T10:00:00Z"},
        {"epoch": 2, "seconds": 11.0, "started": "2026-12-03T10:00:00Z"},
        {"epoch": 2, "seconds": 12.5, "started": "2026-12-03T11:00:00Z"},  # Logged again after a kill.
        {"epoch": 3, "seconds": 13.0, "started": "2026-12-03T11:00:00Z"},
    ]
    with open(tmp_path / rundir.METRICS, "w") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines) + '{"epoch": 4, "seco')  # Cut by a kill.
    assert rundir.training_time(str(tmp_path)) == {"epochs": 3, "epoch_seconds": 35.5, "starts": 2}
    # Lines from before the "started" field: the starts are unknown, the time is still summed.
    with open(tmp_path / rundir.METRICS, "w") as f:
        f.write(json.dumps({"epoch": 1, "seconds": 4.0}) + "\n")
    assert rundir.training_time(str(tmp_path)) == {"epochs": 1, "epoch_seconds": 4.0, "starts": None}


def test_a_directory_without_a_finished_epoch_takes_new_flags(tmp_path, capsys):
    first = config_lib.Config(dataset="digits", model_dir=str(tmp_path), batch_size=4096).validate()
    rundir.prepare(first)  # Then the start failed: "lower --batch_size".
    (tmp_path / rundir.METRICS).write_text("")
    fixed = config_lib.Config(dataset="digits", model_dir=str(tmp_path), batch_size=32).validate()
    assert rundir.prepare(fixed)["batch_size"] == 32
    assert "holds no finished epoch" in capsys.readouterr().out
    (tmp_path / rundir.BACKUP).mkdir()
    (tmp_path / rundir.BACKUP / "epoch_00001.weights.h5").write_bytes(b"x")
    with pytest.raises(UserError, match="another config"):
        rundir.prepare(first)


def _a_file(root):
    (root / "file").write_text("x")
    return root / "file"


@pytest.mark.parametrize(
    "make, fragment",
    [
        (_a_file, "is a file, not a directory"),
        (lambda root: _a_file(root) / "run", "cannot hold a run (Not a directory)"),
        (lambda root: "/proc/cdt_tf_run", "cannot hold a run"),
    ],
)
def test_an_unusable_model_dir_is_one_line(tmp_path, make, fragment):
    with pytest.raises(UserError, match=re.escape(fragment)):
        durability.check_usable(str(make(tmp_path)))


def test_a_read_only_parent_is_one_line(tmp_path, monkeypatch):
    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "makedirs", refuse)  # As root, chmod and chattr +i are not enforced in tests.
    with pytest.raises(UserError, match=r"cannot hold a run \(Permission denied\)"):
        durability.check_usable(str(tmp_path / "run"))


def test_the_lock_refuses_a_second_process_and_dies_with_its_holder(tmp_path):
    model_dir = str(tmp_path / "run")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from cdt_tf import durability\n"
            f"with durability.exclusive({model_dir!r}):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        cwd=REPO_ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"is in use by process {holder.pid} on "):
            with durability.exclusive(model_dir):
                pass
    finally:
        holder.kill()
        holder.wait()
    with durability.exclusive(model_dir), durability.exclusive(model_dir):  # Free again; re-entrant.
        pass


def test_disk_full_is_recognised_through_the_chain():
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as error:
            raise RuntimeError("h5py: can't write data") from error
    except RuntimeError as error:
        assert durability.is_disk_full(error)
    assert durability.is_disk_full(OSError("Can't write data (file write failed: errno = 28, ...)"))
    assert not durability.is_disk_full(OSError(2, "No such file or directory"))
    with pytest.raises(UserError, match="no space left on the disk of /r while saving; free some space"):
        with durability.disk_full_as_user_error("/r", "saving"):
            raise OSError(28, "No space left on device")
