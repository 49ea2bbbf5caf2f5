"""--dataset=cifar10 / cifar100 from TFDS: both splits decoded into memory, a `Source`.

(The same names with --data_dir=<image folder> are `source_image_folder`'s.)
"""

from __future__ import annotations

import numpy as np

from cdt_tf.data_types import CIFAR_MEAN, CIFAR_STD, SPLITS, Source, Split
from cdt_tf.errors import DataError


def tfds_source(dataset: str, data_dir: str | None) -> Source:
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
