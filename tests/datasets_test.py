"""Tests of the data sources: image folders, scikit-learn digits and (mocked) TFDS."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from cdt_tf import datasets
from cdt_tf.datasets import load_source
from cdt_tf.errors import DataError


def _pixels(seed, size=8, channels=3):
    return np.random.default_rng(seed).integers(0, 256, (size, size, channels)).astype(np.uint8)


def _write_png(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(image))


def _make_folder(root, train=None, test=None):
    """Writes train/<class>/<i>.png and test/<class>/<i>.png; returns {relative path: pixels}."""
    train = train or {"cat": 3, "ant": 2, "bee": 2}
    test = test or {"cat": 1, "ant": 2, "bee": 1}
    written = {}
    seed = 0
    for split, classes in (("train", train), ("test", test)):
        for name, count in classes.items():
            for i in range(count):
                seed += 1
                rel = os.path.join(split, name, f"{i}.png")
                written[rel] = _pixels(seed)
                _write_png(os.path.join(root, rel), written[rel])
    return written


# --------------------------------------------------------------------------- image folder


def test_image_folder_listing_and_decoding(tmp_path):
    root = str(tmp_path)
    written = _make_folder(root)
    source = load_source("image_folder", root)
    assert source.name == "image_folder"
    assert source.class_names == ["ant", "bee", "cat"]  # sorted
    assert source.num_classes == 3
    assert source.mean is None and source.std is None
    # Files in class order, then file-name order.
    expected_train_ids = [
        os.path.join("train", "ant", "0.png"),
        os.path.join("train", "ant", "1.png"),
        os.path.join("train", "bee", "0.png"),
        os.path.join("train", "bee", "1.png"),
        os.path.join("train", "cat", "0.png"),
        os.path.join("train", "cat", "1.png"),
        os.path.join("train", "cat", "2.png"),
    ]
    assert source.train.ids.tolist() == expected_train_ids
    np.testing.assert_array_equal(source.train.labels, [0, 0, 1, 1, 2, 2, 2])
    assert source.train.labels.dtype == np.int64
    assert source.test.ids.tolist() == [
        os.path.join("test", "ant", "0.png"),
        os.path.join("test", "ant", "1.png"),
        os.path.join("test", "bee", "0.png"),
        os.path.join("test", "cat", "0.png"),
    ]
    np.testing.assert_array_equal(source.test.labels, [0, 0, 1, 2])

    images = source.train.images()
    assert images.shape == (7, 8, 8, 3)
    assert images.dtype == np.uint8
    for rel, image in zip(expected_train_ids, images):
        np.testing.assert_array_equal(image, written[rel])
    test_images = source.test.images()
    for rel, image in zip(source.test.ids, test_images):
        np.testing.assert_array_equal(image, written[rel])


def test_image_folder_decodes_only_requested_indices(tmp_path):
    root = str(tmp_path)
    written = _make_folder(root)
    source = load_source("image_folder", root)
    picked = source.train.images(np.array([6, 0]))
    assert picked.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(picked[0], written[source.train.ids[6]])
    np.testing.assert_array_equal(picked[1], written[source.train.ids[0]])


def test_image_folder_greyscale_becomes_rgb(tmp_path):
    root = str(tmp_path)
    _make_folder(root)
    grey = _pixels(99, channels=1)
    _write_png(os.path.join(root, "train", "cat", "3.png"), grey)
    source = load_source("image_folder", root)
    index = source.train.ids.tolist().index(os.path.join("train", "cat", "3.png"))
    image = source.train.images([index])[0]
    assert image.shape == (8, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], grey[..., 0])


def test_image_folder_resizes_to_image_size(tmp_path):
    root = str(tmp_path)
    _write_png(os.path.join(root, "train", "a", "0.png"), np.full((8, 8, 3), 200, np.uint8))
    _write_png(os.path.join(root, "train", "b", "0.png"), np.full((6, 10, 3), 17, np.uint8))
    _write_png(os.path.join(root, "test", "a", "0.png"), np.full((8, 8, 3), 3, np.uint8))
    _write_png(os.path.join(root, "test", "b", "0.png"), np.full((8, 8, 3), 4, np.uint8))
    source = load_source("image_folder", root, image_size=4)
    images = source.train.images()
    assert images.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(images[0], 200)
    np.testing.assert_array_equal(images[1], 17)
    # Without image_size, the first image's size is used and the odd one resized to it.
    images = load_source("image_folder", root).train.images()
    assert images.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(images[1], 17)


def test_image_folder_non_square_first_image_needs_image_size(tmp_path):
    root = str(tmp_path)
    _write_png(os.path.join(root, "train", "a", "0.png"), np.zeros((6, 8, 3), np.uint8))
    _write_png(os.path.join(root, "test", "a", "0.png"), np.zeros((6, 8, 3), np.uint8))
    with pytest.raises(DataError, match="not square"):
        load_source("image_folder", root)


def test_unreadable_file_is_named_when_decoding(tmp_path):
    root = str(tmp_path)
    _make_folder(root)
    bad = os.path.join(root, "train", "cat", "x.jpg")
    with open(bad, "wb") as f:
        f.write(b"not an image")
    source = load_source("image_folder", root)  # Listing works; the first image is fine.
    assert os.path.join("train", "cat", "x.jpg") in source.train.ids.tolist()
    with pytest.raises(DataError, match="x.jpg"):
        source.train.images()


def test_unreadable_first_file_is_named_when_listing(tmp_path):
    root = str(tmp_path)
    _make_folder(root)
    bad = os.path.join(root, "train", "aardvark", "x.jpg")
    os.makedirs(os.path.dirname(bad))
    with open(bad, "wb") as f:
        f.write(b"not an image")
    _write_png(os.path.join(root, "test", "aardvark", "0.png"), _pixels(0))
    with pytest.raises(DataError, match="x.jpg") as error:
        load_source("image_folder", root)
    assert "cannot read image" in str(error.value)


def test_empty_class_folder_raises(tmp_path):
    root = str(tmp_path)
    _make_folder(root)
    os.makedirs(os.path.join(root, "train", "empty"))
    os.makedirs(os.path.join(root, "test", "empty"))
    with pytest.raises(DataError, match="holds no images") as error:
        load_source("image_folder", root)
    assert "empty" in str(error.value)


def test_non_image_files_are_ignored(tmp_path):
    root = str(tmp_path)
    _make_folder(root)
    with open(os.path.join(root, "train", "cat", "notes.txt"), "w") as f:
        f.write("x")
    with open(os.path.join(root, "train", "cat", ".hidden.png"), "w") as f:
        f.write("x")
    source = load_source("image_folder", root)
    assert len(source.train.ids) == 7


def test_images_in_nested_folders_belong_to_their_class(tmp_path):
    root = str(tmp_path)
    written = _make_folder(root)
    for rel, seed in (
        (os.path.join("train", "cat", "indoor", "0.png"), 50),
        (os.path.join("train", "cat", "indoor", "deep", "a.png"), 51),
        (os.path.join("test", "ant", "2019", "9.png"), 52),
    ):
        written[rel] = _pixels(seed)
        _write_png(os.path.join(root, rel), written[rel])
    _write_png(os.path.join(root, "train", "cat", ".thumbnails", "0.png"), _pixels(53))  # Hidden: skipped.
    source = load_source("image_folder", root)
    assert source.train.ids.tolist()[4:] == [
        os.path.join("train", "cat", "0.png"),
        os.path.join("train", "cat", "1.png"),
        os.path.join("train", "cat", "2.png"),
        os.path.join("train", "cat", "indoor", "0.png"),
        os.path.join("train", "cat", "indoor", "deep", "a.png"),
    ]
    np.testing.assert_array_equal(source.train.labels, [0, 0, 1, 1, 2, 2, 2, 2, 2])
    assert os.path.join("test", "ant", "2019", "9.png") in source.test.ids.tolist()
    for rel, image in zip(source.train.ids, source.train.images(), strict=True):
        np.testing.assert_array_equal(image, written[rel])


def test_a_class_folder_with_images_only_in_sub_folders_is_read(tmp_path):
    root = str(tmp_path)
    _write_png(os.path.join(root, "train", "a", "images", "0.png"), _pixels(1))
    _write_png(os.path.join(root, "train", "b", "0.png"), _pixels(2))
    _write_png(os.path.join(root, "test", "a", "0.png"), _pixels(3))
    _write_png(os.path.join(root, "test", "b", "0.png"), _pixels(4))
    os.symlink(os.path.join(root, "train", "a"), os.path.join(root, "train", "a", "images", "loop"))
    source = load_source("image_folder", root)
    assert source.train.ids.tolist() == [
        os.path.join("train", "a", "images", "0.png"),
        os.path.join("train", "b", "0.png"),
    ]


def test_skip_leaves_unreadable_folder_images_out(tmp_path, caplog):
    root = str(tmp_path)
    _make_folder(root)
    for rel, data in (
        (os.path.join("train", "cat", "x.jpg"), b"not an image"),
        (os.path.join("train", "ant", "0.png"), b""),
        (os.path.join("test", "bee", "y.gif"), b"GIF"),
    ):
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    with caplog.at_level("WARNING"):
        source = load_source("image_folder", root, bad_images="skip")
    assert source.skipped_images == {
        "train": [os.path.join("train", "ant", "0.png"), os.path.join("train", "cat", "x.jpg")],
        "test": [os.path.join("test", "bee", "y.gif")],
    }
    assert len(source.train.ids) == 6 and os.path.join("train", "ant", "1.png") in source.train.ids.tolist()
    np.testing.assert_array_equal(source.train.labels, [0, 1, 1, 2, 2, 2])
    assert source.train.images().shape == (6, 8, 8, 3) and source.test.images().shape == (4, 8, 8, 3)
    warnings = [r.getMessage() for r in caplog.records if "--bad_images=skip" in r.getMessage()]
    assert len(warnings) == 1 and "3 image files" in warnings[0] and "(empty)" in warnings[0]
    with pytest.raises(DataError, match="0.png"):  # "error": decoding names the unreadable file, as before.
        load_source("image_folder", root)


def test_missing_test_split_raises(tmp_path):
    root = str(tmp_path)
    _make_folder(root)
    import shutil

    shutil.rmtree(os.path.join(root, "test"))
    with pytest.raises(DataError, match="does not exist"):
        load_source("image_folder", root)


def test_mismatched_class_folders_raise(tmp_path):
    root = str(tmp_path)
    _make_folder(root, test={"cat": 1, "ant": 1, "wasp": 1})
    with pytest.raises(DataError, match="different class folders") as error:
        load_source("image_folder", root)
    assert "bee" in str(error.value) and "wasp" in str(error.value)


def test_no_class_folders_raises(tmp_path):
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "train"))
    os.makedirs(os.path.join(root, "test"))
    with pytest.raises(DataError, match="no class folders"):
        load_source("image_folder", root)


def test_image_folder_needs_data_dir():
    with pytest.raises(DataError, match="data_dir"):
        load_source("image_folder", None)


def test_missing_data_dir_raises(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_source("image_folder", str(tmp_path / "nope"))


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "image_folder", "tiny_imagenet", "inat2018"])
def test_a_data_dir_that_does_not_exist_is_named_and_not_created(tmp_path, monkeypatch, dataset):
    tfds = pytest.importorskip("tensorflow_datasets")
    calls = []
    monkeypatch.setattr(tfds, "load", lambda *args, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(tfds, "builder", lambda *args, **kwargs: calls.append(kwargs))
    missing = str(tmp_path / "nope")
    with pytest.raises(DataError) as error:
        load_source(dataset, missing)
    message = str(error.value)
    assert message.startswith(f"--data_dir {missing} does not exist; ") and "\n" not in message
    assert calls == [] and not os.path.exists(missing)
    with open(missing, "w") as f:
        f.write("a file")
    with pytest.raises(DataError, match=f"--data_dir {missing} is not a directory"):
        load_source(dataset, missing)


def test_unknown_dataset_raises():
    with pytest.raises(DataError, match="unknown dataset"):
        load_source("imagenet", None)


def test_cifar10_folder_with_wrong_class_count_raises(tmp_path):
    root = str(tmp_path)
    _make_folder(root)
    with pytest.raises(DataError, match="3 class folders but cifar10 has 10"):
        load_source("cifar10", root)


def test_cifar10_folder_with_ten_classes_uses_cifar_statistics(tmp_path):
    root = str(tmp_path)
    names = [f"c{i}" for i in range(10)]
    _make_folder(root, train={n: 1 for n in names}, test={n: 1 for n in names})
    source = load_source("cifar10", root)
    assert source.name == "cifar10"
    assert source.class_names == names
    assert source.mean == datasets.CIFAR_MEAN
    assert source.std == datasets.CIFAR_STD
    np.testing.assert_array_equal(source.train.labels, np.arange(10))


def test_is_image_folder(tmp_path):
    assert not datasets.is_image_folder(None)
    assert not datasets.is_image_folder("")
    assert not datasets.is_image_folder(str(tmp_path))
    os.makedirs(tmp_path / "train")
    assert not datasets.is_image_folder(str(tmp_path))
    os.makedirs(tmp_path / "test")
    assert datasets.is_image_folder(str(tmp_path))


def test_decode_images_empty():
    out = datasets.decode_images(np.array([], dtype=str), 8)
    assert out.shape == (0, 8, 8, 3) and out.dtype == np.uint8


# --------------------------------------------------------------------------- digits


def test_digits_source():
    source = load_source("digits")
    assert source.num_classes == 10
    assert source.class_names == [str(c) for c in range(10)]
    assert len(source.train.labels) + len(source.test.labels) == 1797
    np.testing.assert_array_equal(np.bincount(source.test.labels, minlength=10), [50] * 10)
    images = source.test.images()
    assert images.shape == (500, 8, 8, 3)
    assert images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    train_images = source.train.images(np.arange(5))
    assert train_images.shape == (5, 8, 8, 3) and train_images.dtype == np.uint8
    # Train and test are disjoint.
    assert not set(source.train.ids.tolist()) & set(source.test.ids.tolist())
    # The split is fixed.
    again = load_source("digits")
    np.testing.assert_array_equal(again.test.ids, source.test.ids)


def test_digits_refuses_a_data_dir(tmp_path):
    with pytest.raises(DataError) as error:
        load_source("digits", str(tmp_path))
    assert str(error.value) == (
        "--data_dir is not used by --dataset=digits (scikit-learn's bundled copy); "
        f"remove --data_dir={tmp_path}"
    )
    assert load_source("digits", "").num_classes == 10  # An empty flag value is no data_dir.


def test_digits_pixels_match_sklearn():
    from sklearn.datasets import load_digits

    digits = load_digits()
    source = load_source("digits")
    index = int(source.train.ids[3].split(":")[1])
    image = source.train.images([3])[0]
    np.testing.assert_array_equal(
        image[..., 1], np.round(digits.images[index] * 255.0 / 16.0).astype(np.uint8)
    )
    assert source.train.labels[3] == digits.target[index]


# --------------------------------------------------------------------------- TFDS (mocked)


def _write_mock_metadata(data_dir, num_train, num_test):
    """Writes cifar10's dataset_info.json with split sizes, offline, from the builder's code.

    Without it, mock_data falls back to MockPolicy.USE_CODE, where the split sizes are unknown
    and `tfds.load(batch_size=-1)` batches by sys.maxsize, which aborts the process.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder("cifar10", data_dir=data_dir)
    builder.info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(name="train", shard_lengths=[num_train], num_bytes=0),
                tfds.core.SplitInfo(name="test", shard_lengths=[num_test], num_bytes=0),
            ]
        )
    )
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)


def test_tfds_cifar10_mocked(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    metadata_dir = str(tmp_path / "tfds")
    _write_mock_metadata(metadata_dir, 12, 6)
    with tfds.testing.mock_data(num_examples=12, data_dir=metadata_dir):
        source = load_source("cifar10", None)
    assert source.name == "cifar10"
    assert source.num_classes == 10
    assert source.mean == datasets.CIFAR_MEAN and source.std == datasets.CIFAR_STD
    for split, name in ((source.train, "train"), (source.test, "test")):
        assert split.labels.dtype == np.int64
        assert len(split.labels) == 12  # mock_data yields num_examples per split
        assert ((split.labels >= 0) & (split.labels < 10)).all()
        assert split.ids.tolist() == [f"{name}:{i}" for i in range(12)]
        images = split.images()
        assert images.shape == (12, 32, 32, 3)
        assert images.dtype == np.uint8
    np.testing.assert_array_equal(source.train.images([4, 1]), source.train.images()[[4, 1]])


def test_tfds_load_failure_is_a_data_error(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    calls = []

    def failing_load(*args, **kwargs):
        calls.append(kwargs)
        raise OSError("cifar10 not here\nsecond line")

    monkeypatch.setattr(tfds, "load", failing_load)
    with pytest.raises(DataError, match="could not load cifar10 with TFDS") as error:
        load_source("cifar10", str(tmp_path))
    message = str(error.value)
    assert "cifar10 not here" in message
    assert "second line" not in message
    assert str(tmp_path) in message
    assert len(calls) == 1 and calls[0]["data_dir"] == str(tmp_path) and calls[0]["batch_size"] == -1
