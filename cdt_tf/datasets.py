"""The data sources by --dataset name: `load_source` lists a dataset's splits, one module per source.

Each --dataset name is read by one module:
  digits             source_digits: scikit-learn's bundled 8x8 digits
  cifar10, cifar100  source_cifar (TFDS), or source_image_folder when --data_dir holds train/ and test/
  image_folder       source_image_folder: train/<class>/ and test/<class>/
  tiny_imagenet      source_tiny_imagenet: the unpacked tiny-imagenet-200 folder
  inat2018           source_inat2018: the competition's JSON files, else TFDS i_naturalist2018

A source lists every example of a split (labels and stable ids) before any image is decoded
(`data_types`): a `Source` decodes into memory on request, a `FileSource` (iNaturalist 2018) is
read from image files while training.

Bad files are found when a source is loaded, before any training (`image_files`). What happens
to unreadable images (empty files, other formats, garbage) is the `bad_images` policy of
`load_source`: "error" (one DataError counting and naming them) or "skip" (they are left out
of their split, one warning line says so, and `source.skipped_images` lists them).

This module is the data sources' public face: besides `load_source` and `is_image_folder` it
re-exports, on purpose, the types and constants of `data_types` and the file functions of
`image_files` that the rest of cdt_tf, tools/, experiments/ and tests use (`datasets.Source`,
`datasets.decode_images`, ...); `__all__` lists them.
"""

from __future__ import annotations

import dataclasses
import os

from cdt_tf import catalog
from cdt_tf.data_types import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SPLITS,
    FileSource,
    FileSplit,
    Source,
    Split,
)
from cdt_tf.errors import DataError
from cdt_tf.image_files import (
    MISSING,
    check_image_files,
    decode_images,
    image_file_problem,
    undecodable_files,
)
from cdt_tf.source_cifar import tfds_source
from cdt_tf.source_digits import digits_source
from cdt_tf.source_image_folder import image_folder_source
from cdt_tf.source_inat2018 import inat2018_source
from cdt_tf.source_tiny_imagenet import tiny_imagenet_source

__all__ = [
    "BAD_IMAGES_POLICIES",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MISSING",
    "SPLITS",
    "TFDS_DATASETS",
    "FileSource",
    "FileSplit",
    "Source",
    "Split",
    "check_image_files",
    "decode_images",
    "image_file_problem",
    "is_image_folder",
    "load_source",
    "undecodable_files",
]

TFDS_DATASETS = {"cifar10": 10, "cifar100": 100}
DATASETS = catalog.DATASETS

# What load_source does with unreadable image files: raise one DataError, or leave them out.
BAD_IMAGES_POLICIES = catalog.BAD_IMAGES


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
        return digits_source()
    if dataset in DATASETS and data_dir and "://" not in data_dir and not os.path.isdir(data_dir):
        what = "is not a directory" if os.path.exists(data_dir) else "does not exist"
        raise DataError(f"--data_dir {data_dir} {what}; {_DATA_DIR_HINTS[dataset]}")
    if dataset == "tiny_imagenet":
        return tiny_imagenet_source(data_dir, image_size, bad_images)
    if dataset == "inat2018":
        return inat2018_source(data_dir, image_size, bad_images)
    if dataset == "image_folder" or (dataset in TFDS_DATASETS and is_image_folder(data_dir)):
        if not data_dir:
            raise DataError("--dataset=image_folder needs --data_dir=<folder with train/ and test/>")
        source = image_folder_source(dataset, data_dir, image_size, bad_images)
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
        return tfds_source(dataset, data_dir)
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
