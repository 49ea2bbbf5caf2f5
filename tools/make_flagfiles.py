"""Writes flags/ for every CIFAR row of the paper's Tables 2 and 7, and the Table 5 and 9 runs.

  python tools/make_flagfiles.py            # (re)write flags/cifar*.cfg
  python tools/make_flagfiles.py --check    # exit 1 if a committed flagfile differs (a test runs this)

One file per (dataset, imbalance, ratio, method): flags/<dataset>_<lt|step><rho>_<method>.cfg, each
naming the paper's number. Hyperparameters the paper does not list are ours and say so.
"""

from __future__ import annotations

import os
import sys

from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cdt_tf import cli, paper_results  # noqa: E402

_CHECK = flags.DEFINE_bool("check", False, "Only compare with the committed files; exit 1 on a difference.")

FLAGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "flags")

RECIPE = """\
# The CIFAR recipe (also the flag defaults): SGD 0.9, wd 2e-4 coupled, batch 128, 200 epochs,
# warm-up to 0.1 over 5 epochs, x0.01 from epoch 160, x0.0001 from epoch 180, pad-4 crop + flip.
--epochs=200
--batch_size=128
--learning_rate=0.1
--momentum=0.9
--weight_decay=2e-4
--warmup_epochs=5
--decay_epochs=160,180
--decay_multipliers=0.01,0.0001
--augmentation=crop_flip
--seed=0
"""

# method suffix -> (row name, description, flags, notes on choices the paper does not state)
METHODS = {
    "ce": ("ERM", "ERM (softmax cross-entropy)", ["--loss=ce"], []),
    "cdt": (
        "CDT",
        "CDT (class-dependent temperatures)",
        ["--loss=cdt", "--gamma=0.3"],
        [
            "gamma: the paper tunes it per setting and does not list it; "
            "0.3 is its CIFAR-10-LT value (Fig. 5, 7)."
        ],
    ),
    "reweight": (
        "Re-weighting",
        "re-weighting (instance weight N_c^-gamma)",
        ["--loss=reweight", "--gamma=0.5"],
        ["gamma: the paper tunes it and does not list it; 0.5 is our choice."],
    ),
    "resample": (
        "Re-sampling",
        "re-sampling (class-balanced batches)",
        ["--loss=ce", "--sampler=class_balanced"],
        [],
    ),
    "focal": (
        "Focal",
        "softmax focal loss",
        ["--loss=focal", "--focal_gamma=1.0"],
        ["focal_gamma=1 as in the LDAM-DRW reference code."],
    ),
    "cb": (
        "CB",
        "class-balanced focal loss (effective number, beta 0.9999)",
        ["--loss=cb", "--cb_loss=focal", "--focal_gamma=1.0", "--cb_beta=0.9999"],
        ["Cui et al. tune beta and the focal gamma per setting; we fix beta=0.9999, focal_gamma=1."],
    ),
    "ldam": (
        "LDAM",
        "LDAM (margins ~ N_c^-1/4, max 0.5, s = 30, cosine classifier)",
        ["--loss=ldam", "--ldam_max_margin=0.5", "--ldam_scale=30", "--classifier=cosine"],
        [],
    ),
    "ldam_drw": (
        "LDAM-DRW",
        "LDAM with deferred re-weighting from epoch 160",
        [
            "--loss=ldam",
            "--ldam_max_margin=0.5",
            "--ldam_scale=30",
            "--classifier=cosine",
            "--drw_epoch=160",
            "--cb_beta=0.9999",
        ],
        [],
    ),
}

PROFILES = {"lt": ("exp", "long-tailed (exponential)", "2"), "step": ("step", "step", "7")}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def _paper_line(table: str, row: str, dataset: str, ratio: int) -> str:
    value = paper_results.TABLES[table][row][(dataset, ratio)]
    number = "no number (not reported)" if value is None else f"{value} % top-1"
    return f"# Paper, Table {table}: {number} on the balanced {DATASET_NAMES[dataset]} test set"


def _file(name: str, header: list[str], flag_lines: list[str]) -> tuple[str, str]:
    run = f"# Run: python -m cdt_tf.main --flagfile=flags/{name}.cfg --model_dir=runs/{name}"
    offline = "# (add --data_dir=<TFDS data_dir or image folder with train/ and test/> when offline)."
    text = "\n".join(header + [run, offline] + flag_lines) + "\n" + RECIPE
    return f"{name}.cfg", text


def flagfiles() -> dict[str, str]:
    """file name -> content of every generated flagfile."""
    files = {}
    for dataset in paper_results.DATASETS:
        for kind, (profile, profile_name, table) in PROFILES.items():
            for ratio in paper_results.RATIOS:
                for suffix, (row, description, method_flags, notes) in METHODS.items():
                    name = f"{dataset}_{kind}{ratio}_{suffix}"
                    header = [
                        f"# {DATASET_NAMES[dataset]}, {profile_name} imbalance, rho = {ratio}: "
                        f"{description}.",
                        _paper_line(table, row, dataset, ratio) + " (ResNet-32, 200 epochs).",
                        *(f"# {note}" for note in notes),
                    ]
                    data = [f"--dataset={dataset}", f"--imbalance={profile}", f"--imbalance_ratio={ratio}"]
                    file_name, text = _file(name, header, data + ["--model=resnet32"] + method_flags)
                    files[file_name] = text
    # Table 5: a balanced subset of CIFAR-10 as large as CIFAR-10-LT rho = 100 (12,406 -> 1,240 a class).
    name = "cifar10_balanced1240_ce"
    header = [
        "# CIFAR-10, balanced subset of 1,240 images a class (as many in all as CIFAR-10-LT rho = 100): ERM.",
        "# Paper, Table 5: balanced features + balanced classifier 85.6 %; retrain its classifier on the",
        "# imbalanced subset with `python -m cdt_tf.retrain_classifier --data=imbalanced` for 82.2 %.",
    ]
    data = ["--dataset=cifar10", "--imbalance=none", "--max_per_class=1240", "--model=resnet32", "--loss=ce"]
    files[f"{name}.cfg"] = _file(name, header, data)[1]
    # Table 9: select tau on K = 3 held-out images a class, then retrain on the full subset.
    for dataset, paper in (("cifar10", "79.31"), ("cifar100", "43.92")):
        name = f"{dataset}_lt100_cdt_holdout3"
        header = [
            f"# {DATASET_NAMES[dataset]}-LT rho = 100, CDT, 3 images a class held out "
            "to select post-hoc tau.",
            f"# Paper, Table 9: CDT+N_c^tau selected on the held-out set {paper} % top-1 (after step 2).",
            f"# Step 2: python -m cdt_tf.main --flagfile=flags/{dataset}_lt100_cdt.cfg "
            f"--tau_from=runs/{name} --model_dir=runs/{dataset}_lt100_cdt",
        ]
        data = [
            f"--dataset={dataset}",
            "--imbalance=exp",
            "--imbalance_ratio=100",
            "--model=resnet32",
            "--loss=cdt",
            "--gamma=0.3",
            "--holdout_per_class=3",
        ]
        files[f"{name}.cfg"] = _file(name, header, data)[1]
    return files


def main(argv):
    del argv
    stale = []
    for file_name, text in sorted(flagfiles().items()):
        path = os.path.join(FLAGS_DIR, file_name)
        current = open(path).read() if os.path.exists(path) else None
        if current == text:
            continue
        stale.append(file_name)
        if not _CHECK.value:
            with open(path, "w") as f:
                f.write(text)
    if _CHECK.value and stale:
        print(
            f"{len(stale)} flagfiles differ from tools/make_flagfiles.py: {stale[:5]}; run it to rewrite them"
        )
        sys.exit(1)
    print(f"{'checked' if _CHECK.value else 'wrote'} {len(flagfiles())} flagfiles ({len(stale)} changed)")


if __name__ == "__main__":
    cli.run_tool(main)
