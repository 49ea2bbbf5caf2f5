"""Data sources: TFDS (cifar10, cifar100), image folders, digits, Tiny-ImageNet, iNaturalist 2018.

A source lists every example of a split (labels and stable ids) before any image
is decoded, so a long-tailed subset decodes only the files it keeps. Images come
back as uint8 [N, H, W, 3]; labels as int64 [N] in class order (sorted folder
names, or the dataset's own label order).

iNaturalist 2018 (437,513 training images of 8,142 classes) is too large to decode into
memory: it is a `FileSource`, whose splits list labels, ids and image files (or TFDS
records) that the tf.data pipeline reads and decodes while training.

Bad files are found when a source is loaded, before any training: every image file a
`FileSource` lists must exist (one DataError counts the missing ones and names the first
few), and its first bytes must be those of an image format TensorFlow decodes. What happens
to unreadable images (empty files, other formats, garbage) is the `bad_images` policy of
`load_source`: "error" (one DataError counting and naming them) or "skip" (they are left out
of their split, one warning line says so, and `source.skipped_images` lists them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from concurrent import futures

import numpy as np
from absl import logging

from cdt_tf import catalog
from cdt_tf.errors import DataError

# Per-channel statistics of CIFAR images scaled to [0, 1], as in the reference code
# (also used there for CIFAR-100).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# ImageNet's per-channel statistics of images scaled to [0, 1] (torchvision's), for Tiny-ImageNet and iNat.
IMAGENET_MEAN, IMAGENET_STD = catalog.IMAGENET_MEAN, catalog.IMAGENET_STD

TFDS_DATASETS = {"cifar10": 10, "cifar100": 100}
DATASETS = catalog.DATASETS
SPLITS = ("train", "test")

# What load_source does with unreadable image files: raise one DataError, or leave them out.
BAD_IMAGES_POLICIES = catalog.BAD_IMAGES
# The leading bytes of the formats tf.io.decode_image reads: JPEG, PNG, GIF, BMP, JPEG XL (bare
# codestream, container); WebP ("RIFF", 4 size bytes, "WEBP") is matched in `image_file_problem`.
IMAGE_SIGNATURES = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"\xff\x0a",
    b"\x00\x00\x00\x0cJXL \r\n\x87\n",
)
MISSING = "missing"
# Error messages and warnings name this many files, then count the rest.
SHOWN_FILES = 5

# Digits has no official split: this many images per class, drawn with a fixed
# seed, form the balanced test split; the rest is the training pool.
DIGITS_TEST_PER_CLASS = 50


@dataclasses.dataclass(frozen=True)
class Split:
    """One split before decoding: labels [N] and ids [N] (file paths or "<split>:<index>")."""

    labels: np.ndarray
    ids: np.ndarray
    load_images: Callable[[np.ndarray], np.ndarray]  # indices [K] -> uint8 [K, H, W, 3]

    def images(self, indices=None) -> np.ndarray:
        indices = np.arange(len(self.labels)) if indices is None else np.asarray(indices)
        return self.load_images(indices)


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    class_names: list[str]
    train: Split
    test: Split
    mean: tuple[float, float, float] | None = None  # None: computed from the training subset.
    std: tuple[float, float, float] | None = None
    # {"train" | "test": [ids]} of the unreadable images left out with bad_images="skip"; {}: none.
    skipped_images: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def is_image_folder(data_dir: str | None) -> bool:
    """True when data_dir holds train/<class>/ and test/<class>/ folders."""
    return bool(data_dir) and all(os.path.isdir(os.path.join(data_dir, s)) for s in SPLITS)


def load_source(
    dataset: str, data_dir: str | None = None, image_size: int = 0, *, bad_images: str = "error"
) -> Source | FileSource:
    """Lists a dataset's splits. See the module docstring.

    Args:
      dataset: one of DATASETS.
      data_dir: for cifar10/100 either an image folder (train/ and test/) or the TFDS
        data_dir; required for image_folder and tiny_imagenet (the tiny-imagenet-200
        folder); for inat2018 the folder holding train2018.json and val2018.json, else
        the TFDS data_dir of i_naturalist2018. A data_dir that does not exist is a DataError
        (nothing is downloaded into it); digits takes none (a DataError too).
      image_size: resize image-folder images to this square size (0: the first image's size);
        tiny_imagenet: 0 is 64; inat2018: the crop size (0: 224).
      bad_images: what to do with image files that are empty or not an image (checked by their
        first bytes, in parallel, when the source is loaded). "error": one DataError counting
        them and naming the first few. "skip": leave them out of their split, log one warning
        line, and list their ids in `source.skipped_images` ({"train"/"test": [ids]}).
        Checked for inat2018 read from its JSON files with either policy; image_folder,
        cifar10/100 image folders and tiny_imagenet decode every image they use when they are
        read (naming the first unreadable file), so they are checked only with "skip". TFDS
        records are TFDS's to check. A listed inat2018 file that does not exist is always a
        DataError.

    Returns:
      A `Source` (images decoded into memory on request), or for inat2018 a `FileSource` (read from
      image files while training, never decoded into memory as a whole).
    """
    if bad_images not in BAD_IMAGES_POLICIES:
        raise DataError(f"unknown --bad_images={bad_images}; use one of {', '.join(BAD_IMAGES_POLICIES)}")
    if dataset == "digits":
        if data_dir:
            raise DataError(
                f"--data_dir is not used by --dataset=digits (scikit-learn's bundled copy); remove "
                f"--data_dir={data_dir}"
            )
        return _digits_source()
    if dataset in DATASETS and data_dir and "://" not in data_dir and not os.path.isdir(data_dir):
        what = "is not a directory" if os.path.exists(data_dir) else "does not exist"
        raise DataError(f"--data_dir {data_dir} {what}; {_DATA_DIR_HINTS[dataset]}")
    if dataset == "tiny_imagenet":
        return _tiny_imagenet_source(data_dir, image_size, bad_images)
    if dataset == "inat2018":
        return _inat2018_source(data_dir, image_size, bad_images)
    if dataset == "image_folder" or (dataset in TFDS_DATASETS and is_image_folder(data_dir)):
        if not data_dir:
            raise DataError("--dataset=image_folder needs --data_dir=<folder with train/ and test/>")
        source = _image_folder_source(dataset, data_dir, image_size, bad_images)
        expected = TFDS_DATASETS.get(dataset)
        if expected and source.num_classes != expected:
            raise DataError(
                f"{data_dir} has {source.num_classes} class folders but {dataset} has {expected}; "
                "point --data_dir at the right folder or use --dataset=image_folder"
            )
        if dataset in TFDS_DATASETS:
            source = dataclasses.replace(source, mean=CIFAR_MEAN, std=CIFAR_STD)
        return source
    if dataset in TFDS_DATASETS:
        return _tfds_source(dataset, data_dir)
    raise DataError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")


# What a --data_dir that does not exist should be instead (gs:// and other URLs are TFDS's to check).
_DATA_DIR_HINTS = {
    "cifar10": "create it for TFDS to download cifar10 into, or point it at a folder with train/<class>/ "
    "and test/<class>/",
    "cifar100": "create it for TFDS to download cifar100 into, or point it at a folder with "
    "train/<class>/ and test/<class>/",
    "image_folder": "point it at a folder with train/<class>/ and test/<class>/",
    "tiny_imagenet": "point it at the unpacked tiny-imagenet-200 folder",
    "inat2018": "point it at the folder holding train2018.json, val2018.json and train_val2018/ "
    "(or a prepared TFDS i_naturalist2018)",
}


def _digits_source() -> Source:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 0..16 grey levels -> uint8 RGB, so every model sees 3-channel uint8 images.
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(grey[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    test_mask = np.zeros(len(labels), bool)
    for c in range(10):
        members = np.flatnonzero(labels == c)
        test_mask[rng.permutation(members)[:DIGITS_TEST_PER_CLASS]] = True

    def split(mask):
        index = np.flatnonzero(mask)
        return Split(
            labels=labels[index],
            ids=np.array([f"digits:{i}" for i in index]),
            load_images=lambda k, index=index: images[index[k]],
        )

    return Source(
        name="digits",
        class_names=[str(c) for c in range(10)],
        train=split(~test_mask),
        test=split(test_mask),
    )


def _tfds_source(dataset: str, data_dir: str | None) -> Source:
    import tensorflow_datasets as tfds

    try:
        splits, info = tfds.load(
            dataset, split=list(SPLITS), data_dir=data_dir, batch_size=-1, with_info=True
        )
    except Exception as error:  # TFDS raises many types (download, missing files, checksums).
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(
            f"could not load {dataset} with TFDS (data_dir={data_dir}): {first_line}; "
            "download it once with network access, or pass --data_dir=<folder with train/ and test/>"
        ) from error
    class_names = list(info.features["label"].names)

    def split(name, arrays):
        images = np.asarray(arrays["image"], dtype=np.uint8)
        labels = np.asarray(arrays["label"], dtype=np.int64)
        return Split(
            labels=labels,
            ids=np.array([f"{name}:{i}" for i in range(len(labels))]),
            load_images=lambda k, images=images: images[k],
        )

    return Source(
        name=dataset,
        class_names=class_names,
        train=split("train", tfds.as_numpy(splits[0])),
        test=split("test", tfds.as_numpy(splits[1])),
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )


def _list_folder(split_dir: str) -> tuple[list[str], list[str], list[int]]:
    """(class names, image paths, labels) of split_dir/<class>/: every image under a class folder.

    Images in nested folders of a class folder (train/cat/indoor/1.jpg) belong to that class:
    class folders are read recursively, as torchvision's ImageFolder and Keras'
    image_dataset_from_directory do. Names starting with "." (files and folders) are skipped.
    Paths are in class order, then in the order of their paths relative to the class folder.
    """
    if not os.path.isdir(split_dir):
        raise DataError(f"{split_dir} does not exist; an image folder needs train/<class>/ and test/<class>/")
    class_names = sorted(
        d
        for d in os.listdir(split_dir)
        if os.path.isdir(os.path.join(split_dir, d)) and not d.startswith(".")
    )
    if not class_names:
        raise DataError(f"{split_dir} holds no class folders; expected {split_dir}/<class>/<image>")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(split_dir, name)
        files = _image_files_recursive(class_dir)
        if not files:
            raise DataError(
                f"class folder {class_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        paths += [os.path.join(class_dir, f) for f in files]
        labels += [label] * len(files)
    return class_names, paths, labels


def _image_folder_source(dataset: str, data_dir: str, image_size: int, bad_images: str = "error") -> Source:
    if not os.path.isdir(data_dir):
        raise DataError(f"--data_dir {data_dir} does not exist")
    class_names, train_paths, train_labels = _list_folder(os.path.join(data_dir, "train"))
    test_names, test_paths, test_labels = _list_folder(os.path.join(data_dir, "test"))
    if test_names != class_names:
        missing = sorted(set(class_names) ^ set(test_names))
        raise DataError(
            f"train/ and test/ of {data_dir} have different class folders (differ in {missing[:5]}); "
            "give both the same classes"
        )
    skipped = {}
    if bad_images == "skip":  # With "error", decoding names the first unreadable file.
        (train_paths, train_labels), (test_paths, test_labels), skipped = _skip_unreadable(
            (train_paths, train_labels), (test_paths, test_labels), data_dir
        )
        if not train_paths:
            raise DataError(f"no training image under {data_dir}/train is readable; replace the files")
    size = image_size or _image_size(train_paths[0])

    def split(paths, labels):
        paths = np.array(paths)
        return Split(
            labels=np.array(labels, dtype=np.int64),
            ids=np.array([os.path.relpath(p, data_dir) for p in paths]),
            load_images=lambda k, paths=paths: decode_images(paths[k], size),
        )

    return Source(
        name=dataset,
        class_names=class_names,
        train=split(train_paths, train_labels),
        test=split(test_paths, test_labels),
        skipped_images=skipped,
    )


def _image_size(path: str) -> int:
    image = _decode_one(path)
    if image.shape[0] != image.shape[1]:
        raise DataError(
            f"{path} is {image.shape[1]}x{image.shape[0]}, not square; pass --image_size=<side> to resize"
        )
    return int(image.shape[0])


def _decode_one(path: str) -> np.ndarray:
    import tensorflow as tf

    try:
        data = tf.io.read_file(path)
        return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    except (tf.errors.OpError, ValueError) as error:
        raise DataError(
            f"cannot read image {path} ({type(error).__name__}); replace or delete the file"
        ) from error


def decode_images(paths: np.ndarray, size: int, batch_size: int = 512) -> np.ndarray:
    """Decodes image files in parallel (tf.data) into uint8 [N, size, size, 3].

    Greyscale and RGBA files become RGB; other sizes are resized (bilinear). An
    unreadable file raises DataError naming it.
    """
    import keras
    import tensorflow as tf

    def decode(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        if_resized = tf.cast(tf.image.resize(image, [size, size]) + 0.5, tf.uint8)
        same = tf.logical_and(tf.shape(image)[0] == size, tf.shape(image)[1] == size)
        return tf.cond(same, lambda: tf.image.resize_with_crop_or_pad(image, size, size), lambda: if_resized)

    dataset = (
        tf.data.Dataset.from_tensor_slices(paths)
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size)
    )
    chunks = []
    show_progress = len(paths) > 5000 and sys.stdout.isatty()
    progress = keras.utils.Progbar(len(paths), unit_name="image") if show_progress else None
    iterator = iter(dataset)
    while True:
        try:
            chunk = next(iterator)
        except StopIteration:
            break
        except tf.errors.OpError as error:
            # Find the culprit among the files of the failing batch and name it.
            start = len(chunks) * batch_size
            for path in paths[start : start + batch_size]:
                _decode_one(str(path))
            raise DataError(
                f"cannot decode images under {os.path.dirname(str(paths[start]))}: {error}"
            ) from error
        chunks.append(chunk.numpy())
        if progress:
            progress.add(len(chunks[-1]))
    if not chunks:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.concatenate(chunks)


# --------------------------------------------------------------------------- checking image files


def undecodable_files(paths: Sequence[str]) -> list[int]:
    """Positions of the files among `paths` that TensorFlow cannot read or decode whole (a damaged JPEG
    body behind a valid header, for instance). Decodes every file, in parallel: seconds per thousand
    images."""
    import tensorflow as tf

    def check(position, path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return position, tf.shape(image)[0]

    dataset = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(paths), dtype=np.int64), np.asarray(paths, str))
    )
    decoded = dataset.map(check, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().batch(256)
    good = {int(k) for positions, _ in decoded.as_numpy_iterator() for k in positions}
    return [k for k in range(len(paths)) if k not in good]


def image_file_problem(path: str) -> str:
    """What stops `path` from being decoded, judged by its first bytes: "" when it looks like an image.

    Otherwise MISSING ("missing": no such file), "empty" (zero bytes), "not an image" (the first
    bytes are none of IMAGE_SIGNATURES, nor WebP's) or "unreadable (<OSError>)". One open and
    one read of 16 bytes: as cheap as os.stat. A file that starts like an image can still fail to
    decode (truncated); the training pipelines drop such files (see input_pipeline).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return MISSING
    except OSError as error:
        return f"unreadable ({type(error).__name__})"
    try:
        head = os.read(fd, 16)
    except OSError as error:  # IsADirectoryError, EIO.
        return f"unreadable ({type(error).__name__})"
    finally:
        os.close(fd)
    if not head:
        return "empty"
    if head.startswith(IMAGE_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return ""
    return "not an image"


def check_image_files(paths: Sequence[str], threads: int = 16) -> list[str]:
    """`image_file_problem` of every path, in order; threads overlap the file system's latency.

    437,513 iNaturalist files are checked in seconds when the file system has them cached;
    on a cold disk or a network file system the threads keep many requests in flight.
    """
    paths = [str(p) for p in paths]
    chunk = 4096
    if len(paths) <= chunk or threads <= 1:
        return [image_file_problem(p) for p in paths]
    with futures.ThreadPoolExecutor(max_workers=threads) as pool:
        chunks = pool.map(
            lambda start: [image_file_problem(p) for p in paths[start : start + chunk]],
            range(0, len(paths), chunk),
        )
        return [problem for problems in chunks for problem in problems]


def _first_few(named: list[str]) -> str:
    """The first SHOWN_FILES entries and how many are left: 'a, b, c, d, e (and 12 more)'."""
    shown = ", ".join(named[:SHOWN_FILES])
    return shown + (f" (and {len(named) - SHOWN_FILES:,} more)" if len(named) > SHOWN_FILES else "")


def _files(count: int) -> str:
    return f"{count:,} image file{'' if count == 1 else 's'}"


def _screen_image_files(
    splits: dict[str, tuple[Sequence[str], Sequence[str]]],
    data_dir: str,
    bad_images: str,
    listed_in: dict[str, str] | None = None,
    missing_hint: str = "restore them",
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Checks every image file of {split: (paths, ids)} (`check_image_files`) before any training.

    A missing file is a DataError that counts the missing files of all splits and names the
    first few (by id). Unreadable files (empty, not an image) are a DataError too with
    bad_images="error"; with "skip" they are left out and one warning line counts and names them.
    listed_in[split] says where a split's list comes from in messages (default "<split>/").

    Returns ({split: indices of the files kept, int64, increasing}, {split: [ids of the files
    left out]}, the latter holding only the splits that lost files).
    """
    listed_in = listed_in or {name: f"{name}/" for name in splits}
    problems = {name: check_image_files(paths) for name, (paths, _) in splits.items()}
    bad = {name: [i for i, problem in enumerate(found) if problem] for name, found in problems.items()}

    def where(counts: dict[str, int]) -> str:
        return " and ".join(
            f"{listed_in[name]} ({count:,} of {len(splits[name][0]):,})"
            for name, count in counts.items()
            if count
        )

    missing = {
        name: [splits[name][1][i] for i in bad[name] if problems[name][i] == MISSING] for name in splits
    }
    count = sum(len(m) for m in missing.values())
    if count:
        raise DataError(
            f"{_files(count)} listed in {where({n: len(m) for n, m in missing.items()})} "
            f"{'does' if count == 1 else 'do'} not exist under {data_dir}: "
            f"{_first_few([i for m in missing.values() for i in m])}; {missing_hint}"
        )
    count = sum(len(b) for b in bad.values())
    kept = {name: np.arange(len(paths), dtype=np.int64) for name, (paths, _) in splits.items()}
    if not count:
        return kept, {}
    named = [f"{splits[name][1][i]} ({problems[name][i]})" for name in splits for i in bad[name]]
    counts = where({n: len(b) for n, b in bad.items()})
    if bad_images == "error":
        raise DataError(
            f"{_files(count)} listed in {counts} under {data_dir} {'is' if count == 1 else 'are'} not "
            "readable as images: "
            f"{_first_few(named)}; replace or delete them, or pass --bad_images=skip to leave them out "
            "(the run records which)"
        )
    skipped = {name: [str(splits[name][1][i]) for i in bad[name]] for name in splits if bad[name]}
    kept = {name: np.setdiff1d(indices, bad[name]).astype(np.int64) for name, indices in kept.items()}
    logging.warning(
        "--bad_images=skip: left out %s (unreadable as images) listed in %s under %s: %s",
        _files(count),
        counts,
        data_dir,
        _first_few(named),
    )
    return kept, skipped


def _skip_unreadable(train: tuple[list, list], test: tuple[list, list], data_dir: str):
    """bad_images="skip" for in-memory sources: ((paths, labels) of train and test kept, skipped ids)."""
    splits = {"train": train, "test": test}
    kept, skipped = _screen_image_files(
        {name: (paths, [os.path.relpath(p, data_dir) for p in paths]) for name, (paths, _) in splits.items()},
        data_dir,
        "skip",
    )
    left = [tuple([values[i] for i in kept[name]] for values in splits[name]) for name in ("train", "test")]
    return left[0], left[1], skipped


# --------------------------------------------------------------------------- Tiny-ImageNet

TINY_IMAGENET_SIZE = 64


def _tiny_imagenet_source(data_dir: str | None, image_size: int, bad_images: str = "error") -> Source:
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
    label_of = {wnid: label for label, wnid in enumerate(wnids)}

    train_paths, train_labels = [], []
    for label, wnid in enumerate(wnids):
        class_dir = os.path.join(data_dir, "train", wnid, "images")
        files = sorted(_image_files(class_dir)) if os.path.isdir(class_dir) else []
        if not files:
            raise DataError(
                f"no images for class {wnid} in {class_dir}; the training images of each wnid in "
                "wnids.txt belong in train/<wnid>/images/"
            )
        train_paths += [os.path.join(class_dir, f) for f in files]
        train_labels += [label] * len(files)

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

    skipped = {}
    if bad_images == "skip":  # With "error", decoding names the first unreadable file.
        (train_paths, train_labels), (test_paths, test_labels), skipped = _skip_unreadable(
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


def _read_lines(path: str, keep_empty: bool = False) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    return lines if keep_empty else [line.strip() for line in lines if line.strip()]


def _is_image_name(name: str) -> bool:
    """An image file by its name: one of IMAGE_EXTENSIONS, not hidden (a leading ".")."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _image_files(folder: str) -> list[str]:
    return [f for f in os.listdir(folder) if _is_image_name(f)]


def _image_files_recursive(folder: str) -> list[str]:
    """Sorted paths, relative to folder, of the image files in folder and its sub-folders (at any depth).

    Names starting with "." are skipped; symbolic links to folders are followed, each real folder
    read once (so a link loop ends).
    """
    found, seen, pending = [], set(), [""]
    while pending:
        relative = pending.pop()
        real = os.path.realpath(os.path.join(folder, relative))
        if real in seen:
            continue
        seen.add(real)
        with os.scandir(os.path.join(folder, relative)) as entries:
            for entry in entries:
                if entry.is_dir():
                    if not entry.name.startswith("."):
                        pending.append(os.path.join(relative, entry.name))
                elif _is_image_name(entry.name):
                    found.append(os.path.join(relative, entry.name))
    return sorted(found)


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


# --------------------------------------------------------------------------- iNaturalist 2018

INAT2018_SIZE = 224
INAT2018_TFDS_NAME = "i_naturalist2018"


@dataclasses.dataclass(frozen=True)
class FileSplit:
    """One split read from encoded images while training: labels [N], ids [N], and where the bytes are.

    Either `paths` (absolute image file paths [N]) or `read_records` (a callable returning a
    tf.data.Dataset of (encoded image string, int64 label) in the order of `ids`, e.g. TFDS).
    """

    labels: np.ndarray
    ids: np.ndarray
    paths: np.ndarray | None = None
    read_records: Callable | None = None

    def records(self, indices=None):
        """tf.data.Dataset of (encoded image string [], int64 label []) of `indices` (sorted), in order."""
        import tensorflow as tf

        if indices is not None:
            indices = np.asarray(indices, np.int64)
            if (np.diff(indices) <= 0).any():
                raise ValueError("FileSplit.records takes strictly increasing indices")
        if self.paths is not None:
            chosen = slice(None) if indices is None else indices
            dataset = tf.data.Dataset.from_tensor_slices((self.paths[chosen], self.labels[chosen]))
            return dataset.map(
                lambda path, label: (tf.io.read_file(path), label),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
        dataset = self.read_records()
        if indices is None or len(indices) == len(self.labels):
            return dataset
        # Streamed records have no random access: keep the chosen positions of one ordered pass.
        keep = np.zeros(len(self.labels), bool)
        keep[indices] = True
        keep = tf.constant(keep)

        def kept(position, record):
            return keep[position]

        def drop_position(position, record):
            return record

        return dataset.enumerate().filter(kept).map(drop_position)

    def images(self, indices=None) -> np.ndarray:
        raise DataError(
            "this dataset is read from image files while training and is never decoded into memory; "
            "read it through its tf.data pipelines (run_data.RunData.eval_dataset)"
        )


@dataclasses.dataclass(frozen=True)
class FileSource:
    """A dataset read from image files (or TFDS records) while training; see `FileSplit`.

    category_ids[c] is the dataset's own id of class index c; class indices follow sorted ids.
    """

    name: str
    class_names: list[str]
    category_ids: list[int]
    train: FileSplit
    test: FileSplit
    image_size: int = INAT2018_SIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    origin: str = ""  # Where the lists came from: a folder of JSON files, or "tfds:<name>".
    # {"train" | "test": [ids]} of the unreadable images left out with bad_images="skip"; {}: none.
    skipped_images: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def classes(self) -> list[dict]:
        """[{"index": c, "category_id": id, "name": name}] per class: what <model_dir>/classes.json holds."""
        return [
            {"index": c, "category_id": int(category_id), "name": name}
            for c, (category_id, name) in enumerate(zip(self.category_ids, self.class_names, strict=True))
        ]


def _inat2018_source(data_dir: str | None, image_size: int, bad_images: str = "error") -> FileSource:
    """The competition's JSON files when --data_dir holds train2018.json, else TFDS i_naturalist2018."""
    if data_dir and os.path.isfile(os.path.join(data_dir, "train2018.json")):
        return _inat2018_json_source(data_dir, image_size, bad_images)
    return _inat2018_tfds_source(data_dir, image_size)


def _inat2018_json_source(data_dir: str, image_size: int, bad_images: str = "error") -> FileSource:
    """iNaturalist 2018 from train2018.json and val2018.json (COCO-style) in data_dir.

    Each JSON holds `images` [{id, file_name, ...}] (file_name relative to data_dir, e.g.
    train_val2018/Plantae/7477/<uuid>.jpg), `annotations` [{image_id, category_id}] (one per
    image) and `categories` [{id, name, ...}]. Class index c is the rank of the category id in
    sorted order (ids 0..8141 in the 2018 release, so index = id there). Names come from
    data_dir/categories.json (the taxonomy released after the competition) when present, else
    from train2018.json. val2018.json is our test split.

    Every listed image file is checked before the source is returned (`_screen_image_files`:
    437,513 + 24,426 opens and 16-byte reads, in threads): missing files are a DataError,
    unreadable ones too or, with bad_images="skip", left out (`skipped_images`).
    """
    train_path = os.path.join(data_dir, "train2018.json")
    train = _read_coco_json(train_path)
    categories = train.get("categories")
    if not isinstance(categories, list) or not categories:
        raise DataError(f"{train_path} has no 'categories' list; use the competition's train2018.json")
    try:
        names_by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{train_path}: a category lacks an integer 'id' ({error})") from error
    names_by_id.update(_inat2018_taxonomy_names(data_dir))
    category_ids = sorted({int(c["id"]) for c in categories})
    label_of = {category_id: label for label, category_id in enumerate(category_ids)}

    listed = {}
    for file_name, coco in (("train2018.json", train), ("val2018.json", None)):
        path = os.path.join(data_dir, file_name)
        if coco is None:
            if not os.path.isfile(path):
                raise DataError(
                    f"{path} is missing; --data_dir must hold the iNaturalist 2018 train2018.json and "
                    "val2018.json (and the train_val2018/ images they name)"
                )
            coco = _read_coco_json(path)
        files, category_of_file = _coco_labels(coco, path)
        labels = []
        for image_file, category_id in zip(files, category_of_file, strict=True):
            if category_id not in label_of:
                raise DataError(
                    f"{path}: image {image_file} has category_id {category_id}, which train2018.json's "
                    "categories do not list; use the JSON files of one release"
                )
            labels.append(label_of[category_id])
        listed[file_name] = (files, np.array(labels, np.int64))
    lists = {"train": listed["train2018.json"], "test": listed["val2018.json"]}
    paths = {name: [os.path.join(data_dir, f) for f in files] for name, (files, _) in lists.items()}
    kept, skipped = _screen_image_files(
        {name: (paths[name], files) for name, (files, _) in lists.items()},
        data_dir,
        bad_images,
        listed_in={"train": "train2018.json", "test": "val2018.json"},
        missing_hint="file_name paths are relative to --data_dir: unpack train_val2018.tar.gz there, "
        "or restore the missing files",
    )
    if bad_images == "skip":
        # Evaluation matches outputs to labels by position and so cannot drop a file mid-pass:
        # decode the test split once now and leave out what fails (training drops such files itself).
        test_files, _ = lists["test"]
        test_paths = np.array(paths["test"])[kept["test"]]
        bad = undecodable_files(test_paths)
        if bad:
            bad_ids = [str(np.array(test_files)[kept["test"]][k]) for k in bad]
            skipped = {**skipped, "test": skipped.get("test", []) + bad_ids}
            kept["test"] = np.delete(kept["test"], bad)
            logging.warning(
                "--bad_images=skip: left out %s of val2018.json that fail to decode: %s",
                _files(len(bad)),
                _first_few(bad_ids),
            )
    splits = [
        FileSplit(
            labels=labels[kept[name]],
            ids=np.array(files)[kept[name]],
            paths=np.array(paths[name])[kept[name]],
        )
        for name, (files, labels) in lists.items()
    ]
    return FileSource(
        name="inat2018",
        class_names=[names_by_id[i] for i in category_ids],
        category_ids=category_ids,
        train=splits[0],
        test=splits[1],
        image_size=image_size or INAT2018_SIZE,
        origin=os.path.abspath(data_dir),
        skipped_images=skipped,
    )


def _read_coco_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path} ({type(error).__name__}: {error}); download it again") from error
    if not isinstance(value, dict):
        raise DataError(f"{path} is not a COCO-style JSON object with images, annotations and categories")
    return value


def _coco_labels(coco: dict, path: str) -> tuple[list[str], list[int]]:
    """(file_name of every image in the JSON's order, the category id of each): one annotation per image."""
    for key in ("images", "annotations"):
        if not isinstance(coco.get(key), list) or not coco[key]:
            raise DataError(f"{path} has no '{key}' list; is it the competition's {os.path.basename(path)}?")
    try:
        file_of = {image["id"]: str(image["file_name"]) for image in coco["images"]}
        category_of = {}
        for annotation in coco["annotations"]:
            image_id, category_id = annotation["image_id"], int(annotation["category_id"])
            if image_id not in file_of:
                raise DataError(
                    f"{path}: an annotation names image_id {image_id}, which 'images' does not list"
                )
            if category_of.setdefault(image_id, category_id) != category_id:
                raise DataError(f"{path}: image {file_of[image_id]} has two categories; one label per image")
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"{path}: an image or annotation lacks a field ({type(error).__name__}: {error})"
        ) from error
    unlabelled = [file_of[i] for i in file_of if i not in category_of]
    if unlabelled:
        raise DataError(
            f"{path}: image {unlabelled[0]} has no annotation ({len(unlabelled)} images lack one)"
        )
    return list(file_of.values()), [category_of[i] for i in file_of]


def _inat2018_taxonomy_names(data_dir: str) -> dict[int, str]:
    """{category id: species name} from data_dir/categories.json, when present (else {})."""
    path = os.path.join(data_dir, "categories.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return {int(c["id"]): str(c["name"]) for c in json.load(f)}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"cannot read category names from {path} ({error}); fix or remove it") from error


def _inat2018_tfds_source(data_dir: str | None, image_size: int) -> FileSource:
    """iNaturalist 2018 from a prepared TFDS `i_naturalist2018` (nothing is downloaded here).

    Records stream in the builder's stored order (TFDS shuffles examples when it writes them);
    one pass reads the labels and ids. The TFDS label is the index of the species name in
    the builder's labels file, which lists the 8,142 names by category id, so it is used as
    both the class index and the category id.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    where = data_dir or "~/tensorflow_datasets"
    try:
        builder = tfds.builder(INAT2018_TFDS_NAME, data_dir=data_dir)
        class_names = list(builder.info.features["label"].names)
        listed = {}
        for split in ("train", "validation"):
            ids, labels = [], []
            partial = tfds.decode.PartialDecoding({"id": True, "label": True})
            dataset = builder.as_dataset(split=split, shuffle_files=False, decoders=partial)
            for batch in dataset.batch(8192).prefetch(2).as_numpy_iterator():
                ids += [f"{split}:{i.decode()}" for i in batch["id"]]
                labels.append(batch["label"].astype(np.int64))
            listed[split] = (np.array(ids), np.concatenate(labels) if labels else np.zeros(0, np.int64))
    except Exception as error:  # TFDS raises many types (not prepared, missing files, bad metadata).
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(
            f"no train2018.json in --data_dir and TFDS {INAT2018_TFDS_NAME} is not readable under {where} "
            f"({first_line}); put the competition's train2018.json, val2018.json and train_val2018/ in "
            "--data_dir, or prepare the TFDS dataset there"
        ) from error

    def reader(split):
        def read_records():
            dataset = builder.as_dataset(
                split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
            )
            return dataset.map(lambda example: (example["image"], tf.cast(example["label"], tf.int64)))

        return read_records

    train, test = (
        FileSplit(labels=listed[split][1], ids=listed[split][0], read_records=reader(split))
        for split in ("train", "validation")
    )
    if not len(train.labels) or not len(test.labels):
        raise DataError(f"TFDS {INAT2018_TFDS_NAME} under {where} has an empty train or validation split")
    return FileSource(
        name="inat2018",
        class_names=class_names,
        category_ids=list(range(len(class_names))),
        train=train,
        test=test,
        image_size=image_size or INAT2018_SIZE,
        origin=f"tfds:{INAT2018_TFDS_NAME}",
    )
