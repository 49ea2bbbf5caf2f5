"""--dataset=tiny_imagenet: the official tiny-imagenet-200 folder, a `Source` decoded into memory."""

from __future__ import annotations

import os

import numpy as np

from cdt_tf.data_types import IMAGENET_MEAN, IMAGENET_STD, Source, Split
from cdt_tf.errors import DataError
from cdt_tf.image_files import decode_images, files_by_class, is_image_name, skip_unreadable

TINY_IMAGENET_SIZE = 64


def tiny_imagenet_source(data_dir: str | None, image_size: int, bad_images: str = "error") -> Source:
    """The official tiny-imagenet-200 folder: 200 classes, 500 training and 50 validation 64x64 images each.

    Layout: wnids.txt (one wnid per line: the class order), words.txt (optional: wnid, tab, names;
    the first name is the class name), train/<wnid>/images/*.JPEG, and val/images/*.JPEG labelled
    by val/val_annotations.txt (file, wnid, 4 box numbers; tab-separated). The validation split is
    our test split; the unlabelled test/ is ignored. 100,000 images of 64x64x3 fit in memory
    (1.2 GB), so this is a `Source` like an image folder; greyscale images become RGB.
    """
    if not data_dir:
        raise DataError("--dataset=tiny_imagenet needs --data_dir=<the unpacked tiny-imagenet-200 folder>")
    if not os.path.isdir(data_dir):
        raise DataError(f"--data_dir {data_dir} does not exist")
    wnids = _read_wnids(data_dir)
    train_paths, train_labels = _train_files(data_dir, wnids)
    test_paths, test_labels = _val_files(data_dir, wnids)

    skipped = {}
    if bad_images == "skip":  # With "error", decoding names the first unreadable file.
        (train_paths, train_labels), (test_paths, test_labels), skipped = skip_unreadable(
            (train_paths, train_labels), (test_paths, test_labels), data_dir
        )
    size = image_size or TINY_IMAGENET_SIZE
    return Source(
        name="tiny_imagenet",
        class_names=_tiny_imagenet_names(data_dir, wnids),
        train=_path_split(train_paths, train_labels, data_dir, size),
        test=_path_split(test_paths, test_labels, data_dir, size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        skipped_images=skipped,
    )


def _read_wnids(data_dir: str) -> list[str]:
    """wnids.txt: the class order, one wnid per line (each listed once)."""
    wnids_path = os.path.join(data_dir, "wnids.txt")
    if not os.path.isfile(wnids_path):
        raise DataError(
            f"{wnids_path} is missing; point --data_dir at the unpacked tiny-imagenet-200 folder "
            "(it holds wnids.txt, train/ and val/)"
        )
    wnids = _read_lines(wnids_path)
    if not wnids:
        raise DataError(f"{wnids_path} lists no classes; it needs one wnid per line")
    duplicates = sorted({w for w in wnids if wnids.count(w) > 1})
    if duplicates:
        raise DataError(f"{wnids_path} lists {duplicates[:5]} more than once; list each wnid once")
    return wnids


def _train_files(data_dir: str, wnids: list[str]) -> tuple[list[str], list[int]]:
    """(paths, labels) of train/<wnid>/images/*: every class needs at least one image."""
    return files_by_class(
        [os.path.join(data_dir, "train", wnid, "images") for wnid in wnids],
        lambda class_dir: sorted(_image_files(class_dir)) if os.path.isdir(class_dir) else [],
        lambda label, class_dir: (
            f"no images for class {wnids[label]} in {class_dir}; the training images of each wnid in "
            "wnids.txt belong in train/<wnid>/images/"
        ),
    )


def _val_files(data_dir: str, wnids: list[str]) -> tuple[list[str], list[int]]:
    """(paths, labels) of val/images/ as val/val_annotations.txt labels them: every class needs one."""
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    annotations = os.path.join(data_dir, "val", "val_annotations.txt")
    if not os.path.isfile(annotations):
        raise DataError(
            f"{annotations} is missing; the validation split needs val/val_annotations.txt and val/images/"
        )
    test_paths, test_labels = [], []
    for line_number, line in enumerate(_read_lines(annotations, keep_empty=True), start=1):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(
                f"{annotations} line {line_number} is not '<file>\\t<wnid>\\t<4 box numbers>': {line[:60]!r}"
            )
        file_name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in label_of:
            raise DataError(
                f"{annotations} line {line_number} labels {file_name} with wnid {wnid}, which wnids.txt "
                "does not list; use the wnids.txt of the same tiny-imagenet-200 copy"
            )
        path = os.path.join(data_dir, "val", "images", file_name)
        if not os.path.isfile(path):
            raise DataError(
                f"{path} (line {line_number} of {annotations}) does not exist; restore val/images/"
            )
        test_paths.append(path)
        test_labels.append(label_of[wnid])
    missing = [wnids[c] for c in sorted(set(range(len(wnids))) - set(test_labels))]
    if missing:
        raise DataError(
            f"{annotations} names no validation image of class {missing[0]}"
            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; use a complete val/ folder"
        )
    return test_paths, test_labels


def _read_lines(path: str, keep_empty: bool = False) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    return lines if keep_empty else [line.strip() for line in lines if line.strip()]


def _image_files(folder: str) -> list[str]:
    return [f for f in os.listdir(folder) if is_image_name(f)]


def _tiny_imagenet_names(data_dir: str, wnids: list[str]) -> list[str]:
    """words.txt's first name of each wnid ("goldfish, Carassius auratus" -> "goldfish"), else the wnid.

    A name shared by two classes gets its wnid appended, so that names stay unique.
    """
    words_path = os.path.join(data_dir, "words.txt")
    words = {}
    if os.path.isfile(words_path):
        for line in _read_lines(words_path):
            wnid, _, names = line.partition("\t")
            words[wnid.strip()] = names.split(",")[0].strip()
    names = [words.get(wnid) or wnid for wnid in wnids]
    return [
        f"{name} ({wnid})" if names.count(name) > 1 else name for name, wnid in zip(names, wnids, strict=True)
    ]


def _path_split(paths: list[str], labels: list[int], data_dir: str, size: int) -> Split:
    paths = np.array(paths)
    return Split(
        labels=np.array(labels, dtype=np.int64),
        ids=np.array([os.path.relpath(p, data_dir) for p in paths]),
        load_images=lambda k, paths=paths: decode_images(paths[k], size),
    )
