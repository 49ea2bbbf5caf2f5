"""Shared test helpers: the repository root, the offline CIFAR-10 folder, and a CLI runner."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from absl import flags

from cdt_tf import config as config_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10_JPEG = os.path.join(REPO_ROOT, "..", "shared", "data", "cifar10-jpeg")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pytest-xdist's workers (the suite runs with -n 2) ignore SIGINT, and an ignored signal stays ignored in
# every command they start: give Ctrl-C back its default so that the commands a test starts (the
# faults test's SIGINT) see it as a user's commands do.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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


# The head of a subprocess script that compares one device with MirroredStrategy on two logical CPUs
# (set before TensorFlow touches the device): json, np, tf, keras, and a 16-example batch x [16, 6], y.
TWO_LOGICAL_CPUS = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = np.array([0, 1, 2, 3] * 4, "int64")
    """)


def load_tool(name: str, folder: str = "tools"):
    """A script of tools/ (or experiments/) as a module: they are not a package and cdt_tf never
    imports them, so tests load them from their files."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def subprocess_env(**extra: str) -> dict:
    """The environment of every command a test starts: this checkout first on the path, quiet TF."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO_ROOT, **extra}


def flagfile_config(path: str, *extra: str) -> config_lib.Config:
    """The validated Config that a flagfile gives (with a placeholder --model_dir and any extra flags)."""
    values = flags.FlagValues()
    config_lib.define_flags(values)
    values(["prog", f"--flagfile={path}", "--model_dir=/tmp/x", *extra])
    return config_lib.Config.from_flags(values)


def run_command(*command: str, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command in the repository root (captured text output) and returns the finished process.

    The one subprocess helper of the suite: `run_module` and `run_cli` call it, and tests that run
    Python snippets, tools or saved_model_cli call it directly (`sys.executable` for Python).
    """
    kwargs.setdefault("env", subprocess_env())
    kwargs.setdefault("cwd", REPO_ROOT)
    return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, **kwargs)


def run_module(module: str, *args: str, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    """Runs `python -m MODULE ARGS` (e.g. cdt_tf.post_hoc) in the repository root."""
    return run_command(sys.executable, "-m", module, *args, timeout=timeout, **kwargs)


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs `python -m cdt_tf.main ARGS` in the repository root and returns the finished process."""
    return run_module("cdt_tf.main", *args, timeout=timeout)


def recording_python(tmp_path, fail: str = ""):
    """(a stand-in Python that appends its arguments to a log, one JSON line each, and exits 3 when its
    last argument ends with `fail`, else 0; the log)."""
    log, fake = tmp_path / "commands.jsonl", tmp_path / "fake_python"
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"sys.exit(3 if {fail!r} and sys.argv[-1].endswith({fail!r}) else 0)\n"
    )
    fake.chmod(0o755)
    return fake, log


def digits_run(model_dir, *args: str) -> tuple[dict, list[dict]]:
    """A DIGITS_SMOKE run with ARGS into model_dir, which must succeed: (results.json, metrics.jsonl's
    epochs)."""
    result = run_cli(*DIGITS_SMOKE, *args, f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return results, [json.loads(line) for line in f]


@pytest.fixture
def cli():
    return run_cli


# Calls that make a test end-to-end: it starts a command line, or trains a run in-process.
_E2E_CALLS = (
    "run_cli(",
    "run_module(",
    "run_command(",
    "cli(",
    "digits_run(",
    "subprocess.",
    "train_and_evaluate(",
)


def _source(function) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def _e2e_helpers(module) -> tuple[str, ...]:
    """Calls of a test module's own helper functions that start a command line or a training run."""
    names = [
        name
        for name, value in vars(module).items()
        if inspect.isfunction(value)
        and value.__module__ == module.__name__
        and not name.startswith("test_")
        and any(call in _source(value) for call in _E2E_CALLS)
    ]
    return tuple(f"{name}(" for name in names)


def pytest_collection_modifyitems(config, items):
    """Marks `e2e` every test that (itself, through a helper of its module or a fixture) runs a command
    line or a training run, so that `pytest -m "not e2e"` runs the unit tests alone."""
    helpers = {}
    for item in items:
        module = getattr(item, "module", None)
        if module not in helpers:
            helpers[module] = _e2e_helpers(module) if module is not None else ()
        calls = _E2E_CALLS + helpers[module]
        sources = [_source(getattr(item, "function", None))]
        fixture_info = getattr(item, "_fixtureinfo", None)
        for name in getattr(fixture_info, "names_closure", ()):
            for definition in fixture_info.name2fixturedefs.get(name, ()):
                if definition.baseid:  # The suite's own fixtures, not pytest's.
                    sources.append(_source(definition.func))
        if any(call in source for source in sources for call in calls):
            item.add_marker(pytest.mark.e2e)
