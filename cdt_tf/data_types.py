"""The data layer's types and the constants several sources share.

A source lists every example of a split (labels and stable ids) before any image
is decoded, so a long-tailed subset decodes only the files it keeps. Images come
back as uint8 [N, H, W, 3]; labels as int64 [N] in class order (sorted folder
names, or the dataset's own label order): a `Source` of `Split`s.

iNaturalist 2018 (437,513 training images of 8,142 classes) is too large to decode into
memory: it is a `FileSource`, whose `FileSplit`s list labels, ids and image files (or TFDS
records) that the tf.data pipeline reads and decodes while training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from cdt_tf import catalog
from cdt_tf.errors import DataError

# Per-channel statistics of CIFAR images scaled to [0, 1], as in the reference code
# (also used there for CIFAR-100).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

# ImageNet's per-channel statistics of images scaled to [0, 1] (torchvision's), for Tiny-ImageNet and iNat.
IMAGENET_MEAN, IMAGENET_STD = catalog.IMAGENET_MEAN, catalog.IMAGENET_STD

# The splits of every source (and the folders of an image folder).
SPLITS = ("train", "test")
# iNaturalist 2018's crop size when --image_size is 0: a `FileSource`'s default.
INAT2018_SIZE = 224


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
