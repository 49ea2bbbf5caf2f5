r"""Top-1 of an exported SavedModel on an image folder, through the signature TF Serving answers.

  python tools/evaluate_export.py --export=results/cifar10_lt100_cdt_plus/export/1 \
      --images=../shared/data/cifar10-jpeg/test
  python tools/evaluate_export.py --export=exports/cdt/1 --images=data/test --per_class=50

--images holds one folder per class, named as the export's assets/class_names.txt names it, with the
image files (JPEG, PNG, GIF, BMP) in it. The file bytes go, --batch_size at a time, to the
`serve_image_bytes` signature (what a REST client's {"b64": ...} reaches: decoding, resizing,
the network, the calibration in the graph), with TensorFlow and the export only: no cdt_tf code runs (nor is
cdt_tf imported: bad flags and input are reported here in cdt_tf.cli's voice, one line). Prints
top-1, the per-class accuracy and, where the export's cdt_export.json names its run and the run's
results.json is there, the run's own test top-1 of the same classifier beside it. Exits 2 with one
line `cdt_tf: error: ...` on a bad flag or a folder that is not a class of the export.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import NoReturn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp")

flags.DEFINE_string("export", None, "A version directory of the export (holding saved_model.pb).")
flags.DEFINE_string("images", None, "A folder of class folders of image files (e.g. a test split).")
flags.DEFINE_integer("per_class", 0, "Use the first N files (sorted) of each class; 0: all of them.")
flags.DEFINE_integer("batch_size", 256, "Images per call of the signature.")
flags.mark_flags_as_required(["export", "images"])
FLAGS = flags.FLAGS


ERROR_PREFIX = "cdt_tf: error:"  # cdt_tf.cli's, as its messages (tests/cli_test.py compares them).
_MISSING_REQUIRED = re.compile(r"flag --(\w+)=None: Flag --\1 must have a value other than None\.")


class InputError(ValueError):
    """Bad --export or --images: printed as one line, exit status 2."""


def fail(message) -> NoReturn:
    """cdt_tf.cli.fail without cdt_tf: the message as one line on stderr, exit status 2."""
    print(f"{ERROR_PREFIX} {' '.join(str(message).splitlines())}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with cdt_tf.cli's one-line errors (absl's own says FATAL and exits 1)."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        lines = [_MISSING_REQUIRED.sub(r"--\1 is required", line) for line in str(error).splitlines()]
        fail(f"{'; '.join(lines)}; see --help")


def class_names(export: str) -> list[str]:
    """The export's class names, in class-index order (assets/class_names.txt)."""
    path = os.path.join(export, "assets", "class_names.txt")
    if not os.path.exists(os.path.join(export, "saved_model.pb")) or not os.path.exists(path):
        raise InputError(
            f"--export {export} is not a cdt_tf export version directory (no saved_model.pb and "
            "assets/class_names.txt); pass <export_dir>/<version>"
        )
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def list_images(root: str, names: list[str], per_class: int) -> tuple[list[str], np.ndarray]:
    """(file paths, class indices) of the image files under root/<class name>/."""
    if not os.path.isdir(root):
        raise InputError(f"--images {root} is not a directory; pass a folder of class folders")
    index = {name: i for i, name in enumerate(names)}
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    unknown = [d for d in folders if d not in index]
    if unknown:
        raise InputError(
            f"--images {root}: folder(s) {unknown[:5]} are not classes of the export "
            f"(its classes: {', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"
        )
    paths, labels = [], []
    for folder in folders:
        files = sorted(
            f for f in os.listdir(os.path.join(root, folder)) if f.lower().endswith(IMAGE_SUFFIXES)
        )
        files = files[:per_class] if per_class > 0 else files
        paths += [os.path.join(root, folder, f) for f in files]
        labels += [index[folder]] * len(files)
    if not paths:
        raise InputError(f"--images {root} holds no image files in class folders")
    return paths, np.asarray(labels, np.int64)


def predict(export: str, paths: list[str], batch_size: int) -> np.ndarray:
    """The class index serve_image_bytes returns for each file, with a progress bar."""
    import keras
    import tensorflow as tf

    signature = tf.saved_model.load(export).signatures["serve_image_bytes"]
    progress = keras.utils.Progbar(len(paths), unit_name="image")
    classes = []
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        contents = []
        for path in batch:
            with open(path, "rb") as f:
                contents.append(f.read())
        outputs = signature(image_bytes=tf.constant(contents))
        classes.append(outputs["classes"].numpy())
        progress.add(len(batch))
    return np.concatenate(classes)


def recorded_top1(export: str) -> tuple[float, str] | None:
    """(test top-1, where) that the export's run recorded for the exported classifier, if readable."""
    try:
        with open(os.path.join(export, "cdt_export.json")) as f:
            metadata = json.load(f)
        results_path = os.path.join(metadata["model_dir"], "results.json")
        with open(results_path) as f:
            results = json.load(f)
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None
    classifier = metadata.get("classifier", "trained")
    if classifier == "trained":
        if metadata.get("tau"):  # The export serves its calibration with the recorded tau.
            calibration = metadata.get("calibration", "nc_tau")  # Exports before --calibration: nc_tau.
            entry = (results.get("post_hoc") or {}).get(calibration) or {}
            if entry.get("tau") == metadata["tau"] and "top1" in entry:
                return entry["top1"], f"{results_path} post_hoc.{calibration} (tau {entry['tau']:g})"
            return None
        return results.get("top1"), f"{results_path} top1"
    entry = (results.get("post_hoc") or {}).get(classifier) or {}
    return (entry["top1"], f"{results_path} post_hoc.{classifier}") if "top1" in entry else None


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are written --name=value); see --help")
    try:
        names = class_names(FLAGS.export)
        paths, labels = list_images(FLAGS.images, names, FLAGS.per_class)
    except InputError as error:
        fail(error)
    correct = predict(FLAGS.export, paths, FLAGS.batch_size) == labels
    print(f"{FLAGS.export}: top-1 {100 * correct.mean():.2f}% on {len(paths)} images of {FLAGS.images}")
    for c, name in enumerate(names):
        if (labels == c).any():
            print(f"  {name}: {100 * correct[labels == c].mean():.1f}% of {(labels == c).sum()}")
    recorded = recorded_top1(FLAGS.export)
    if recorded is not None and recorded[0] is not None:
        print(f"The run recorded top-1 {100 * recorded[0]:.2f}% ({recorded[1]})")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
