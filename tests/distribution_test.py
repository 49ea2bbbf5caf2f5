"""tf.distribute: MirroredStrategy on two logical CPUs matches one device; mixed precision and profiling."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest

from cdt_tf import catalog, distribution
from cdt_tf import config as config_lib
from cdt_tf.errors import UserError
from conftest import DIGITS_SMOKE, TWO_LOGICAL_CPUS, run_command

# Tests that train in bfloat16 need a CPU that computes it (AVX512-BF16 or AMX): /proc/cpuinfo decides,
# whatever CDT_TF_CPU_BF16 says; they then fake the detection (`machine`) so that it agrees.
needs_bfloat16_arithmetic = pytest.mark.skipif(
    not distribution.cpu_supports_bfloat16(distribution.cpu_flags()),
    reason="this CPU has no bfloat16 arithmetic to train with",
)


@pytest.fixture
def machine(monkeypatch):
    """Fakes the devices that --precision resolves on: `machine(cpu_bfloat16=..., gpus=[(8, 0)])` sets
    CDT_TF_CPU_BF16 for this process and every command the test starts, and gives this process's
    detection these GPUs (the commands: none, by CUDA_VISIBLE_DEVICES); so a test's precision is the
    same on any x86-64 machine, with or without AVX512-BF16 or a GPU."""

    def fake(cpu_bfloat16: bool, gpus=()) -> None:
        monkeypatch.setenv(distribution.CPU_BFLOAT16_ENV, "1" if cpu_bfloat16 else "0")
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        monkeypatch.setattr(distribution, "gpu_compute_capabilities", lambda: list(gpus))

    return fake


EQUIVALENCE = TWO_LOGICAL_CPUS + textwrap.dedent("""
    from cdt_tf import losses

    def step(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = keras.Sequential(
                [keras.Input((6,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)]
            )
            model.compile(optimizer=keras.optimizers.SGD(1.0), loss=losses.CDTLoss([40, 20, 10, 5], 0.5))
        before = [w.numpy().copy() for w in model.trainable_weights]
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        loss = model.fit(data, epochs=1, verbose=0, shuffle=False).history["loss"][0]
        gradients = [b - w.numpy() for b, w in zip(before, model.trainable_weights)]  # lr 1: w -= g
        return loss, gradients, strategy.num_replicas_in_sync

    one = step(tf.distribute.OneDeviceStrategy("/cpu:0"))
    two = step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    print(json.dumps({
        "replicas": [one[2], two[2]],
        "loss": [one[0], two[0]],
        "max_gradient_difference": max(float(np.abs(a - b).max()) for a, b in zip(one[1], two[1])),
        "max_gradient": max(float(np.abs(a).max()) for a in one[1]),
    }))
    """)


def test_mirrored_on_two_cpus_gives_the_single_device_loss_and_gradients():
    result = run_command(sys.executable, "-c", EQUIVALENCE)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["replicas"] == [1, 2]
    assert record["loss"][0] == pytest.approx(record["loss"][1], rel=1e-5)
    assert record["max_gradient"] > 1e-3  # Something was learned...
    assert record["max_gradient_difference"] < 1e-5  # ...identically.
    print(record)


def test_strategy_vocabulary_matches():
    assert catalog.STRATEGIES == distribution.STRATEGIES


def test_mirrored_flag_and_profile_on_the_cli(cli, tmp_path):
    model_dir = tmp_path / "run"
    result = cli(*DIGITS_SMOKE, "--strategy=mirrored", "--profile_batch=2,3", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MirroredStrategy" in result.stdout
    traces = [f for _, _, files in os.walk(model_dir / "logs") for f in files if f.endswith(".xplane.pb")]
    assert traces, "no profiler trace under logs/"


@needs_bfloat16_arithmetic
def test_mixed_precision_keeps_logits_and_loss_float32(cli, tmp_path, machine):
    machine(cpu_bfloat16=True)  # Also when the suite runs with CDT_TF_CPU_BF16=0.
    model_dir = tmp_path / "run"
    result = cli(*DIGITS_SMOKE, "--mixed_precision", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.load(open(model_dir / "results.json"))
    assert results["precision"] == "mixed_bfloat16"
    import keras

    from cdt_tf import models  # noqa: F401

    model = keras.saving.load_model(model_dir / "model.keras", compile=False)
    assert model.get_layer("classifier").compute_dtype == "float32"
    assert model.get_layer("block1_conv").compute_dtype == "bfloat16"


@pytest.mark.parametrize("value", ["5", "3,2", "0,4", "a,b"])
def test_bad_profile_batch(cli, tmp_path, value):
    result = cli(*DIGITS_SMOKE, f"--profile_batch={value}", f"--model_dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "--profile_batch" in result.stderr.strip().splitlines()[-1]


# --------------------------------------------------------------------------- --precision


@pytest.mark.parametrize(
    "requested, gpus, cpu_bf16, expected",
    [
        ("auto", [(8, 0)], False, "mixed_float16"),  # A100: tensor cores.
        ("auto", [(7, 0), (9, 0)], True, "mixed_float16"),
        ("auto", [(6, 1)], True, "float32"),  # Pascal: fp16 without tensor cores is no faster.
        ("auto", [(8, 0), (6, 1)], False, "float32"),  # Mixed GPUs: the slowest decides.
        ("auto", [], True, "mixed_bfloat16"),  # AVX512-BF16 / AMX CPU.
        ("auto", [], False, "float32"),
        ("float32", [(8, 0)], True, "float32"),
        ("mixed_bfloat16", [], False, "mixed_bfloat16"),  # Asked for: emulated, but honoured.
        ("mixed_float16", [(7, 5)], False, "mixed_float16"),
        ("mixed", [], True, "mixed_bfloat16"),  # The deprecated --mixed_precision.
        ("mixed", [(8, 6)], False, "mixed_float16"),
    ],
)
def test_precision_is_a_pure_function_of_the_devices(requested, gpus, cpu_bf16, expected):
    assert distribution.resolve_precision(requested, gpus, cpu_bf16) == expected


@pytest.mark.parametrize(
    "requested, gpus, message",
    [("mixed_float16", [], "needs a GPU"), ("mixed", [], "--mixed_precision needs"), ("fp8", [], "unknown")],
)
def test_precision_refusals_are_user_errors(requested, gpus, message):
    with pytest.raises(UserError, match=message):
        distribution.resolve_precision(requested, gpus, False)


def test_cpu_flags_decide_bfloat16():
    assert distribution.cpu_supports_bfloat16("fpu avx512f avx512_bf16 amx_tile")
    assert distribution.cpu_supports_bfloat16("amx_bf16")
    assert not distribution.cpu_supports_bfloat16("fpu sse2 avx2 avx512f")


def test_the_environment_decides_the_cpu_bfloat16_where_it_says(monkeypatch):
    monkeypatch.setattr(distribution, "cpu_flags", lambda: "fpu sse2 avx2 avx512f avx512_bf16")
    assert distribution.cpu_supports_bfloat16(environ={})  # Unset: /proc/cpuinfo's flags.
    assert distribution.cpu_supports_bfloat16(environ={"CDT_TF_CPU_BF16": ""})
    assert not distribution.cpu_supports_bfloat16(environ={"CDT_TF_CPU_BF16": "0"})
    monkeypatch.setattr(distribution, "cpu_flags", lambda: "fpu sse2 avx2")
    assert distribution.cpu_supports_bfloat16(environ={"CDT_TF_CPU_BF16": "1"})
    # Flags given explicitly are judged as they are, whatever the environment says.
    assert not distribution.cpu_supports_bfloat16("fpu avx2", environ={"CDT_TF_CPU_BF16": "1"})
    with pytest.raises(UserError, match="CDT_TF_CPU_BF16 must be 1, 0 or unset"):
        distribution.cpu_supports_bfloat16(environ={"CDT_TF_CPU_BF16": "yes"})


@pytest.mark.parametrize(
    "cpu_bfloat16, gpus, expected",
    [(True, [], "mixed_bfloat16"), (False, [], "float32"), (False, [(8, 0)], "mixed_float16")],
)
def test_machine_precision_follows_the_faked_machine(machine, cpu_bfloat16, gpus, expected):
    machine(cpu_bfloat16=cpu_bfloat16, gpus=gpus)
    assert distribution.machine_precision("auto") == expected
    if expected == "float32":
        with pytest.raises(UserError, match="--mixed_precision needs a GPU"):
            distribution.machine_precision("mixed")


def test_mixed_precision_with_precision_is_refused():
    config = config_lib.Config(dataset="digits", model_dir="/tmp/x", mixed_precision=True)
    assert config.validate() is config  # The old flag alone (with the default --precision) still works.
    with pytest.raises(UserError, match="--mixed_precision is the old spelling of --precision"):
        config_lib.Config(
            dataset="digits", model_dir="/tmp/x", mixed_precision=True, precision="float32"
        ).validate()
    with pytest.raises(UserError, match="--mixed_precision is the old spelling of --precision"):
        config_lib.Config(
            dataset="digits", model_dir="/tmp/x", mixed_precision=True, precision="mixed_bfloat16"
        ).validate()


@needs_bfloat16_arithmetic
def test_a_run_records_its_precision_and_a_resumed_run_keeps_it(cli, tmp_path, machine):
    machine(cpu_bfloat16=True)
    model_dir = tmp_path / "run"
    first = cli(*DIGITS_SMOKE, "--precision=auto", f"--model_dir={model_dir}")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "precision mixed_bfloat16" in first.stdout
    stored = json.load(open(model_dir / "config.json"))
    assert stored["precision"] == "auto" and stored["resolved_precision"] == "mixed_bfloat16"
    assert json.load(open(model_dir / "results.json"))["precision"] == "mixed_bfloat16"

    # A run resumed where auto would resolve otherwise keeps what it started with.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "config.json").write_text(
        json.dumps({**stored, "model_dir": str(resumed), "resolved_precision": "float32"})
    )
    again = cli(*DIGITS_SMOKE, "--precision=mixed_bfloat16", f"--model_dir={resumed}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "precision float32" in again.stdout
    assert json.load(open(resumed / "results.json"))["precision"] == "float32"


def test_a_run_from_before_precision_existed_resumes_in_float32(tmp_path, machine):
    """auto is the default now; a config.json without `precision` was a float32 run (or --mixed_precision)."""
    from cdt_tf import train

    machine(cpu_bfloat16=True)  # Where the old --mixed_precision ran: a CPU with bfloat16 arithmetic.
    config = config_lib.Config(dataset="digits", model_dir=str(tmp_path)).validate()
    assert config.precision == "auto"
    for mixed, expected in ((False, "float32"), (True, "mixed_bfloat16")):
        legacy = {
            k: v
            for k, v in config.to_dict().items()
            if k not in ("precision", "conv_padding", "mixed_precision")
        }
        legacy["mixed_precision"] = mixed
        (tmp_path / "config.json").write_text(json.dumps(legacy))
        assert train.resolve_precision(config, legacy) == expected
        assert json.load(open(tmp_path / "config.json"))["resolved_precision"] == expected
