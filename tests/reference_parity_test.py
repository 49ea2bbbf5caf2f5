"""tools/reference_parity.py: the subset it reads, its record, its resume; end to end against a fake
reference of a few lines (PyTorch only where installed: requirements-parity.txt)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
from absl import flags

from cdt_tf import class_stats, datasets, rundir
from cdt_tf.errors import UserError
from conftest import REPO_ROOT, load_tool, recording_python, run_command, subprocess_env

TOOL = os.path.join(REPO_ROOT, "tools", "reference_parity.py")
HAS_TORCH = (
    importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None
)


parity = load_tool("reference_parity")


def _image_folder(root, per_class=(3, 2), test_per_class=2, size=8) -> str:
    """A tiny image folder of real JPEG files: train/<class>/, test/<class>/."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for split, counts in (("train", per_class), ("test", (test_per_class,) * len(per_class))):
        for c, count in enumerate(counts):
            folder = os.path.join(root, split, f"class{c}")
            os.makedirs(folder)
            for k in range(count):
                image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                tf.io.write_file(os.path.join(folder, f"{k:04d}.jpg"), tf.io.encode_jpeg(image))
    return str(root)


def _subset(ids, counts) -> dict:
    return {
        "hash": class_stats.subset_hash(ids),
        "class_counts": list(counts),
        "num_images": len(ids),
        "ids": list(ids),
    }


def _write(path, value):
    with open(path, "w") as f:
        json.dump(value, f)
    return str(path)


def test_subset_hash_is_the_projects():
    from cdt_tf import input_pipeline

    ids = ["train/a/1.jpg", "train/b/2.jpg"]
    assert class_stats.subset_hash(ids) == input_pipeline.subset_hash(ids)


def test_read_subset_from_a_run_or_its_file(tmp_path):
    subset = _subset(["train/a/0.jpg", "train/b/0.jpg"], [1, 1])
    _write(tmp_path / "subset.json", subset)
    assert parity.read_subset(str(tmp_path))["ids"] == subset["ids"]
    assert parity.read_subset(str(tmp_path / "subset.json"))["hash"] == subset["hash"]
    _write(tmp_path / "subset.json", {**subset, "ids": ["train/a/0.jpg", "train/b/1.jpg"]})
    with pytest.raises(UserError, match="do not match its hash"):
        parity.read_subset(str(tmp_path))
    _write(tmp_path / "subset.json", {**subset, "ids": None})
    with pytest.raises(UserError, match="lists no ids"):
        parity.read_subset(str(tmp_path))
    with pytest.raises(UserError, match="subset.json"):
        parity.read_subset(str(tmp_path / "nowhere"))


def test_decode_uses_the_projects_decoder_in_subset_order(tmp_path):
    data_dir = _image_folder(tmp_path / "data")
    ids = ["train/class1/0001.jpg", "train/class0/0002.jpg", "train/class0/0000.jpg"]
    path = str(tmp_path / "images.npz")
    parity.decode_images(data_dir, ids, path)
    with np.load(path) as images:
        source = datasets.load_source("image_folder", data_dir)
        position = {example_id: k for k, example_id in enumerate(source.train.ids)}
        expected = source.train.images(np.array([position[i] for i in ids]))
        np.testing.assert_array_equal(images["train_images"], expected)
        assert images["train_labels"].tolist() == [1, 0, 0]
        assert images["test_images"].shape == (4, 8, 8, 3)
        assert images["class_names"].tolist() == ["class0", "class1"]
    with pytest.raises(UserError, match="not under"):
        parity.decode_images(data_dir, ["train/class0/9999.jpg"], path)


def _values(tmp_path, reference_dir, **overrides):
    values = flags.FlagValues()
    parity.define_flags(values)
    values(
        [
            "prog",
            f"--reference_dir={reference_dir}",
            f"--data_dir={tmp_path}",
            f"--subset_from={tmp_path}",
            f"--model_dir={tmp_path}/run",
            *(f"--{k}={v}" for k, v in overrides.items()),
        ]
    )
    return values


def test_config_names_the_reference_and_refuses_another_run(tmp_path):
    reference_dir = _fake_reference(tmp_path / "ref")
    subset = _subset([f"train/c{c}/{k}.jpg" for c in range(10) for k in range(2)], [2] * 10)
    config = parity.build_config(_values(tmp_path, reference_dir), subset)
    assert config["dataset"] == "cifar10" and config["loss"] == "ce" and config["precision"] == "float32"
    assert set(config["reference_files"]) == set(parity.REFERENCE_FILES)
    model_dir = str(tmp_path / "run")
    os.makedirs(model_dir)
    parity.check_config(model_dir, config)
    parity.check_config(model_dir, {**config, "workers": 1, "threads": 2})  # Speed only: resumes.
    with pytest.raises(UserError, match=r"other settings \(gamma, loss\)"):
        parity.check_config(model_dir, {**config, "gamma": 0.3, "loss": "cdt"})
    cdt = parity.build_config(_values(tmp_path, reference_dir, gamma=0.3), subset)
    assert cdt["loss"] == "cdt" and cdt["gamma"] == 0.3
    with pytest.raises(UserError, match="CIFAR-10 or CIFAR-100"):
        parity.build_config(_values(tmp_path, reference_dir), {**subset, "class_counts": [1, 1]})
    with pytest.raises(UserError, match="no losses.py"):
        os.remove(os.path.join(reference_dir, "losses.py"))
        parity.build_config(_values(tmp_path, reference_dir), subset)


def test_metrics_past_the_checkpoint_are_dropped(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for epoch in (1, 2, 3):
            f.write(json.dumps({"epoch": epoch}) + "\n")
        f.write('{"epoch": 4, "secon')  # Cut by a kill.
    rundir.trim_metrics(str(tmp_path / "metrics.jsonl"), 2)
    assert [line["epoch"] for line in parity.read_metrics(str(tmp_path))] == [1, 2]


def test_recorder_turns_the_references_scalars_into_a_line():
    written = []

    class Writer:
        def add_scalar(self, tag, value, step):
            written.append(tag)

        def add_scalars(self, tag, values, step):
            written.append(tag)

        def close(self):
            return "closed"

    recorder = parity.EpochRecorder(Writer())
    for tag, value in (
        ("loss/train", 1.5),
        ("acc/train_top1", 50.0),
        ("lr", 0.1),
        ("acc/test_val_top1", 25.0),
    ):
        recorder.add_scalar(tag, value, 0)
    recorder.add_scalars("acc/test_val_cls_acc", {str(i): i / 10 for i in range(12)}, 0)
    line = recorder.line(1, 12.345, "t0", 100, "pytorch x")
    assert line["accuracy"] == 0.5 and line["test_top1"] == 0.25 and line["learning_rate"] == 0.1
    assert line["test_per_class_accuracy"] == [i / 10 for i in range(12)]  # Numeric order, not "10" < "2".
    assert line["seconds"] == 12.35 and written[-1] == "acc/test_val_cls_acc"
    assert recorder.close() == "closed"  # Everything else reaches the reference's writer.


def test_results_take_the_last_epoch_and_compare_runs_reads_them(tmp_path):
    metrics = [
        {"epoch": e, "seconds": 10.0, "test_top1": 0.1 * e, "test_top5": 0.9, "test_images": 20,
         "test_per_class_accuracy": [0.2 * e] + [0.1 * e] * 9}  # fmt: skip
        for e in (1, 2)
    ]
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    results = parity.results_record(
        metrics, {"seed": 3}, _subset(["a"], counts), [f"c{c}" for c in range(10)]
    )
    assert results["top1"] == 0.2 and results["train_seconds"] == 20.0 and results["epochs"] == 2
    assert results["many_medium_few"]["few"] is None and results["num_train_images"] == sum(counts)
    assert results["many_medium_few"]["many"] == pytest.approx((0.4 + 0.2 * 7) / 8)
    run_dir = tmp_path / "reference"
    os.makedirs(run_dir)
    _write(run_dir / "results.json", results)
    with open(run_dir / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in metrics)
    shown = run_command(sys.executable, "tools/compare_runs.py", f"--runs={run_dir}")
    assert shown.returncode == 0, shown.stderr
    assert "| 3 | — | **20.00** |" in shown.stdout


# A stand-in for kaidic/LDAM-DRW with the names the tool adapts, the way the reference uses them:
# .cuda() on modules and tensors, a CUDA map_location, downloading dataset classes, SummaryWriter,
# save_checkpoint from utils, --resume. FAKE_DIE_AFTER=<epoch> kills it after that epoch's checkpoint.
FAKE_TRAIN = """
import argparse, os
import torch
import torch.nn as nn
import torchvision.datasets as datasets
import torchvision.transforms as transforms
from imbalance_cifar import IMBALANCECIFAR10
from utils import *

class SummaryWriter:
    def __init__(self, log_dir):
        os.makedirs(log_dir, exist_ok=True)
    def add_scalar(self, tag, value, step):
        pass
    def add_scalars(self, tag, values, step):
        pass

def main():
    p = argparse.ArgumentParser()
    for name in ("dataset", "arch", "loss_type", "train_rule", "root_log", "root_model", "resume"):
        p.add_argument("--" + name, default="")
    for name in ("epochs", "batch-size", "seed", "workers"):
        p.add_argument("--" + name, type=int, default=0)
    p.add_argument("--lr", type=float)
    p.add_argument("--wd", type=float)
    args = p.parse_args()
    args.store_name = "_".join([args.dataset, "resnet32", "CE", "None", "exp", "0.01", "0"])
    os.makedirs(os.path.join(args.root_model, args.store_name), exist_ok=True)
    torch.manual_seed(args.seed)
    train_set = IMBALANCECIFAR10(root="./data", train=True, download=True, transform=transforms.ToTensor())
    test_set = datasets.CIFAR10(root="./data", train=False, download=True, transform=transforms.ToTensor())
    counts = train_set.get_cls_num_list()
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, len(counts))).cuda()
    optimizer = torch.optim.SGD(model.parameters(), args.lr, momentum=0.9)
    start = 0
    if args.resume:
        checkpoint = torch.load(args.resume, map_location="cuda:0")
        start = checkpoint["epoch"]
        model.load_state_dict(checkpoint["state_dict"])
    writer = SummaryWriter(log_dir=args.root_log)
    criterion = nn.CrossEntropyLoss().cuda()
    for epoch in range(start, args.epochs):
        loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
        for x, y in loader:
            loss = criterion(model(x.cuda()), y.cuda())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        writer.add_scalar("loss/train", loss.item(), epoch)
        writer.add_scalar("acc/train_top1", 50.0, epoch)
        writer.add_scalar("lr", args.lr, epoch)
        x, y = next(iter(torch.utils.data.DataLoader(test_set, batch_size=len(test_set))))
        hit = (model(x).argmax(1) == y).float()
        writer.add_scalar("acc/test_val_top1", 100 * hit.mean().item(), epoch)
        writer.add_scalar("acc/test_val_top5", 100.0, epoch)
        writer.add_scalar("loss/test_val", criterion(model(x), y).item(), epoch)
        per_class = {str(c): hit[y == c].mean().item() for c in range(len(counts))}
        writer.add_scalars("acc/test_val_cls_acc", per_class, epoch)
        save_checkpoint(args, {"epoch": epoch + 1, "state_dict": model.state_dict()}, False)
        if int(os.environ.get("FAKE_DIE_AFTER", 0)) == epoch + 1:
            os._exit(9)
    print("criterion", type(criterion).__name__)
"""

FAKE_DATASET = """
import numpy as np
import torchvision

class IMBALANCECIFAR10(torchvision.datasets.CIFAR10):
    cls_num = 10
    def __init__(self, root, imb_type="exp", imb_factor=0.01, rand_number=0, train=True, transform=None,
                 target_transform=None, download=False):
        raise RuntimeError("the fake reference must not download")
    def get_cls_num_list(self):
        return [self.num_per_cls_dict[i] for i in range(self.cls_num)]
"""

FAKE_UTILS = """
import torch

def save_checkpoint(args, state, is_best):
    raise RuntimeError("replaced by the tool")
"""


def _fake_reference(root) -> str:
    os.makedirs(os.path.join(root, "models"))
    for name, text in (
        ("cifar_train.py", FAKE_TRAIN),
        ("imbalance_cifar.py", FAKE_DATASET),
        ("utils.py", FAKE_UTILS),
        ("losses.py", ""),
        ("models/resnet_cifar.py", ""),
    ):
        with open(os.path.join(root, name), "w") as f:
            f.write(text)
    return str(root)


def _parity(tmp_path, *extra: str, **env: str):
    return run_command(
        sys.executable,
        TOOL,
        f"--reference_dir={tmp_path / 'ref'}",
        f"--data_dir={tmp_path / 'data'}",
        f"--subset_from={tmp_path / 'subset.json'}",
        f"--model_dir={tmp_path / 'run'}",
        "--epochs=3",
        "--batch_size=4",
        "--workers=0",
        *extra,
        env=subprocess_env(**env),
    )


def _ten_class_setup(tmp_path):
    counts = (3, 3, 2, 2, 2, 1, 1, 1, 1, 1)
    _image_folder(tmp_path / "data", per_class=counts, test_per_class=1)
    ids = [f"train/class{c}/{k:04d}.jpg" for c, n in enumerate(counts) for k in range(n)]
    _write(tmp_path / "subset.json", _subset(ids, counts))
    _fake_reference(tmp_path / "ref")
    return counts


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (requirements-parity.txt)")
def test_trains_the_fake_reference_resumes_and_records(tmp_path):
    counts = _ten_class_setup(tmp_path)
    killed = _parity(tmp_path, FAKE_DIE_AFTER="2")
    assert killed.returncode == 9, killed.stderr[-2000:]
    run = tmp_path / "run"
    assert [line["epoch"] for line in parity.read_metrics(str(run))] == [1, 2]
    assert not os.path.exists(run / "results.json")
    resumed = _parity(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "criterion CrossEntropyLoss" in resumed.stdout
    metrics = parity.read_metrics(str(run))
    assert [line["epoch"] for line in metrics] == [1, 2, 3]  # No gap, no duplicate.
    assert len({line["started"] for line in metrics}) == 2
    with open(run / "results.json") as f:
        results = json.load(f)
    assert results["class_counts"] == list(counts) and results["epochs"] == 3
    assert results["subset_hash"] == parity.read_subset(str(tmp_path / "subset.json"))["hash"]
    assert results["top1"] == metrics[-1]["test_top1"] and len(results["per_class_accuracy"]) == 10
    again = _parity(tmp_path)
    assert again.returncode == 0 and "Finished earlier" in again.stdout
    other = _parity(tmp_path, "--gamma=0.3")
    assert other.returncode == 2 and "other settings (gamma, loss)" in other.stderr


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (requirements-parity.txt)")
def test_cdt_divides_the_logits_in_the_references_loss():
    import torch

    counts = [100, 10, 1]
    nn = parity._cdt_loss_module(torch.nn, counts, gamma=0.5)
    assert nn.Linear is torch.nn.Linear  # Everything else is torch.nn.
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
    target = torch.tensor([0, 2])
    temperatures = np.array([1.0, 10**0.5, 100**0.5])
    scaled = logits.numpy() / temperatures
    log_softmax = scaled - np.log(np.exp(scaled).sum(1, keepdims=True))
    expected = -log_softmax[[0, 1], [0, 2]].mean()
    assert nn.CrossEntropyLoss()(logits, target).item() == pytest.approx(expected, rel=1e-6)


def _parity_queue(tmp_path, bf16: bool):
    """experiments/parity_runs.sh with a stand-in Python, a CPU with or without bf16, and a results
    folder holding the ρ = 100 ERM pair and the ρ = 200 ERM run (committed), but no run directories, as
    on a machine handed on without them: (the commands it ran, stdout, the runs and results folders)."""
    fake, log = recording_python(tmp_path)
    data, runs, results = tmp_path / "data", tmp_path / "runs", tmp_path / "results"
    data.mkdir()
    for name in ("cifar10_lt100_ce", "reference_cifar10_lt100_ce", "cifar10_lt200_ce"):
        (results / name).mkdir(parents=True)
        (results / name / "results.json").write_text("{}")
    env = dict(
        subprocess_env(),
        PYTHON=str(fake),
        RUNS_DIR=str(runs),
        DATA_DIR=str(data),
        RESULTS_DIR=str(results),
        CDT_TF_CPU_BF16="1" if bf16 else "0",
    )
    result = run_command(
        "bash", os.path.join(REPO_ROOT, "experiments", "parity_runs.sh"), env=env, timeout=60
    )
    assert result.returncode == 0 and "failed" not in result.stdout, result.stdout + result.stderr
    return [json.loads(line) for line in log.read_text().splitlines()], result.stdout, runs, results


def _queued(commands, runs) -> list[str]:
    """The run directories the commands train into, in order."""
    return [
        os.path.relpath(arg.split("=", 1)[1], runs)
        for c in commands
        for arg in c
        if arg.startswith("--model_dir=")
    ]


@pytest.mark.parametrize("bf16", [True, False])
def test_the_parity_queue_skips_committed_runs_and_orders_the_rest_for_the_cpu(tmp_path, bf16):
    commands, stdout, runs, results = _parity_queue(tmp_path, bf16)
    for name in ("cifar10_lt100_ce", "reference_cifar10_lt100_ce", "cifar10_lt200_ce"):
        assert f"== {name}: committed under {results / name}, skipped" in stdout, stdout
    rest = ["cifar10_lt200_cdt", "cifar10_lt10_ce", "cifar10_lt10_cdt"]
    one_session = ["cifar10_lt100_ldam_drw", "cifar10_lt100_resample"]
    reference = ["reference_cifar10_lt100_cdt"]
    if bf16:  # The project's cells in bf16 first; the reference (float32 on any CPU) last.
        expected = ["cifar10_lt100_cdt"] + rest + one_session + reference
    else:  # Float32 everywhere: the runs that fit one session first.
        expected = ["cifar10_lt100_cdt"] + one_session + reference + rest
    assert _queued(commands, runs) == expected
    # With its project run gone, the reference's CDT reads the committed copy of the same subset.
    (reference_cdt,) = [c for c in commands if c[0] == "tools/reference_parity.py"]
    assert f"--subset_from={results / 'reference_cifar10_lt100_ce' / 'subset.json'}" in reference_cdt
    assert reference_cdt[-1] == "--gamma=0.3"
    # Each project run is its flagfile, into the run directory of the same name.
    for command in commands:
        if command[:2] == ["-m", "cdt_tf.main"]:
            name = _queued([command], runs)[0]
            assert command[2] == f"--flagfile=flags/{name}.cfg" and os.path.exists(
                os.path.join(REPO_ROOT, "flags", f"{name}.cfg")
            )


def test_the_parity_queues_reference_reads_the_project_runs_subset_while_it_is_here(tmp_path):
    (tmp_path / "runs" / "cifar10_lt100_cdt").mkdir(parents=True)
    commands, _, runs, _ = _parity_queue(tmp_path, bf16=False)
    (reference_cdt,) = [c for c in commands if c[0] == "tools/reference_parity.py"]
    assert f"--subset_from={runs / 'cifar10_lt100_cdt'}" in reference_cdt
