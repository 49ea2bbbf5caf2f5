"""Data sources: TFDS (cifar10, cifar100), image folders and scikit-learn's digits.

A source lists every example of a split (labels and stable ids) before any image
is decoded, so a long-tailed subset decodes only the files it keeps. Images come
back as uint8 [N, H, W, 3]; labels as int64 [N] in class order (sorted folder
names, or the dataset's own label order).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable

import numpy as np

from cdt_tf.errors import DataError

# Per-channel statistics of CIFAR images scaled to [0, 1], as in the reference code
# (also used there for CIFAR-100).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
TFDS_DATASETS = {"cifar10": 10, "cifar100": 100}
DATASETS = ("cifar10", "cifar100", "digits", "image_folder")
SPLITS = ("train", "test")

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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def is_image_folder(data_dir: str | None) -> bool:
    """True when data_dir holds train/<class>/ and test/<class>/ folders."""
    return bool(data_dir) and all(os.path.isdir(os.path.join(data_dir, s)) for s in SPLITS)


def load_source(dataset: str, data_dir: str | None = None, image_size: int = 0) -> Source:
    """Lists a dataset's splits. See the module docstring.

    Args:
      dataset: one of DATASETS.
      data_dir: for cifar10/100 either an image folder (train/ and test/) or the TFDS
        data_dir; required for image_folder; unused for digits.
      image_size: resize image-folder images to this square size (0: the first image's size).
    """
    if dataset == "digits":
        return _digits_source()
    if dataset == "image_folder" or (dataset in TFDS_DATASETS and is_image_folder(data_dir)):
        if not data_dir:
            raise DataError("--dataset=image_folder needs --data_dir=<folder with train/ and test/>")
        source = _image_folder_source(dataset, data_dir, image_size)
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

    def split(mask, name):
        index = np.flatnonzero(mask)
        return Split(
            labels=labels[index],
            ids=np.array([f"digits:{i}" for i in index]),
            load_images=lambda k, index=index: images[index[k]],
        )

    return Source(
        name="digits",
        class_names=[str(c) for c in range(10)],
        train=split(~test_mask, "train"),
        test=split(test_mask, "test"),
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
        files = sorted(
            f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
        )
        if not files:
            raise DataError(
                f"class folder {class_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        paths += [os.path.join(class_dir, f) for f in files]
        labels += [label] * len(files)
    return class_names, paths, labels


def _image_folder_source(dataset: str, data_dir: str, image_size: int) -> Source:
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
