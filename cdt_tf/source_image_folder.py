"""--dataset=image_folder (and cifar10/100 from a folder): train/<class>/ and test/<class>/ image files.

Classes are the sorted class-folder names; every image is decoded into memory when used
(`image_files.decode_images`), so this is a `Source`.
"""

from __future__ import annotations

import os

import numpy as np

from cdt_tf.data_types import Source, Split
from cdt_tf.errors import DataError
from cdt_tf.image_files import (
    IMAGE_EXTENSIONS,
    decode_images,
    decode_one,
    files_by_class,
    is_image_name,
    skip_unreadable,
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
    paths, labels = files_by_class(
        [os.path.join(split_dir, name) for name in class_names],
        _image_files_recursive,
        lambda _, class_dir: (
            f"class folder {class_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
            "add images or remove the folder"
        ),
    )
    return class_names, paths, labels


def image_folder_source(dataset: str, data_dir: str, image_size: int, bad_images: str = "error") -> Source:
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
        (train_paths, train_labels), (test_paths, test_labels), skipped = skip_unreadable(
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
    image = decode_one(path)
    if image.shape[0] != image.shape[1]:
        raise DataError(
            f"{path} is {image.shape[1]}x{image.shape[0]}, not square; pass --image_size=<side> to resize"
        )
    return int(image.shape[0])


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
                elif is_image_name(entry.name):
                    found.append(os.path.join(relative, entry.name))
    return sorted(found)
