"""--dataset=inat2018: iNaturalist 2018 as the competition's COCO-style JSON files, or as TFDS records.

437,513 training images of 8,142 classes are too many to decode into memory: this is a
`FileSource`, whose splits list labels, ids and image files (or TFDS records) that the tf.data
pipeline reads and decodes while training. Its image files are checked when it is loaded
(`image_files.screen_image_files`).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import logging

from cdt_tf.data_types import INAT2018_SIZE, FileSource, FileSplit
from cdt_tf.errors import DataError
from cdt_tf.image_files import files_phrase, first_few, screen_image_files, undecodable_files

INAT2018_TFDS_NAME = "i_naturalist2018"


def inat2018_source(data_dir: str | None, image_size: int, bad_images: str = "error") -> FileSource:
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

    Every listed image file is checked before the source is returned (`screen_image_files`:
    437,513 + 24,426 opens and 16-byte reads, in threads): missing files are a DataError,
    unreadable ones too or, with bad_images="skip", left out (`skipped_images`).
    """
    names_by_id, category_ids, lists = _read_json_lists(data_dir)
    paths = {name: [os.path.join(data_dir, f) for f in files] for name, (files, _) in lists.items()}
    kept, skipped = screen_image_files(
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
                files_phrase(len(bad)),
                first_few(bad_ids),
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


def _read_json_lists(
    data_dir: str,
) -> tuple[dict[int, str], list[int], dict[str, tuple[list[str], np.ndarray]]]:
    """The categories of train2018.json, and the file names and labels of both JSON files.

    Returns ({category id: name}, the sorted category ids, {"train" | "test": (file names [N], labels
    int64 [N])}). An image whose category train2018.json does not list is a DataError.
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
    return names_by_id, category_ids, lists


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
