r"""The paper's reference code on the project's images: kaidic/LDAM-DRW's CIFAR training (the code the
CDT paper adapted), run on the training subset of a project run, recorded in the project's run shape.

  # Once: the user's own clone of the reference (never vendored, never committed) and PyTorch.
  git clone https://github.com/kaidic/LDAM-DRW ~/ref/LDAM-DRW
  .venv/bin/pip install -r requirements-parity.txt
  # The project's run draws the subset; the reference then trains on the same 12,406 images.
  python -m cdt_tf.main --flagfile=flags/cifar10_lt100_ce.cfg --data_dir=DATA \
      --model_dir=~/cdt-runs/cifar10_lt100_ce
  python tools/reference_parity.py --reference_dir=~/ref/LDAM-DRW --data_dir=DATA \
      --subset_from=~/cdt-runs/cifar10_lt100_ce --model_dir=~/cdt-runs/reference_cifar10_lt100_ce
  python tools/compare_runs.py \
      --runs=~/cdt-runs/cifar10_lt100_ce,~/cdt-runs/reference_cifar10_lt100_ce --labels=project,reference

--gamma=0.3 trains the reference with CDT (below). The same command resumes a killed run from its last
finished epoch (the reference's own --resume of the checkpoint it saves every epoch); a finished run
prints its result and returns.

What runs as the reference wrote it: `cifar_train.main()` and `main_worker()` with the reference's own
arguments (`--dataset cifar10|cifar100 --loss_type CE --train_rule None --epochs --batch-size --lr
--wd --seed`), so its ResNet-32 (`models.resnet32`, option-A shortcuts, Kaiming-normal init), its
`torch.optim.SGD` (momentum 0.9, weight decay 2e-4 on every parameter), `adjust_learning_rate` (linear
warm-up over 5 epochs, x0.01 after 160, x0.0001 after 180), its transforms (RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor, Normalize with its CIFAR constants), `train()` and `validate()` (the
whole test set after every epoch) are untouched.

What is adapted, from outside the reference's files (this file only, by replacing names in the
imported `cifar_train` module or in torch), and nothing else:
  1. CPU instead of CUDA: `torch.nn.Module.cuda` and `torch.Tensor.cuda` return their object
     unchanged, `torch.load` maps to the CPU. `torch.nn.DataParallel` without a GPU calls the module
     directly (PyTorch's own behaviour). `--threads` sets `torch.set_num_threads`; `--workers` is the
     reference's `--workers` (its default 4 is too many for 2 cores).
  2. Data: no download and no MD5 check. `IMBALANCECIFAR10`/`IMBALANCECIFAR100` in `cifar_train` become a
     subclass that holds the project run's training subset (the ids of its subset.json, decoded by the
     project's own decoder, `cdt_tf.datasets.decode_images`, in a child process that caches them in
     images.npz) instead of drawing its own; `datasets.CIFAR10`/`CIFAR100` become a class holding the
     image folder's test split decoded the same way. Both keep torchvision's `CIFAR10.__getitem__`
     (PIL image -> the reference's transform).
  3. Records: `SummaryWriter` is wrapped so that the scalars the reference writes also become one
     metrics.jsonl line per epoch (train loss/accuracy, learning rate, test top-1/top-5/loss, per-class
     test accuracy); `save_checkpoint` writes the checkpoint to a temporary name and renames it (a kill
     mid-save keeps the previous one) and does not copy a test-selected "best" checkpoint. results.json
     takes the last epoch's test figures, as the paper reports them.
  4. CDT (--gamma > 0): `nn.CrossEntropyLoss` in `cifar_train` becomes a subclass that divides the logits
     by a_c = (N_max / N_c)^gamma before the reference's cross-entropy, in training and in the reported
     test loss; accuracy stays the argmax of the undivided logits (`validate` as written).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
import time
import types

import numpy as np
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cdt_tf import class_stats, cli, evaluate  # noqa: E402
from cdt_tf.errors import UserError  # noqa: E402
from cdt_tf.rundir import (  # noqa: E402
    CONFIG,
    METRICS,
    RESULTS,
    SUBSET,
    read_json,
    read_metrics,
    trim_metrics,
    write_json,
)

IMAGES = "images.npz"
CHECKPOINT = "ckpt.pth.tar"
REFERENCE_FILES = ("cifar_train.py", "imbalance_cifar.py", "losses.py", "utils.py", "models/resnet_cifar.py")
# Flags that change how fast the run goes, not what it computes: a resumed run may change them.
SPEED_ONLY = ("workers", "threads")
# The reference's datasets by class count.
REFERENCE_DATASETS = {10: "cifar10", 100: "cifar100"}


def define_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "reference_dir", None, "A clone of kaidic/LDAM-DRW (holds cifar_train.py).", flag_values=values
    )
    flags.DEFINE_string(
        "data_dir",
        None,
        "Image folder with train/<class>/ and test/<class>/ (the project run's).",
        flag_values=values,
    )
    flags.DEFINE_string(
        "subset_from",
        None,
        "The project run whose training subset the reference trains on: its directory or its subset.json.",
        flag_values=values,
    )
    flags.DEFINE_string(
        "model_dir", None, "The reference run's directory (outside the checkout).", flag_values=values
    )
    flags.DEFINE_float(
        "gamma",
        0.0,
        "CDT's gamma: logits divided by (N_max/N_c)^gamma in the loss; 0 is ERM.",
        flag_values=values,
    )
    flags.DEFINE_integer(
        "epochs", 200, "The reference's --epochs (its schedule is fixed at 5/160/180).", flag_values=values
    )
    flags.DEFINE_integer("batch_size", 128, "The reference's --batch-size.", flag_values=values)
    flags.DEFINE_float("learning_rate", 0.1, "The reference's --lr.", flag_values=values)
    flags.DEFINE_float("weight_decay", 2e-4, "The reference's --wd.", flag_values=values)
    flags.DEFINE_integer("seed", 0, "The reference's --seed (Python and torch RNGs).", flag_values=values)
    flags.DEFINE_integer(
        "workers", 2, "The reference's --workers (DataLoader processes).", flag_values=values
    )
    flags.DEFINE_integer("threads", 0, "torch.set_num_threads; 0: PyTorch's default.", flag_values=values)
    flags.DEFINE_bool(
        "decode_only", False, "Internal: decode the images into images.npz and exit.", flag_values=values
    )
    for name in ("reference_dir", "data_dir", "subset_from", "model_dir"):
        flags.mark_flag_as_required(name, flag_values=values)


# ---- The subset and the images: JSON and NumPy only, no TensorFlow, no torch. ----


def read_subset(subset_from: str) -> dict:
    """The subset.json of a project run (its directory or the file), checked: ids present, hash right."""
    path = os.path.join(subset_from, SUBSET) if os.path.isdir(subset_from) else subset_from
    subset = read_json(path, "object", "give --subset_from a project run directory or its subset.json")
    ids = subset.get("ids")
    if not isinstance(ids, list) or not ids:
        raise UserError(
            f"{path} lists no ids (a source read from files?); the reference needs an image folder run"
        )
    if subset.get("hash") != class_stats.subset_hash(ids):
        raise UserError(
            f"{path}'s ids do not match its hash; the file was changed: re-create it from its run"
        )
    return subset


def decode_images(data_dir: str, ids: list[str], path: str) -> None:
    """Decodes the subset's training images and the whole test split with the project's decoder and
    writes them to `path` (.npz, atomically). Imports TensorFlow: run it in a child process."""
    from cdt_tf import datasets

    source = datasets.load_source("image_folder", data_dir)
    position = {example_id: k for k, example_id in enumerate(source.train.ids)}
    missing = [i for i in ids if i not in position]
    if missing:
        raise UserError(
            f"{len(missing)} training ids of the subset (first: {missing[0]}) are not under {data_dir}; "
            "give --data_dir the image folder the project run used"
        )
    indices = np.array([position[i] for i in ids], dtype=np.int64)
    arrays = {
        "train_images": source.train.images(indices),
        "train_labels": source.train.labels[indices],
        "test_images": source.test.images(),
        "test_labels": source.test.labels,
        "class_names": np.array(source.class_names),
    }
    temporary = f"{path}.tmp"
    with open(temporary, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def load_images(model_dir: str, argv: list[str]) -> dict:
    """images.npz of the run, decoded first (in a child process, so TensorFlow and torch never share one)."""
    path = os.path.join(model_dir, IMAGES)
    if not os.path.exists(path):
        print(f"Decoding the images with the project's decoder into {path} ...", flush=True)
        child = subprocess.run([sys.executable, os.path.abspath(__file__), *argv[1:], "--decode_only"])
        if child.returncode != 0:
            sys.exit(child.returncode)
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


# ---- The record: config.json, metrics.jsonl, results.json. ----


def reference_digest(reference_dir: str) -> dict:
    """SHA-256 of the reference's files that run, so that a record names the code it came from."""
    digests = {}
    for name in REFERENCE_FILES:
        path = os.path.join(reference_dir, name)
        if not os.path.isfile(path):
            raise UserError(f"{reference_dir} has no {name}; give --reference_dir a clone of kaidic/LDAM-DRW")
        with open(path, "rb") as f:
            digests[name] = hashlib.sha256(f.read()).hexdigest()
    return digests


def build_config(values: flags.FlagValues, subset: dict) -> dict:
    counts = [int(c) for c in subset["class_counts"]]
    if len(counts) not in REFERENCE_DATASETS:
        raise UserError(
            f"the subset has {len(counts)} classes; the reference trains CIFAR-10 or CIFAR-100 only"
        )
    if values.gamma < 0 or not np.isfinite(values.gamma):
        raise UserError(f"--gamma must be a finite number >= 0, got {values.gamma}")
    return {
        "tool": "reference_parity",
        "reference": "kaidic/LDAM-DRW",
        "reference_files": reference_digest(values.reference_dir),
        "dataset": REFERENCE_DATASETS[len(counts)],
        "data_dir": os.path.abspath(values.data_dir),
        "subset_from": os.path.abspath(values.subset_from),
        "model": "resnet32",
        "loss": "cdt" if values.gamma > 0 else "ce",
        "gamma": float(values.gamma),
        "epochs": values.epochs,
        "batch_size": values.batch_size,
        "learning_rate": values.learning_rate,
        "momentum": 0.9,
        "weight_decay": values.weight_decay,
        "warmup_epochs": 5,
        "decay_epochs": [160, 180],
        "decay_multipliers": [0.01, 0.0001],
        "augmentation": "crop_flip",
        "seed": values.seed,
        "precision": "float32",
        "workers": values.workers,
        "threads": values.threads,
    }


def check_config(model_dir: str, config: dict) -> None:
    """Writes config.json, or refuses a directory that holds another run (speed-only flags may change)."""
    path = os.path.join(model_dir, CONFIG)
    if os.path.exists(path):
        before = read_json(path, "object")
        changed = sorted(
            k for k in set(before) | set(config) if k not in SPEED_ONLY and before.get(k) != config.get(k)
        )
        if changed:
            raise UserError(
                f"{model_dir} holds a reference run with other settings ({', '.join(changed)}); "
                "use another --model_dir, or the same flags to resume it"
            )
    write_json(path, config)


def results_record(metrics: list[dict], config: dict, subset: dict, class_names: list[str]) -> dict:
    """results.json in the project's shape from the last epoch's line (the reference's own validate)."""
    last = metrics[-1]
    counts = subset["class_counts"]
    per_class = np.array(last["test_per_class_accuracy"], dtype=np.float64)
    seconds = {line["epoch"]: line["seconds"] for line in metrics}
    return {
        "top1": last["test_top1"],
        "top5": last["test_top5"],
        "per_class_accuracy": per_class.tolist(),
        "many_medium_few": evaluate.shot_means(per_class, counts),
        "class_counts": counts,
        "class_names": class_names,
        "num_train_images": int(sum(counts)),
        "num_test_images": last["test_images"],
        "epochs": last["epoch"],
        "config": config,
        "subset_hash": subset["hash"],
        "train_seconds": round(sum(seconds.values()), 1),
        "precision": "float32",
        "framework": last.get("framework"),
    }


class EpochRecorder:
    """Wraps the reference's SummaryWriter: forwards every call, keeps the epoch's scalars, and
    `line(epoch)` turns them into one metrics.jsonl line."""

    def __init__(self, writer):
        self._writer = writer
        self.scalars: dict = {}

    def add_scalar(self, tag, value, step=None, *args, **kwargs):
        self.scalars[tag] = float(value)
        return self._writer.add_scalar(tag, value, step, *args, **kwargs)

    def add_scalars(self, tag, values, step=None, *args, **kwargs):
        self.scalars[tag] = {k: float(v) for k, v in values.items()}
        return self._writer.add_scalars(tag, values, step, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._writer, name)

    def line(self, epoch: int, seconds: float, started: str, test_images: int, framework: str) -> dict:
        s = self.scalars
        per_class = s.get("acc/test_val_cls_acc", {})
        return {
            "epoch": epoch,
            "seconds": round(seconds, 2),
            "started": started,
            "accuracy": s.get("acc/train_top1", float("nan")) / 100,
            "loss": s.get("loss/train"),
            "top5": s.get("acc/train_top5", float("nan")) / 100,
            "learning_rate": s.get("lr"),
            "test_top1": s.get("acc/test_val_top1", float("nan")) / 100,
            "test_top5": s.get("acc/test_val_top5", float("nan")) / 100,
            "test_loss": s.get("loss/test_val"),
            "test_per_class_accuracy": [per_class[k] for k in sorted(per_class, key=int)],
            "test_images": test_images,
            "framework": framework,
        }


# ---- The reference, adapted (see the module docstring): imports torch. ----


def _cpu_only(torch) -> None:
    """Adaptation 1: the reference's .cuda() calls and CUDA checkpoint loading, on a CPU."""
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    load = torch.load

    def load_on_cpu(f, map_location=None, **kwargs):
        kwargs.setdefault("weights_only", False)  # The run's own checkpoint (it holds Python numbers).
        return load(f, map_location="cpu", **kwargs)

    torch.load = load_on_cpu


def _datasets(torchvision, imbalance_cifar, images: dict, counts: list[int]):
    """Adaptation 2: (training class, test class) holding the decoded arrays."""
    base = imbalance_cifar.IMBALANCECIFAR10

    class ProjectSubset(base):
        """The project run's subset in place of the reference's own draw; getitem is CIFAR10's."""

        cls_num = len(counts)

        def __init__(self, root, imb_type="exp", imb_factor=0.01, rand_number=0, train=True, transform=None,
                     target_transform=None, download=False):  # fmt: skip
            torchvision.datasets.VisionDataset.__init__(
                self, root, transform=transform, target_transform=target_transform
            )
            self.train = train
            self.data = images["train_images"]
            self.targets = [int(t) for t in images["train_labels"]]
            self.num_per_cls_dict = dict(enumerate(counts))

    class ProjectTest(torchvision.datasets.CIFAR10):
        """The image folder's test split in place of torchvision's download."""

        def __init__(self, root, train=False, transform=None, target_transform=None, download=False):
            torchvision.datasets.VisionDataset.__init__(
                self, root, transform=transform, target_transform=target_transform
            )
            self.train = train
            self.data = images["test_images"]
            self.targets = [int(t) for t in images["test_labels"]]

    return ProjectSubset, ProjectTest


def _cdt_loss_module(nn, counts: list[int], gamma: float):
    """Adaptation 4: a stand-in for torch.nn whose CrossEntropyLoss divides the logits by a_c."""
    import torch

    temperatures = torch.tensor(
        (max(counts) / np.asarray(counts, dtype=np.float64)) ** gamma, dtype=torch.float32
    )

    class CDTCrossEntropyLoss(nn.CrossEntropyLoss):
        def forward(self, input, target):
            return super().forward(input / temperatures.to(input.dtype), target)

    module = types.ModuleType("nn_with_cdt")
    module.__dict__.update(vars(nn))
    module.CrossEntropyLoss = CDTCrossEntropyLoss
    return module


def train_reference(values: flags.FlagValues, config: dict, images: dict, counts: list[int]) -> None:
    """Runs the reference's cifar_train.main() on the decoded images; returns when its loop ends."""
    try:
        import torch
        import torchvision
    except ImportError as error:
        raise UserError(
            f"the reference needs PyTorch ({error}); pip install -r requirements-parity.txt"
        ) from error
    reference_dir = os.path.abspath(values.reference_dir)
    model_dir = os.path.abspath(values.model_dir)
    _cpu_only(torch)
    if values.threads:
        torch.set_num_threads(values.threads)
    sys.path.insert(0, reference_dir)
    try:
        import cifar_train
        import imbalance_cifar
    except ImportError as error:
        raise UserError(
            f"cannot import the reference from {reference_dir} ({error}); "
            "pip install -r requirements-parity.txt"
        ) from error

    train_class, test_class = _datasets(torchvision, imbalance_cifar, images, counts)
    cifar_train.IMBALANCECIFAR10 = cifar_train.IMBALANCECIFAR100 = train_class
    cifar_train.datasets = types.SimpleNamespace(CIFAR10=test_class, CIFAR100=test_class)
    if values.gamma > 0:
        cifar_train.nn = _cdt_loss_module(cifar_train.nn, counts, values.gamma)

    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    framework = f"pytorch {torch.__version__}"
    writer_class = cifar_train.SummaryWriter
    state = {"recorder": None, "clock": time.time()}

    def recording_writer(*args, **kwargs):
        state["recorder"] = EpochRecorder(writer_class(*args, **kwargs))
        return state["recorder"]

    def save_checkpoint(args, checkpoint, is_best):  # Adaptation 3: the record, then an atomic save.
        del is_best  # No test-selected "best" copy: the record is the last epoch's.
        now = time.time()
        line = state["recorder"].line(
            checkpoint["epoch"], now - state["clock"], started, len(images["test_labels"]), framework
        )
        state["clock"] = now
        with open(os.path.join(model_dir, METRICS), "a") as f:
            f.write(json.dumps(line) + "\n")
        path = os.path.join(args.root_model, args.store_name, CHECKPOINT)
        torch.save(checkpoint, f"{path}.tmp")
        os.replace(f"{path}.tmp", path)
        print(
            f"Epoch {line['epoch']}/{values.epochs}: {line['seconds']:.0f} s, train loss {line['loss']:.4f}, "
            f"test top-1 {100 * line['test_top1']:.2f} %",
            flush=True,
        )

    cifar_train.SummaryWriter = recording_writer
    cifar_train.save_checkpoint = save_checkpoint
    sys.argv = ["cifar_train.py", *reference_args(values, config, model_dir)]
    cifar_train.main()


def reference_args(values: flags.FlagValues, config: dict, model_dir: str) -> list[str]:
    """The reference's own command line; --resume when a checkpoint exists."""
    args = [
        f"--dataset={config['dataset']}",
        "--arch=resnet32",
        "--loss_type=CE",
        "--train_rule=None",
        f"--epochs={values.epochs}",
        f"--batch-size={values.batch_size}",
        f"--lr={values.learning_rate}",
        f"--wd={values.weight_decay}",
        f"--seed={values.seed}",
        f"--workers={values.workers}",
        f"--root_log={os.path.join(model_dir, 'log')}",
        f"--root_model={os.path.join(model_dir, 'checkpoint')}",
    ]
    checkpoint = checkpoint_path(model_dir, config)
    if os.path.exists(checkpoint):
        args.append(f"--resume={checkpoint}")
    return args


def checkpoint_path(model_dir: str, config: dict) -> str:
    """Where the reference saves its checkpoint: root_model/<store_name>/ckpt.pth.tar."""
    store_name = "_".join([config["dataset"], "resnet32", "CE", "None", "exp", "0.01", "0"])
    return os.path.join(model_dir, "checkpoint", store_name, CHECKPOINT)


def checkpoint_epoch(model_dir: str, config: dict) -> int:
    """Epochs the saved checkpoint holds (0 without one); reads it on the CPU."""
    path = checkpoint_path(model_dir, config)
    if not os.path.exists(path):
        return 0
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])


def run(values: flags.FlagValues) -> None:
    model_dir = os.path.expanduser(values.model_dir)
    for name in ("reference_dir", "data_dir", "subset_from"):
        setattr(values, name, os.path.expanduser(getattr(values, name)))
    subset = read_subset(values.subset_from)
    if values.decode_only:
        decode_images(values.data_dir, subset["ids"], os.path.join(model_dir, IMAGES))
        return
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise UserError(f"--model_dir {model_dir} is a file; give a directory")
    os.makedirs(model_dir, exist_ok=True)
    config = build_config(values, subset)
    check_config(model_dir, config)
    write_json(os.path.join(model_dir, SUBSET), subset)
    results_path = os.path.join(model_dir, RESULTS)
    if os.path.exists(results_path):
        print(f"Finished earlier ({results_path}): test top-1 {100 * read_json(results_path)['top1']:.2f} %")
        return
    images = load_images(model_dir, sys.argv)
    counts = [int(c) for c in subset["class_counts"]]
    if np.bincount(images["train_labels"], minlength=len(counts)).tolist() != counts:
        raise UserError(
            f"{model_dir}/{IMAGES} does not hold the subset's class counts; delete it and start again"
        )
    done = checkpoint_epoch(model_dir, config)
    trim_metrics(os.path.join(model_dir, METRICS), done)
    if done < values.epochs:
        print(f"Reference training: epochs {done + 1}-{values.epochs} ({'CDT' if values.gamma else 'ERM'}).")
        train_reference(values, config, images, counts)
    metrics = read_metrics(model_dir)
    if not metrics or metrics[-1].get("epoch") != values.epochs:
        raise UserError(
            f"{model_dir}/{METRICS} does not reach epoch {values.epochs}; run the same command again"
        )
    class_names = [str(n) for n in images["class_names"]]
    results = results_record(metrics, config, subset, class_names)
    write_json(results_path, results)
    print(evaluate.format_table(results, class_names, counts))


if __name__ == "__main__":
    cli.run(define_flags, run)
