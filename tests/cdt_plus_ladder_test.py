"""experiments/cdt_plus_ladder.py: the rungs' command lines, resuming, and the table chosen on validation."""

from __future__ import annotations

import json
import os
import sys

from conftest import REPO_ROOT, flagfile_config, recording_python, run_command, subprocess_env

LADDER = os.path.join(REPO_ROOT, "experiments", "cdt_plus_ladder.py")

# Stands in for `python -m cdt_tf.main`: records its argv and writes a finished run's results.json
# whose validation top-1 grows with the number of flags (so the longest rung is best on validation)
# and whose test top-1 falls with it (so a tool choosing on test would pick another rung).
FAKE_MAIN = """#!{python}
import json, os, sys
args = sys.argv[1:]
model_dir = next(a.split("=", 1)[1] for a in args if a.startswith("--model_dir="))
if args[1] == "cdt_tf.retrain_classifier":
    head = next((a.split("=", 1)[1] for a in args if a.startswith("--smooth_head=")), None)
    tail = next((a.split("=", 1)[1] for a in args if a.startswith("--smooth_tail=")), None)
    name = "own" if head is None else "own_las%g-%g" % (float(head), float(tail))
    name += "_bn" if "--bn_stats=class_balanced" in args else ""
    record = {{"top1": 0.5, "validation": {{"top1": 0.99 if head else 0.2}}}}
    with open(os.path.join(model_dir, "retrained_%s_class_balanced.json" % name), "w") as f:
        json.dump(record, f)
    sys.exit(0)
os.makedirs(model_dir, exist_ok=True)
with open(os.path.join(model_dir, "argv.json"), "w") as f:
    json.dump(args, f)
n = len(args)
results = {{
    "top1": 1.0 - n / 100, "validation": {{"top1": n / 100}},
    "many_medium_few": {{"many": 0.8, "medium": 0.6, "few": None}}, "train_seconds": 1800.0,
    "post_hoc": {{"nc_tau": {{"tau": 0.1, "top1": 0.75, "selected_on": "validation",
                             "sweep": {{"split": "validation", "taus": [0, 0.1], "top1": [0.6, 0.7]}}}},
                 "logit_adjustment": {{"tau": 1.0, "top1": 0.7, "selected_on": "test"}}}},
}}
with open(os.path.join(model_dir, "results.json"), "w") as f:
    json.dump(results, f)
with open(os.path.join(model_dir, "metrics.jsonl"), "w") as f:  # Two starts of 10 minutes each.
    f.write(json.dumps({{"epoch": 1, "seconds": 600.0, "started": "a"}}) + "\\n")
    f.write(json.dumps({{"epoch": 2, "seconds": 600.0, "started": "b"}}) + "\\n")
"""


def _fake_python(tmp_path):
    path = tmp_path / "fake_python"
    path.write_text(FAKE_MAIN.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def _ladder(*args):
    return run_command(sys.executable, LADDER, *args, timeout=120)


def test_rungs_run_the_compressed_recipe_with_their_levers_and_choose_on_validation(tmp_path):
    runs = tmp_path / "runs"
    result = _ladder(
        f"--runs_dir={runs}",
        f"--python={_fake_python(tmp_path)}",
        "--rungs=cdt,wd5e-4,wd5e-4+mixup,deferred",
        "--data_dir=../shared/data/cifar10-jpeg",
        "--epochs=60",
        "--val_per_class=100",
        f"--output={tmp_path / 'ladder.md'}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "ladder.md").read_text() in result.stdout  # The printed table, also written.
    argv = json.loads((runs / "wd5e-4+mixup" / "argv.json").read_text())
    assert argv[:2] == ["-m", "cdt_tf.main"]
    assert "--flagfile=flags/cifar10_lt100_cdt.cfg" in argv
    # The 200-epoch schedule compressed to 60 (warm-up 5 -> 2, decays 160,180 -> 48,54).
    for flag in ("--epochs=60", "--warmup_epochs=2", "--decay_epochs=48,54", "--val_per_class=100"):
        assert flag in argv
    assert "--precision=mixed_bfloat16" in argv and "--seed=0" in argv
    assert "--weight_decay=5e-4" in argv and "--mixup_alpha=1.0" in argv
    # The data directory is made absolute: a resumed run must see the path it started with.
    assert f"--data_dir={os.path.realpath(os.path.join(REPO_ROOT, '../shared/data/cifar10-jpeg'))}" in argv
    # A lever's epochs follow the compressed schedule: gamma switches on at the first decay (48 of 60).
    deferred = json.loads((runs / "deferred" / "argv.json").read_text())
    assert "--gamma_schedule=step" in deferred and "--gamma_epoch=48" in deferred
    base = json.loads((runs / "cdt" / "argv.json").read_text())
    assert not any(a.startswith(("--weight_decay=5", "--mixup")) for a in base)
    # Post-hoc cells are shown only when tau was selected on the validation split (LA's was not).
    row = next(line for line in result.stdout.splitlines() if line.startswith("| cdt |"))
    assert "| 70.0 / 75.0 (τ 0.1) | — |" in row
    # The second stages ran on every rung; cRT+LAS has the best validation top-1 of all cells.
    assert "| 20.0 / 50.0 | 99.0 / 50.0 |" in row
    assert row.endswith("| 20 |")  # Minutes over both starts in metrics.jsonl, not the last start's 30.
    assert "Best on validation: cdt, cRT+LAS (99.0; its test top-1 50.0)" in result.stdout


def test_the_prior_and_mix_ramp_levers_give_a_valid_run_on_the_compressed_schedule(tmp_path):
    runs = tmp_path / "runs"
    rung = "mixup+mixramp+prior+gamma0"
    result = _ladder(
        f"--runs_dir={runs}", f"--python={_fake_python(tmp_path)}", f"--rungs={rung}", "--epochs=60"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    argv = json.loads((runs / rung / "argv.json").read_text())
    # The ramp runs from half-way to the first decay (24 of 60) to none at it (48).
    for flag in (
        "--mix_schedule=ramp",
        "--mix_ramp_start=24",
        "--mix_until_epoch=48",
        "--prior_tau=1.0",
        "--gamma=0",
    ):
        assert flag in argv
    flagfile = next(a.split("=", 1)[1] for a in argv if a.startswith("--flagfile="))
    extra = [a for a in argv[2:] if not a.startswith(("--flagfile=", "--model_dir=", "--data_dir="))]
    config = flagfile_config(os.path.join(REPO_ROOT, flagfile), *extra)  # Validates: the rung would start.
    assert (config.mix_schedule, config.mix_ramp_start, config.mix_until_epoch) == ("ramp", 24, 48)
    # gamma0 after the base's --gamma=0.3: the logit-adjusted loss alone, without CDT's temperatures.
    assert config.prior_tau == 1.0 and config.loss == "cdt" and config.gamma == 0.0


def test_the_bcl_lever_gives_a_valid_run_with_two_views(tmp_path):
    runs = tmp_path / "runs"
    rung = "bcl+prior+gamma0"  # BCL as its authors train it: the logit-adjusted loss beside it.
    result = _ladder(
        f"--runs_dir={runs}", f"--python={_fake_python(tmp_path)}", f"--rungs={rung}", "--epochs=60"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    argv = json.loads((runs / rung / "argv.json").read_text())
    flagfile = next(a.split("=", 1)[1] for a in argv if a.startswith("--flagfile="))
    extra = [a for a in argv[2:] if not a.startswith(("--flagfile=", "--model_dir=", "--data_dir="))]
    config = flagfile_config(os.path.join(REPO_ROOT, flagfile), *extra)  # Validates: the rung would start.
    assert config.contrastive_weight == 0.35 and config.training_views == 2 and config.prior_tau == 1.0


def test_a_finished_rung_is_collected_not_rerun(tmp_path):
    runs = tmp_path / "runs"
    (runs / "cdt").mkdir(parents=True)
    (runs / "cdt" / "results.json").write_text(json.dumps({"top1": 0.7, "validation": {"top1": 0.72}}))
    result = _ladder(
        f"--runs_dir={runs}", f"--python={_fake_python(tmp_path)}", "--rungs=cdt", "--nosecond_stage"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (runs / "cdt" / "argv.json").exists()
    assert "Best on validation: cdt, argmax (72.0; its test top-1 70.0)" in result.stdout
    assert "| cdt | CDT γ = 0.3, the paper's recipe | 72.0 | 70.0 |" in result.stdout


def test_two_seeds_train_apart_and_the_best_cell_is_chosen_on_their_mean(tmp_path):
    runs = tmp_path / "runs"
    # Seed 0 of `cdt` is finished already (the first ladder's layout, <rung>); its validation top-1 is
    # the best single run of all, but the mean over both seeds ranks `mixup` first.
    (runs / "cdt").mkdir(parents=True)
    (runs / "cdt" / "results.json").write_text(json.dumps({"top1": 0.7, "validation": {"top1": 0.95}}))
    (runs / "cdt_seed1").mkdir(parents=True)
    (runs / "cdt_seed1" / "results.json").write_text(json.dumps({"top1": 0.6, "validation": {"top1": 0.05}}))
    result = _ladder(
        f"--runs_dir={runs}",
        f"--python={_fake_python(tmp_path)}",
        "--rungs=cdt,mixup",
        "--seeds=0,1",
        "--nosecond_stage",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (runs / "cdt" / "argv.json").exists()  # Finished runs are collected, not re-run.
    assert "--seed=0" in json.loads((runs / "mixup" / "argv.json").read_text())
    assert "--seed=1" in json.loads((runs / "mixup_seed1" / "argv.json").read_text())
    lines = result.stdout.splitlines()
    assert any(line.startswith("CDT+ ladder:") and "seeds 0, 1," in line for line in lines)
    mean = next(line for line in lines if line.startswith("| **cdt (mean)** |"))
    assert "| 50.0 | 65.0 |" in mean  # (95 + 5) / 2 on validation, (70 + 60) / 2 on test.
    assert next(line for line in lines if line.startswith("| cdt (seed 1) |")).count("| 5.0 | 60.0 |") == 1
    # The fake's mixup command has 16 arguments: validation 16 %, N_c^τ's sweep best 70 %.
    assert "Best on mean validation of the seeds: mixup, N_c^τ (70.0; its test top-1 75.0)" in result.stdout
    # A half-finished rung (one seed of two) has no mean row numbers and cannot be chosen.
    result = _ladder(f"--runs_dir={runs}", "--rungs=cdt,mixup", "--seeds=0,2", "--norun")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Best on mean validation of the seeds: —" in result.stdout
    assert "| **cdt (mean)** | CDT γ = 0.3, the paper's recipe | — |" in result.stdout
    bad = _ladder(f"--runs_dir={runs}", "--rungs=cdt", "--seeds=0,x")
    assert bad.returncode != 0 and "--seeds must be integers" in bad.stderr


def test_norun_collects_only_and_an_unknown_lever_is_refused_before_any_run(tmp_path):
    result = _ladder(f"--runs_dir={tmp_path}", "--rungs=cdt", "--norun")
    assert result.returncode == 0 and "Best on validation: —" in result.stdout
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| rung |"))
    row = next(line for line in lines if line.startswith("| cdt |"))
    assert row.count("|") == header.count("|")  # A rung without results fills every column, no more.
    result = _ladder(
        f"--runs_dir={tmp_path}", f"--python={_fake_python(tmp_path)}", "--rungs=cdt,mixup+dropout"
    )
    assert result.returncode != 0
    assert "unknown lever(s) ['dropout']" in result.stderr
    assert not (tmp_path / "cdt").exists()


# ----------------------------------------------------------------------------- the chosen recipe

CDT_PLUS = os.path.join(REPO_ROOT, "flags", "cifar10_lt100_cdt_plus.cfg")
LADDER_RESULTS = os.path.join(REPO_ROOT, "results", "cdt_plus_ladder")
# What a ladder rung changes against its 200-epoch recipe: the schedule's length (compressed to 60
# epochs), the validation split carved out for choosing, and where this machine keeps the data.
LADDER_ONLY = {"epochs", "warmup_epochs", "decay_epochs", "val_per_class", "data_dir"}


def _chosen_rung():
    line = next(line for line in open(CDT_PLUS) if line.startswith("# Chosen rung: "))
    return line.split(": ", 1)[1].split()[0]


def test_the_cdt_plus_recipe_is_its_ladder_rung_at_200_epochs():
    recipe = flagfile_config(CDT_PLUS)
    with open(os.path.join(LADDER_RESULTS, _chosen_rung(), "config.json")) as f:
        rung = json.load(f)
    # Epoch-valued lever flags sit where the rung put them, relative to the first LR decay.
    scaled = {
        key
        for key in ("mix_until_epoch", "gamma_epoch", "drw_epoch")
        if rung[key] == rung["decay_epochs"][0] and getattr(recipe, key) == recipe.decay_epochs[0]
    }
    assert set(recipe.differences(rung)) - scaled == LADDER_ONLY
    assert (recipe.epochs, recipe.decay_epochs, recipe.val_per_class) == (200, (160, 180), 0)
    assert rung["val_per_class"] > 0  # The rung was chosen on a validation split.


def _optional_second_stage():
    """The flags of the header's optional second stage ("# Optional second stage ...: add --a=b ... (")."""
    header = " ".join(line.lstrip("#").strip() for line in open(CDT_PLUS) if line.startswith("#"))
    text = header.split("Optional second stage", 1)[1].split(": add ", 1)[1].split(" (", 1)[0]
    return dict(word.lstrip("-").split("=", 1) for word in text.split() if word.startswith("--"))


def test_the_cdt_plus_optional_smoothing_is_the_grids_best_on_validation():
    recipe = flagfile_config(CDT_PLUS)
    assert recipe.second_stage == "none"  # Logit adjustment won on validation (the next test).
    second_stage = _optional_second_stage()
    assert second_stage["second_stage"] == "crt_las"
    cells, rung_dir = {}, os.path.join(LADDER_RESULTS, _chosen_rung())
    for name in os.listdir(rung_dir):
        trained_bn = name.endswith("_class_balanced.json") and "_bn" not in name
        if name.startswith("retrained_own_las") and trained_bn:
            with open(os.path.join(rung_dir, name)) as f:
                record = json.load(f)
            smoothing = record["label_aware_smoothing"]
            cells[(smoothing["head"], smoothing["tail"])] = record["validation"]["top1"]
    assert len(cells) >= 5, cells
    assert max(cells, key=cells.get) == (
        float(second_stage["smooth_head"]),
        float(second_stage["smooth_tail"]),
    )


def test_the_cdt_plus_prediction_is_the_best_rule_on_the_selection_runs_validation():
    # The recipe predicts with logit adjustment at the selection run's tau: the rule with the best
    # validation top-1 among the argmax, the tau rules (their validation sweeps) and cRT+LAS.
    recipe = flagfile_config(CDT_PLUS)
    assert recipe.tau_from == "results/cifar10_lt100_cdt_plus_val250"
    _, results = _committed_run("cifar10_lt100_cdt_plus_val250")
    post_hoc = results["post_hoc"]
    validation = {
        "argmax": results["validation"]["top1"],
        "crt_las": post_hoc["crt_las"]["validation"]["top1"],
    }
    for method in ("nc_tau", "w_norm", "logit_adjustment"):
        sweep = post_hoc[method]["sweep"]
        assert sweep["split"] == "validation"
        validation[method] = max(sweep["top1"])
        assert sweep["top1"][sweep["taus"].index(post_hoc[method]["tau"])] == validation[method]
    assert max(validation, key=validation.get) == "logit_adjustment", validation
    header = " ".join(line.lstrip("#").strip() for line in open(CDT_PLUS) if line.startswith("#"))
    assert f"tau = {post_hoc['logit_adjustment']['tau']:g} chosen on the validation split" in header


def test_cdt_plus_runs_trains_the_cdt_baseline_then_the_selection_run_then_each_seed_apart(tmp_path):
    # experiments/cdt_plus_runs.sh with a stand-in Python that records each command (one JSON line each);
    # the first seed "fails", and the script goes on to the next as long_runs.sh does.
    fake, log = recording_python(tmp_path, fail="/cifar10_lt100_cdt_plus")
    data = tmp_path / "data"
    data.mkdir()
    runs = tmp_path / "runs"
    env = dict(subprocess_env(), PYTHON=str(fake), RUNS_DIR=str(runs), DATA_DIR=str(data))
    script = os.path.join(REPO_ROOT, "experiments", "cdt_plus_runs.sh")
    result = run_command("bash", script, env=dict(env, SEEDS="0 2", VAL_PER_CLASS="7"), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "== cifar10_lt100_cdt_plus failed (3)" in result.stdout, result.stdout
    assert "failed" not in result.stdout.replace("cifar10_lt100_cdt_plus failed (3)", ""), result.stdout
    head = ["-m", "cdt_tf.main", "--flagfile=flags/cifar10_lt100_cdt_plus.cfg", f"--data_dir={data}"]
    selection = runs / "cifar10_lt100_cdt_plus_val7"
    baseline = ["-m", "cdt_tf.main", "--flagfile=flags/cifar10_lt100_cdt.cfg", f"--data_dir={data}"]
    assert [json.loads(line) for line in log.read_text().splitlines()] == [
        # The baseline first: the paper's CDT for the same seeds (seed 0 shares the parity queue's run).
        baseline + ["--seed=0", f"--model_dir={runs / 'cifar10_lt100_cdt'}"],
        baseline + ["--seed=2", f"--model_dir={runs / 'cifar10_lt100_cdt_seed2'}"],
        head + ["--seed=0", "--val_per_class=7", "--tau_from=", f"--model_dir={selection}"],
        head + ["--seed=0", f"--tau_from={selection}", f"--model_dir={runs / 'cifar10_lt100_cdt_plus'}"],
        head
        + ["--seed=2", f"--tau_from={selection}", f"--model_dir={runs / 'cifar10_lt100_cdt_plus_seed2'}"],
    ]
    # VAL_PER_CLASS=0: the seeds only, with the flagfile's --tau_from (the committed selection run).
    log.unlink()
    result = run_command("bash", script, env=dict(env, SEEDS="1", VAL_PER_CLASS="0"), timeout=60)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in log.read_text().splitlines()] == [
        baseline + ["--seed=1", f"--model_dir={runs / 'cifar10_lt100_cdt_seed1'}"],
        head + ["--seed=1", f"--model_dir={runs / 'cifar10_lt100_cdt_plus_seed1'}"],
    ]


def test_cdt_plus_v2_runs_trains_cdt_seed_1_then_the_two_seed_ladder_over_the_committed_rungs(tmp_path):
    fake, log = recording_python(tmp_path)
    data, runs = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    (runs / "cdt_plus_ladder" / "cdt").mkdir(parents=True)  # A rung already here stays as it is.
    env = dict(
        subprocess_env(),
        PYTHON=str(fake),
        RUNS_DIR=str(runs),
        DATA_DIR=str(data),
        RUNGS="cdt,bcl",
        CDT_TF_CPU_BF16="1",
    )
    script = os.path.join(REPO_ROOT, "experiments", "cdt_plus_v2_runs.sh")
    result = run_command("bash", script, env=env, timeout=60)
    assert result.returncode == 0 and "failed" not in result.stdout, result.stdout + result.stderr
    ladder = runs / "cdt_plus_ladder"
    assert [json.loads(line) for line in log.read_text().splitlines()] == [
        ["-m", "cdt_tf.main", "--flagfile=flags/cifar10_lt100_cdt.cfg", f"--data_dir={data}", "--seed=1"]
        + ["--precision=mixed_bfloat16", f"--model_dir={runs / 'cifar10_lt100_cdt_seed1'}"],
        ["experiments/cdt_plus_ladder.py", f"--runs_dir={ladder}", f"--data_dir={data}", "--seeds=0,1"]
        + ["--rungs=cdt,bcl", "--precision=mixed_bfloat16"],
    ]
    # The committed seed-0 rungs are copied in (to be collected), except one already there.
    assert (ladder / "mixup+mixoff" / "results.json").exists() and not any((ladder / "cdt").iterdir())

    # A CPU without bf16: nothing runs, and the one line says what to do; PRECISION=float32 runs it all.
    log.unlink()
    refused = run_command("bash", script, env=dict(env, CDT_TF_CPU_BF16="0"), timeout=60)
    assert refused.returncode == 2 and not log.exists(), refused.stdout + refused.stderr
    assert "has no native bf16" in refused.stderr and "PRECISION=float32" in refused.stderr
    result = run_command("bash", script, env=dict(env, CDT_TF_CPU_BF16="0", PRECISION="float32"), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[-2] if c[0] == "-m" else c[-1] for c in commands] == ["--precision=float32"] * 2

    # CDT_TF_CPU_BF16 is read as cdt_tf.distribution reads it: blanks ignored, any value but 1 or 0 refused.
    log.unlink()
    refused = run_command("bash", script, env=dict(env, CDT_TF_CPU_BF16="yes"), timeout=60)
    assert refused.returncode == 2 and not log.exists(), refused.stdout + refused.stderr
    assert "CDT_TF_CPU_BF16 must be 1, 0 or unset" in refused.stderr and "'yes'" in refused.stderr
    refused = run_command("bash", script, env=dict(env, CDT_TF_CPU_BF16=" 0\n"), timeout=60)
    assert refused.returncode == 2 and "has no native bf16" in refused.stderr, refused.stderr


CDT_PLUS_RUNS = {0: "cifar10_lt100_cdt_plus", 1: "cifar10_lt100_cdt_plus_seed1"}


def _committed_run(name):
    """(config.json, results.json) of results/<name>/."""
    folder = os.path.join(REPO_ROOT, "results", name)
    with open(os.path.join(folder, "config.json")) as f, open(os.path.join(folder, "results.json")) as g:
        return json.load(f), json.load(g)


def test_the_committed_cdt_plus_runs_are_the_recipe_and_its_header_quotes_their_top1():
    # What README/BENCHMARKS quote comes from these folders: they must be the flagfile's recipe (only
    # the seed and where the run and its data lived may differ), trained to the end, and the
    # flagfile's "Measured here" line must quote their test top-1 with logit adjustment at the selection
    # run's tau (read off each run's test sweep of logit adjustment, which holds every tau of the grid).
    recipe = flagfile_config(CDT_PLUS)
    tau = _committed_run("cifar10_lt100_cdt_plus_val250")[1]["post_hoc"]["logit_adjustment"]["tau"]
    measured = []
    for seed, name in CDT_PLUS_RUNS.items():
        config, results = _committed_run(name)
        assert set(recipe.differences(config)) <= {"seed", "data_dir"}, (name, recipe.differences(config))
        assert config["seed"] == seed and results["training"]["epochs"] == recipe.epochs
        with open(os.path.join(REPO_ROOT, "results", name, "metrics.jsonl")) as f:
            assert [json.loads(line)["epoch"] for line in f] == list(range(1, recipe.epochs + 1))
        sweep = results["post_hoc"]["logit_adjustment"]["sweep"]
        assert sweep["split"] == "test"
        measured.append(f"{100 * sweep['top1'][sweep['taus'].index(tau)]:.2f}")
    header = "".join(line for line in open(CDT_PLUS) if line.startswith("#"))
    assert f"{' / '.join(measured)} % top-1" in " ".join(header.replace("#", " ").split()), measured


def test_the_committed_cdt_plus_selection_run_is_the_recipe_with_a_validation_split():
    recipe = flagfile_config(CDT_PLUS)
    config, results = _committed_run("cifar10_lt100_cdt_plus_val250")
    assert set(recipe.differences(config)) <= {"val_per_class", "data_dir"}
    assert config["val_per_class"] == 250 and config["seed"] == 0
    assert results["training"]["epochs"] == recipe.epochs
    assert {e["selected_on"] for e in results["post_hoc"].values() if e.get("tau") is not None} == {
        "validation"
    }
