"""Tiny-ImageNet: the reader on a fixture in the official tiny-imagenet-200 layout, ResNet-18, the CLI."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cdt_tf import catalog, class_stats, datasets, input_pipeline, models
from cdt_tf import config as config_lib
from cdt_tf.datasets import load_source
from cdt_tf.errors import DataError
from conftest import REPO_ROOT, flagfile_config

# wnids.txt's order (not sorted) is the class order.
WNIDS = ("n02123045", "n01443537", "n02206856")
WORDS = {
    "n01443537": "goldfish, Carassius auratus",
    "n02123045": "tabby, tabby cat",
    "n02206856": "bee",
    "n09999999": "not a class of this copy",
}
TRAIN_PER_CLASS = 6
VAL_PER_CLASS = 2
GREY = os.path.join("train", WNIDS[2], "images", f"{WNIDS[2]}_1.JPEG")


def _colour(label: int, index: int) -> np.ndarray:
    """A distinct flat colour per image (flat colours survive JPEG within a few levels)."""
    return np.array([40 + 60 * label, 30 + 17 * index, 200 - 60 * label], np.uint8)


def _write_jpeg(path: str, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_jpeg(image, quality=100))


def write_tiny_imagenet(root: str, words: bool = True) -> dict:
    """Writes tiny-imagenet-200's layout with 64x64 JPEGs; returns {relative path: (label, colour)}.

    train/<wnid>/images/<wnid>_<i>.JPEG (with the real <wnid>_boxes.txt beside images/), one
    greyscale image (GREY), val/images/val_<k>.JPEG labelled by val/val_annotations.txt in an
    interleaved order, and an unlabelled test/images/ that the reader must ignore.
    """
    written = {}
    with open(os.path.join(root, "wnids.txt"), "w") as f:
        f.write("".join(f"{wnid}\n" for wnid in WNIDS))
    if words:
        with open(os.path.join(root, "words.txt"), "w") as f:
            f.write("".join(f"{wnid}\t{names}\n" for wnid, names in WORDS.items()))
    for label, wnid in enumerate(WNIDS):
        boxes = []
        for i in range(TRAIN_PER_CLASS):
            rel = os.path.join("train", wnid, "images", f"{wnid}_{i}.JPEG")
            colour = _colour(label, i)
            if rel == GREY:
                colour = np.full(3, 90, np.uint8)
                _write_jpeg(os.path.join(root, rel), np.full((64, 64, 1), 90, np.uint8))
            else:
                _write_jpeg(os.path.join(root, rel), np.broadcast_to(colour, (64, 64, 3)).copy())
            written[rel] = (label, colour)
            boxes.append(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n")
        with open(os.path.join(root, "train", wnid, f"{wnid}_boxes.txt"), "w") as f:
            f.write("".join(boxes))
    lines = []
    for k in range(VAL_PER_CLASS * len(WNIDS)):
        label = (2 * k + 1) % len(WNIDS)  # Interleaved: val_0 is class 1, val_1 class 0, ...
        rel = os.path.join("val", "images", f"val_{k}.JPEG")
        colour = _colour(label, 5 + k)
        _write_jpeg(os.path.join(root, rel), np.broadcast_to(colour, (64, 64, 3)).copy())
        written[rel] = (label, colour)
        lines.append(f"val_{k}.JPEG\t{WNIDS[label]}\t1\t2\t60\t61\n")
    with open(os.path.join(root, "val", "val_annotations.txt"), "w") as f:
        f.write("".join(lines))
    _write_jpeg(os.path.join(root, "test", "images", "test_0.JPEG"), np.zeros((64, 64, 3), np.uint8))
    return written


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny-imagenet-200"))
    return root, write_tiny_imagenet(root)


def test_reader_lists_classes_in_wnids_order_with_words_names(tiny_root):
    root, written = tiny_root
    source = load_source("tiny_imagenet", root)
    assert isinstance(source, datasets.Source) and source.name == "tiny_imagenet"
    assert source.class_names == ["tabby", "goldfish", "bee"]  # wnids.txt order, words.txt's first name
    assert source.mean == datasets.IMAGENET_MEAN and source.std == datasets.IMAGENET_STD
    np.testing.assert_array_equal(source.train.labels, np.repeat([0, 1, 2], TRAIN_PER_CLASS))
    assert source.train.labels.dtype == np.int64
    assert source.train.ids[0] == os.path.join("train", WNIDS[0], "images", f"{WNIDS[0]}_0.JPEG")
    # The validation split (our test split) keeps val_annotations.txt's order and labels.
    assert source.test.ids.tolist() == [os.path.join("val", "images", f"val_{k}.JPEG") for k in range(6)]
    np.testing.assert_array_equal(source.test.labels, [1, 0, 2, 1, 0, 2])
    assert not any(i.startswith("test") for i in source.test.ids)
    for split in (source.train, source.test):
        images = split.images()
        assert images.shape == (len(split.labels), 64, 64, 3) and images.dtype == np.uint8
        for example_id, label, image in zip(split.ids, split.labels, images, strict=True):
            expected_label, colour = written[example_id]
            assert label == expected_label
            np.testing.assert_allclose(image.reshape(-1, 3).mean(0), colour, atol=3)


def test_greyscale_jpeg_becomes_rgb(tiny_root):
    root, _ = tiny_root
    source = load_source("tiny_imagenet", root)
    image = source.train.images([source.train.ids.tolist().index(GREY)])[0]
    assert image.shape == (64, 64, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 1])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    np.testing.assert_allclose(image.mean(), 90, atol=2)


def test_names_are_wnids_without_words_txt_and_unique_with_it(tmp_path):
    root = str(tmp_path)
    write_tiny_imagenet(root, words=False)
    assert load_source("tiny_imagenet", root).class_names == list(WNIDS)
    with open(os.path.join(root, "words.txt"), "w") as f:
        f.write(f"{WNIDS[0]}\tbee, honeybee\n{WNIDS[2]}\tbee\n")
    assert load_source("tiny_imagenet", root).class_names == [
        f"bee ({WNIDS[0]})",
        WNIDS[1],
        f"bee ({WNIDS[2]})",
    ]


def _remove(root, *parts):
    path = os.path.join(root, *parts)
    if os.path.isdir(path):
        for name in os.listdir(path):
            os.remove(os.path.join(path, name))
    else:
        os.remove(path)


def _replace_in(root, rel, old, new):
    path = os.path.join(root, rel)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace(old, new, 1))


@pytest.mark.parametrize(
    "break_it, fragments",
    [
        (lambda root: _remove(root, "wnids.txt"), ["wnids.txt is missing", "tiny-imagenet-200"]),
        (
            lambda root: _replace_in(root, "val/val_annotations.txt", WNIDS[1], "n07777777"),
            ["n07777777", "line 1", "val_0.JPEG", "wnids.txt"],
        ),
        (
            lambda root: _remove(root, "train", WNIDS[1], "images"),
            [f"no images for class {WNIDS[1]}", "train/<wnid>/images/"],
        ),
        (lambda root: _remove(root, "val", "val_annotations.txt"), ["val_annotations.txt is missing"]),
        (lambda root: _remove(root, "val", "images", "val_3.JPEG"), ["val_3.JPEG", "does not exist"]),
        (
            lambda root: _replace_in(
                root, "val/val_annotations.txt", f"val_2.JPEG\t{WNIDS[2]}\t1\t2\t60\t61", "val_2.JPEG"
            ),
            ["line 3", "is not '<file>"],
        ),
    ],
)
def test_broken_folders_raise_one_clear_error(tmp_path, break_it, fragments):
    root = str(tmp_path)
    write_tiny_imagenet(root)
    break_it(root)
    with pytest.raises(DataError) as error:
        load_source("tiny_imagenet", root)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_skip_leaves_unreadable_images_out(tmp_path):
    root = str(tmp_path)
    write_tiny_imagenet(root)
    bad_train = os.path.join("train", WNIDS[1], "images", f"{WNIDS[1]}_3.JPEG")
    bad_val = os.path.join("val", "images", "val_4.JPEG")
    for rel, data in ((bad_train, b""), (bad_val, b"<html>")):
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    source = load_source("tiny_imagenet", root, bad_images="skip")
    assert source.skipped_images == {"train": [bad_train], "test": [bad_val]}
    assert bad_train not in source.train.ids.tolist() and len(source.train.ids) == 3 * TRAIN_PER_CLASS - 1
    np.testing.assert_array_equal(np.bincount(source.train.labels), [6, 5, 6])
    np.testing.assert_array_equal(source.test.labels, [1, 0, 2, 1, 2])  # val_4 (class 0) is left out.
    assert source.train.images().shape == (17, 64, 64, 3) and source.test.images().shape == (5, 64, 64, 3)
    with pytest.raises(DataError, match=f"{WNIDS[1]}_3.JPEG"):  # "error": decoding names the file.
        load_source("tiny_imagenet", root).train.images()


def test_a_data_dir_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(
        DataError, match=f"--data_dir {tmp_path / 'nope'} does not exist; .*tiny-imagenet-200"
    ):
        load_source("tiny_imagenet", str(tmp_path / "nope"))


def test_needs_data_dir():
    with pytest.raises(DataError, match="needs --data_dir"):
        load_source("tiny_imagenet", None)


def test_long_tailed_subset_and_crop_flip_pads_eight(tiny_root):
    root, _ = tiny_root
    source = load_source("tiny_imagenet", root)
    counts = class_stats.imbalanced_counts(3, TRAIN_PER_CLASS, 3.0, "exp")
    indices = input_pipeline.select_subset(source.train.labels, counts, seed=0)
    assert np.bincount(source.train.labels[indices]).tolist() == counts == [6, 3, 2]
    # crop_flip pads H/8 = 8 for 64x64 images: on a white image, the zero border of a crop is up to
    # 8 rows or columns wide (never more), and 8 occurs among 200 crops.
    white = np.full((200, 64, 64, 3), 255, np.uint8)
    dataset = input_pipeline.build_train_dataset(white, np.zeros(200, np.int64), 200, "crop_flip", seed=0)
    crops = next(iter(dataset))[0].numpy()
    black_rows = (crops.max(axis=(2, 3)) == 0).sum(1)
    black_columns = (crops.max(axis=(1, 3)) == 0).sum(1)
    assert max(black_rows.max(), black_columns.max()) == 8
    assert (black_rows > 4).any() and (black_columns > 4).any()


def test_resnet18_for_64x64():
    model = models.build_model("resnet18", 10, (64, 64, 3), datasets.IMAGENET_MEAN, datasets.IMAGENET_STD)
    assert model.name == "resnet18"
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 11_173_962
    stem = model.get_layer("stem_conv")
    assert stem.kernel_size == (3, 3) and stem.strides == (1, 1)
    assert not [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert isinstance(model.get_layer("stage1_block1_1_bn"), models.FusedBatchNormalization)
    assert model.get_layer("stage4_block2_out").output.shape[1:] == (8, 8, 512)
    assert model.get_layer("classifier").input.shape[-1] == 512
    logits = model(np.zeros((2, 64, 64, 3), np.uint8), training=False)
    assert logits.shape == (2, 10) and logits.dtype == "float32"
    cosine = models.build_model("resnet18", 4, (64, 64, 3), (0.5,) * 3, (0.25,) * 3, classifier="cosine")
    assert isinstance(cosine.get_layer("classifier"), models.CosineClassifier)


def test_auto_model_and_augmentation():
    config = config_lib.Config(dataset="tiny_imagenet", model_dir="/tmp/x", data_dir="/data")
    assert config.resolved_model == "resnet18" and config.resolved_augmentation == "crop_flip"
    assert set(catalog.MODEL_NAMES) == set(models.MODEL_NAMES)


def test_cli_long_tailed_run(cli, tiny_root, tmp_path):
    root, _ = tiny_root
    model_dir = str(tmp_path / "run")
    result = cli(
        "--dataset=tiny_imagenet",
        f"--data_dir={root}",
        "--imbalance=exp",
        "--imbalance_ratio=3",
        "--model=resnet18",
        "--epochs=1",
        "--batch_size=4",
        "--eval_every=1",
        "--checkpoint_every=1",
        f"--model_dir={model_dir}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "top-1" in result.stdout
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    assert results["class_counts"] == [6, 3, 2]
    assert results["class_names"] == ["tabby", "goldfish", "bee"]
    assert results["num_test_images"] == 6 and "nc_tau" in results["post_hoc"]
    with open(os.path.join(model_dir, "subset.json")) as f:
        subset = json.load(f)
    assert len(subset["ids"]) == 11 and all(i.startswith("train") for i in subset["ids"])


@pytest.mark.parametrize("method, loss", [("ce", "ce"), ("cdt", "cdt")])
def test_flagfiles_hold_the_table_4_recipe(method, loss):
    path = os.path.join(REPO_ROOT, "flags", f"tiny_imagenet_lt100_{method}.cfg")
    with open(path) as f:
        assert "Paper, Table 4:" in f.read()
    config = flagfile_config(path, "--data_dir=/data")
    assert (config.dataset, config.imbalance, config.imbalance_ratio, config.loss) == (
        "tiny_imagenet",
        "exp",
        100,
        loss,
    )
    assert (config.resolved_model, config.epochs, config.batch_size, config.learning_rate) == (
        "resnet18",
        400,
        128,
        0.1,
    )
    assert config.decay_epochs == (250, 320, 380) and config.decay_multipliers == (0.1, 0.01, 0.001)
