"""End to end: every baseline trains from the CLI, held-out tau selection, post_hoc and cRT CLIs,
the flagfiles of Tables 2/5/7/9 and the table reproducer."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from cdt_tf import paper_results
from conftest import DIGITS_SMOKE, REPO_ROOT, flagfile_config, run_command, run_module

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import reproduce_table  # noqa: E402

DIGITS = DIGITS_SMOKE + ("--gamma=0.0",)


def _module(module, *args, timeout=300):
    return run_module(module, *args, timeout=timeout)


def _results(model_dir):
    with open(os.path.join(model_dir, "results.json")) as f:
        return json.load(f)


@pytest.mark.parametrize(
    "loss_flags",
    [
        ("--loss=ldam", "--drw_epoch=1"),
        ("--loss=cb", "--cb_loss=focal", "--sampler=class_balanced"),
        ("--loss=reweight", "--gamma=1.0", "--gamma_schedule=step", "--gamma_epoch=1"),
        ("--loss=focal", "--class_weight_reduction=batch_size"),
        ("--loss=la", "--la_tau=1.0"),
    ],
    ids=lambda flags_: flags_[0][7:],
)
def test_each_baseline_trains_and_writes_post_hoc(cli, tmp_path, loss_flags):
    model_dir = tmp_path / "run"
    result = cli(*DIGITS, *loss_flags, f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    results = _results(model_dir)
    assert 0 <= results["top1"] <= 1
    assert set(results["post_hoc"]) >= {"nc_tau", "logit_adjustment", "ncm"}
    assert all(e["selected_on"] in ("test", None) for e in results["post_hoc"].values())
    assert "post-hoc" in result.stdout and "selected on" in result.stdout
    assert (model_dir / "post_hoc.png").exists()
    records = [json.loads(line) for line in open(model_dir / "metrics.jsonl")]
    if "--drw_epoch=1" in loss_flags:
        assert [r["drw"] for r in records] == [0.0, 1.0]
        assert "w_norm" not in results["post_hoc"]  # The cosine classifier has no norms to use.
    if "--gamma_schedule=step" in loss_flags:
        assert [r["gamma"] for r in records] == [0.0, 1.0]


def test_holdout_then_full_run_then_post_hoc_and_crt(cli, tmp_path):
    """The Table 9 protocol: select taus on K held out a class, then apply them to the full run."""
    common = (*DIGITS, "--loss=cdt", "--gamma=0.2", "--steps_per_epoch=0")
    holdout_dir, full_dir = tmp_path / "holdout", tmp_path / "full"
    result = cli(*common, "--holdout_per_class=3", f"--model_dir={holdout_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    holdout = _results(holdout_dir)
    subset = json.load(open(holdout_dir / "subset.json"))
    assert len(subset["holdout_ids"]) == 3 * 10
    assert not set(subset["holdout_ids"]) & set(subset["ids"])
    assert holdout["post_hoc"]["nc_tau"]["selected_on"] == "holdout"

    result = cli(*common, f"--tau_from={holdout_dir}", f"--model_dir={full_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    full = _results(full_dir)
    assert [n + 3 for n in holdout["class_counts"]] == full["class_counts"]
    assert full["post_hoc"]["nc_tau"]["tau"] == holdout["post_hoc"]["nc_tau"]["tau"]
    assert full["post_hoc"]["nc_tau"]["selected_on"] == "holdout of holdout"

    again = _module("cdt_tf.post_hoc", f"--model_dir={full_dir}")  # Keeps the run's --tau_from.
    assert again.returncode == 0, again.stderr[-2000:]
    assert _results(full_dir)["post_hoc"]["nc_tau"]["selected_on"] == "holdout of holdout"

    crt = _module("cdt_tf.retrain_classifier", f"--model_dir={full_dir}", "--epochs=3")
    assert crt.returncode == 0, crt.stderr[-2000:]
    assert "Retrained classifier: top-1" in crt.stdout
    assert 0 <= _results(full_dir)["post_hoc"]["crt"]["top1"] <= 1
    balanced = _module(
        "cdt_tf.retrain_classifier",
        f"--model_dir={full_dir}",
        "--imbalance=none",
        "--max_per_class=20",
        "--sampler=instance",
        "--epochs=2",
    )
    assert balanced.returncode == 0, balanced.stderr[-2000:]
    record = json.load(open(full_dir / "retrained_balanced_max20_instance.json"))
    assert record["classifier_data"]["class_counts"] == [20] * 10


def test_bad_tau_from_fails_before_training(cli, tmp_path):
    result = cli(*DIGITS, f"--tau_from={tmp_path / 'nothing'}", f"--model_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "--tau_from" in result.stderr and "no results.json" in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_post_hoc_cli_on_a_missing_run_is_one_line(tmp_path):
    result = _module("cdt_tf.post_hoc", f"--model_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("cdt_tf: error:")


# ----------------------------------------------------------------------------- flagfiles


def test_committed_flagfiles_match_the_generator():
    result = run_command(sys.executable, os.path.join(REPO_ROOT, "tools", "make_flagfiles.py"), "--check")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("table, profile", [("2", "exp"), ("7", "step")])
def test_a_flagfile_for_every_cifar_row_of_tables_2_and_7(table, profile):
    kind = "lt" if profile == "exp" else "step"
    for dataset, ratio in paper_results.COLUMNS:
        for suffix in paper_results.METHOD_FLAGFILES.values():
            path = os.path.join(REPO_ROOT, "flags", f"{dataset}_{kind}{ratio}_{suffix}.cfg")
            text = open(path).read()
            assert f"Paper, Table {table}:" in text, path
            config = flagfile_config(path)
            assert (config.dataset, config.imbalance, config.imbalance_ratio) == (dataset, profile, ratio)
            assert config.epochs == 200 and config.resolved_model == "resnet32"


def test_method_flagfiles_set_their_method():
    def load(suffix):
        return flagfile_config(os.path.join(REPO_ROOT, "flags", f"cifar10_lt100_{suffix}.cfg"))

    assert load("resample").sampler == "class_balanced"
    assert load("ldam_drw").drw_epoch == 160 and load("ldam_drw").resolved_classifier == "cosine"
    assert load("ldam").drw_epoch == 0
    assert load("cb").loss == "cb" and load("cb").cb_beta == 0.9999
    assert load("cdt_holdout3").holdout_per_class == 3
    balanced = flagfile_config(os.path.join(REPO_ROOT, "flags", "cifar10_balanced1240_ce.cfg"))
    assert balanced.imbalance == "none" and balanced.max_per_class == 1240


# ----------------------------------------------------------------------------- reproducer


def test_compressed_flags_scale_every_epoch_count():
    values = reproduce_table.flagfile_values(os.path.join(REPO_ROOT, "flags", "cifar10_lt100_ldam_drw.cfg"))
    assert reproduce_table.compressed_flags(values, 200) == []
    assert reproduce_table.compressed_flags(values, 20) == [
        "--epochs=20",
        "--warmup_epochs=1",
        "--drw_epoch=16",
        "--decay_epochs=16,18",
    ]


def test_table_collects_runs_and_prints_ours_beside_the_paper(tmp_path):
    runs = tmp_path / "runs"
    for suffix, top1, post in (
        ("ce", 0.6312, {"nc_tau": 0.70, "w_norm": 0.66, "ncm": 0.71}),
        ("cdt", 0.69, {}),
    ):
        run_dir = runs / f"cifar10_lt100_{suffix}_e20"
        run_dir.mkdir(parents=True)
        section = {k: {"top1": v, "tau": 0.5, "selected_on": "test"} for k, v in post.items()}
        (run_dir / "results.json").write_text(json.dumps({"top1": top1, "post_hoc": section}))
    reference = runs / "reference_cifar10_lt100_ce_e20"  # tools/reference_parity.py's run beside ERM's.
    reference.mkdir()
    (reference / "results.json").write_text(json.dumps({"top1": 0.6401}))
    output = tmp_path / "table.md"
    result = _reproduce(
        "--table=2",
        "--datasets=cifar10",
        "--ratios=100",
        "--methods=ERM,CDT,Focal",
        f"--runs_dir={runs}",
        "--epochs=20",
        "--norun",
        f"--output={output}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = output.read_text()
    assert "| ERM | 63.1 (71.1) |\n| ERM: paper's code, same images | 64.0 (71.1) |" in text
    assert "CDT: paper's code" not in text and "kaidic/LDAM-DRW's training" in text
    assert "| CDT | 69.0 (79.4) |" in text
    assert "| Focal | — (70.4) |" in text
    assert "| ERM+N_c^τ | 70.0 (77.8) |" in text
    assert "| CDT+N_c^τ | — (79.4) |" in text
    assert "compressed 10.0x" in text and "selected on the test set" in text
    assert "--flagfile=flags/cifar10_lt100_focal.cfg" in text and "--epochs=20" in text


def _reproduce(*args):
    return run_command(sys.executable, os.path.join(REPO_ROOT, "tools", "reproduce_table.py"), *args)


def test_table_9_reads_the_full_runs_test_sweep_at_the_held_out_tau(tmp_path):
    taus = [0.0, 0.5, 1.0]
    sweep_section = {"nc_tau": {"tau": 1.0, "top1": 0.74, "selected_on": "test"}}
    sweep_section["nc_tau"]["sweep"] = {"split": "test", "taus": taus, "top1": [0.70, 0.73, 0.74]}
    runs = {
        "cifar10_lt100_cdt_e20": {"top1": 0.70, "post_hoc": sweep_section},
        "cifar10_lt100_cdt_holdout3_e20": {
            "top1": 0.69,
            "post_hoc": {"nc_tau": {"tau": 0.5, "top1": 0.72, "selected_on": "holdout"}},
        },
    }
    for name, results in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    result = _reproduce("--table=9", "--datasets=cifar10", f"--runs_dir={tmp_path}", "--epochs=20", "--norun")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| cifar10 LT ρ=100: CDT+N_c^τ | 74.0 (79.36) | 73.0 (79.31) |" in result.stdout


def test_missing_runs_with_norun_leave_dashes_and_exit_zero(tmp_path):
    result = _reproduce("--table=5", f"--runs_dir={tmp_path}", "--epochs=20", "--norun")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| balanced | — (85.6) | — (82.2) |" in result.stdout
    assert "cdt_tf.retrain_classifier" in result.stdout


def test_post_hoc_cli_keeps_the_crt_entry(tmp_path, cli):
    model_dir = tmp_path / "run"
    assert cli(*DIGITS, f"--model_dir={model_dir}").returncode == 0
    assert _module("cdt_tf.retrain_classifier", f"--model_dir={model_dir}", "--epochs=1").returncode == 0
    crt = _results(model_dir)["post_hoc"]["crt"]
    with np.load(model_dir / crt["weights"]) as weights:  # What `cdt_tf.export --classifier=crt` serves.
        assert weights["kernel"].shape[1] == weights["bias"].shape[0] == len(crt["per_class_accuracy"])
    again = _module("cdt_tf.post_hoc", f"--model_dir={model_dir}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert {"crt", "nc_tau", "ncm"} <= set(_results(model_dir)["post_hoc"])


def test_crt_with_label_aware_smoothing_reports_validation(tmp_path, cli):
    model_dir = tmp_path / "run"
    assert cli(*DIGITS, "--val_per_class=5", f"--model_dir={model_dir}").returncode == 0
    bad = _module("cdt_tf.retrain_classifier", f"--model_dir={model_dir}", "--smooth_head=1.5")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "cdt_tf: error: --smooth_head"
    )
    result = _module(
        "cdt_tf.retrain_classifier",
        f"--model_dir={model_dir}",
        "--epochs=2",
        "--smooth_head=0.3",
        "--smooth_tail=0.1",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(validation " in result.stdout
    record = json.load(open(model_dir / "retrained_own_las0.3-0.1_class_balanced.json"))
    epsilon = record["label_aware_smoothing"]["epsilon"]
    assert epsilon[0] == pytest.approx(0.3) and epsilon[-1] == pytest.approx(0.1)
    assert 0 <= record["validation"]["top1"] <= 1
    assert "crt_las" in _results(model_dir)["post_hoc"] and "crt" not in _results(model_dir)["post_hoc"]
    # cRT on batch-norm statistics re-estimated on class-balanced batches: its own key and weights.
    result = _module(
        "cdt_tf.retrain_classifier", f"--model_dir={model_dir}", "--epochs=1", "--bn_stats=class_balanced"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Re-estimating the batch-norm statistics" in result.stdout
    record = _results(model_dir)["post_hoc"]["crt_bn"]
    assert (
        record["bn_stats"] == "class_balanced" and record["weights"] == "retrained_own_bn_class_balanced.npz"
    )
    with np.load(model_dir / record["weights"]) as weights:
        assert any(key.startswith("bn/") and key.endswith("/moving_mean") for key in weights.files)


def test_main_runs_the_second_stage_once_and_refuses_smoothing_without_values(tmp_path, cli):
    model_dir = tmp_path / "run"
    flags_ = (*DIGITS, "--val_per_class=5", f"--model_dir={model_dir}", "--second_stage=crt_las")
    bad = cli(*flags_, "--smooth_head=0", "--smooth_tail=0")
    assert bad.returncode == 2 and "--second_stage=crt_las smooths labels" in bad.stderr
    assert not model_dir.exists()  # Refused before anything was written.
    result = cli(*flags_, "--smooth_head=0.2", "--smooth_tail=0.05")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Second stage: crt_las on the trained network" in result.stdout
    assert f"cdt_tf.export --model_dir={model_dir} --classifier=crt_las" in result.stdout
    record = _results(model_dir)["post_hoc"]["crt_las"]
    assert record["label_aware_smoothing"]["head"] == 0.2 and record["label_aware_smoothing"]["tail"] == 0.05
    assert (model_dir / record["weights"]).is_file() and record["validation"] is not None
    assert record["seconds"] > 0 and f"({record['seconds']:.0f} s)" in result.stdout
    # The same command again: the finished run and its second stage are reused, not redone.
    again = cli(*flags_, "--smooth_head=0.2", "--smooth_tail=0.05")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Second stage: crt_las on the trained network" not in again.stdout
    assert f"Second stage crt_las: top-1 {100 * record['top1']:.2f}%" in again.stdout
