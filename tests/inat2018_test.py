"""iNaturalist 2018: the JSON reader on a fixture in the competition's format, the TFDS source (mocked),
the file pipelines (random-resized crop, eval crop), ResNet-50 and the CLI."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from cdt_tf import config as config_lib
from cdt_tf import datasets, input_pipeline, models
from cdt_tf.datasets import load_source
from cdt_tf.errors import DataError
from conftest import REPO_ROOT, flagfile_config, run_module

# (category id, species, supercategory), not in id order, ids not contiguous: indices follow sorted ids.
CATEGORIES = (
    (7, "Quercus robur", "Plantae"),
    (3, "Danaus plexippus", "Insecta"),
    (12, "Larus argentatus", "Aves"),
)
SORTED_IDS = [3, 7, 12]
TRAIN_PER_CATEGORY = {7: 4, 3: 4, 12: 3}
VAL_PER_CATEGORY = 2
SIZES = ((40, 56), (48, 32), (33, 33))  # iNat images are not square.


def _write_image(path: str, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_jpeg(image, quality=100))


def write_inat(root: str) -> dict:
    """Writes train2018.json, val2018.json and train_val2018/<super>/<id>/<n>.jpg; returns {file_name: id}.

    COCO-style as released: images [{id, file_name, width, height, license, rights_holder}],
    annotations [{id, image_id, category_id}], categories [{id, name, supercategory}]. The first
    validation image of category 12 is greyscale.
    """
    category_of = {}
    image_id = 0
    for split, per_category in (("train2018", TRAIN_PER_CATEGORY), ("val2018", None)):
        images, annotations = [], []
        for category_id, _, supercategory in CATEGORIES:
            for i in range(per_category[category_id] if per_category else VAL_PER_CATEGORY):
                height, width = SIZES[(image_id + category_id) % len(SIZES)]
                file_name = f"train_val2018/{supercategory}/{category_id}/{split}_{image_id}.jpg"
                if split == "val2018" and category_id == 12 and i == 0:
                    image = np.full((height, width, 1), 120, np.uint8)
                else:
                    image = np.zeros((height, width, 3), np.uint8) + np.array(
                        [20 * i, category_id * 20, 90], np.uint8
                    )
                _write_image(os.path.join(root, file_name), image)
                images.append(
                    {"id": image_id, "file_name": file_name, "width": width, "height": height, "license": 1}
                )
                annotations.append({"id": 1000 + image_id, "image_id": image_id, "category_id": category_id})
                category_of[file_name] = category_id
                image_id += 1
        categories = [{"id": c, "name": str(c), "supercategory": s} for c, _, s in CATEGORIES]
        with open(os.path.join(root, f"{split}.json"), "w") as f:
            json.dump(
                {
                    "info": {"year": 2018},
                    "images": images,
                    "annotations": annotations,
                    "categories": categories,
                },
                f,
            )
    return category_of


@pytest.fixture(scope="module")
def inat_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("inat2018"))
    return root, write_inat(root)


# ----------------------------------------------------------------------------- the JSON reader


def test_json_reader_maps_sorted_category_ids_to_indices(inat_root):
    root, category_of = inat_root
    source = load_source("inat2018", root)
    assert isinstance(source, datasets.FileSource) and source.name == "inat2018"
    assert source.category_ids == SORTED_IDS and source.num_classes == 3
    assert source.class_names == ["3", "7", "12"]  # train2018.json's names (no categories.json)
    assert source.classes() == [
        {"index": 0, "category_id": 3, "name": "3"},
        {"index": 1, "category_id": 7, "name": "7"},
        {"index": 2, "category_id": 12, "name": "12"},
    ]
    assert source.image_size == 224
    assert source.mean == datasets.IMAGENET_MEAN and source.std == datasets.IMAGENET_STD
    for split, count in ((source.train, 11), (source.test, 6)):
        assert len(split.labels) == count and split.labels.dtype == np.int64
        for file_name, label, path in zip(split.ids, split.labels, split.paths, strict=True):
            assert SORTED_IDS[label] == category_of[file_name]
            assert path == os.path.join(root, file_name) and os.path.isfile(path)
    assert np.bincount(source.train.labels).tolist() == [4, 4, 3]
    with pytest.raises(DataError, match="never decoded into memory"):
        source.train.images()
    assert load_source("inat2018", root, image_size=96).image_size == 96


def test_categories_json_gives_species_names(tmp_path):
    root = str(tmp_path)
    write_inat(root)
    with open(os.path.join(root, "categories.json"), "w") as f:
        json.dump([{"id": c, "name": name, "kingdom": "x"} for c, name, _ in CATEGORIES], f)
    assert load_source("inat2018", root).class_names == [
        "Danaus plexippus",
        "Quercus robur",
        "Larus argentatus",
    ]


def test_records_follow_the_ids(inat_root):
    root, _ = inat_root
    split = load_source("inat2018", root).train
    records = list(split.records([1, 5, 9]).as_numpy_iterator())
    assert [label for _, label in records] == split.labels[[1, 5, 9]].tolist()
    with open(split.paths[5], "rb") as f:
        assert records[1][0] == f.read()
    with pytest.raises(ValueError, match="increasing"):
        split.records([3, 1])


def _edit_json(root, name, edit):
    path = os.path.join(root, name)
    with open(path) as f:
        value = json.load(f)
    edit(value)
    with open(path, "w") as f:
        json.dump(value, f)


def _set(value, *keys_and_new):
    *keys, new = keys_and_new
    for key in keys[:-1]:
        value = value[key]
    value[keys[-1]] = new


@pytest.mark.parametrize(
    "break_it, fragments",
    [
        (
            lambda root: os.remove(os.path.join(root, "val2018.json")),
            ["val2018.json is missing", "--data_dir"],
        ),
        (
            lambda root: _edit_json(
                root, "val2018.json", lambda v: _set(v, "annotations", 2, "category_id", 99)
            ),
            ["category_id 99", "val2018.json", "train2018.json's categories"],
        ),
        (
            lambda root: _edit_json(root, "train2018.json", lambda v: v["annotations"].pop(3)),
            ["has no annotation", "train2018.json"],
        ),
        (
            lambda root: _edit_json(root, "train2018.json", lambda v: v.pop("categories")),
            ["'categories'", "train2018.json"],
        ),
        (
            lambda root: _edit_json(
                root, "train2018.json", lambda v: _set(v, "images", 0, "file_name", "x/y.jpg")
            ),
            ["x/y.jpg", "does not exist", "relative"],
        ),
        (
            lambda root: open(os.path.join(root, "val2018.json"), "w").write("{not json"),
            ["cannot read", "val2018.json"],
        ),
    ],
)
def test_broken_files_raise_one_clear_error(tmp_path, break_it, fragments):
    root = str(tmp_path)
    write_inat(root)
    break_it(root)
    with pytest.raises(DataError) as error:
        load_source("inat2018", root)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def _train_files(root):
    with open(os.path.join(root, "train2018.json")) as f:
        return [image["file_name"] for image in json.load(f)["images"]]


def _val_files(root):
    with open(os.path.join(root, "val2018.json")) as f:
        return [image["file_name"] for image in json.load(f)["images"]]


def test_every_missing_file_is_counted_before_training(tmp_path):
    root = str(tmp_path)
    write_inat(root)
    train_files, val_files = _train_files(root), _val_files(root)
    gone = train_files[3:10] + val_files[-1:]  # Not the first: every listed file is checked.
    for file_name in gone:
        os.remove(os.path.join(root, file_name))
    with pytest.raises(DataError) as error:
        load_source("inat2018", root)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("8 image files listed in train2018.json (7 of 11) and val2018.json (1 of 6) ")
    assert "do not exist" in message and root in message and "relative to --data_dir" in message
    assert ", ".join(gone[:5]) + " (and 3 more)" in message
    assert gone[5] not in message


def _break(path, contents: bytes) -> None:
    with open(path, "wb") as f:
        f.write(contents)


def test_unreadable_images_are_one_error_naming_them(tmp_path):
    root = str(tmp_path)
    write_inat(root)
    train_files, val_files = _train_files(root), _val_files(root)
    _break(os.path.join(root, train_files[2]), b"")
    _break(os.path.join(root, train_files[6]), b"<html>404 Not Found</html>")
    _break(os.path.join(root, val_files[0]), os.urandom(300))
    with pytest.raises(DataError) as error:
        load_source("inat2018", root)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("3 image files listed in train2018.json (2 of 11) and val2018.json (1 of 6) ")
    assert "not readable as images" in message and "--bad_images=skip" in message
    assert (
        f"{train_files[2]} (empty), {train_files[6]} (not an image), {val_files[0]} (not an image)" in message
    )
    with pytest.raises(DataError, match="3 image files"):
        load_source("inat2018", root, bad_images="error")
    with pytest.raises(DataError, match="unknown --bad_images=ignore"):
        load_source("inat2018", root, bad_images="ignore")


def test_skip_leaves_unreadable_images_out_and_lists_them(tmp_path, caplog):
    root = str(tmp_path)
    write_inat(root)
    complete = load_source("inat2018", root)
    assert complete.skipped_images == {}
    train_files, val_files = _train_files(root), _val_files(root)
    bad_train, bad_val = [train_files[2], train_files[6]], [val_files[0]]
    _break(os.path.join(root, bad_train[0]), b"")
    _break(os.path.join(root, bad_train[1]), b"GIF8")  # Too short for GIF's signature.
    _break(os.path.join(root, bad_val[0]), b"\x00" * 64)
    with caplog.at_level("WARNING"):
        source = load_source("inat2018", root, bad_images="skip")
    assert source.skipped_images == {"train": bad_train, "test": bad_val}
    kept = [i for i, f in enumerate(train_files) if f not in bad_train]
    assert source.train.ids.tolist() == [train_files[i] for i in kept]
    np.testing.assert_array_equal(source.train.labels, complete.train.labels[kept])
    assert source.train.paths.tolist() == [os.path.join(root, train_files[i]) for i in kept]
    assert source.test.ids.tolist() == val_files[1:] and len(source.test.labels) == 5
    warnings = [r.getMessage() for r in caplog.records if "--bad_images=skip" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert "3 image files" in warnings[0] and "train2018.json (2 of 11)" in warnings[0]
    assert f"{bad_train[0]} (empty)" in warnings[0] and f"{bad_val[0]} (not an image)" in warnings[0]
    # Missing files are an error with either policy.
    os.remove(os.path.join(root, train_files[0]))
    with pytest.raises(DataError, match="1 image file listed in train2018.json \\(1 of 11\\) does not exist"):
        load_source("inat2018", root, bad_images="skip")


def test_image_file_problem_reads_the_first_bytes(tmp_path):
    image = np.zeros((4, 4, 3), np.uint8)
    contents = {
        "a.jpg": tf.io.encode_jpeg(image).numpy(),
        "a.png": tf.io.encode_png(image).numpy(),
        "a.gif": b"GIF89a" + bytes(20),
        "a.bmp": b"BM" + bytes(60),
        "a.webp": b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(10),
        "empty.jpg": b"",
        "text.jpg": b"not an image",
        "riff.jpg": b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(10),
    }
    for name, data in contents.items():
        _break(str(tmp_path / name), data)
    os.makedirs(tmp_path / "folder.jpg")
    problems = {name: datasets.image_file_problem(str(tmp_path / name)) for name in contents}
    assert problems == {
        **{f"a.{ext}": "" for ext in ("jpg", "png", "gif", "bmp", "webp")},
        "empty.jpg": "empty",
        "text.jpg": "not an image",
        "riff.jpg": "not an image",
    }
    assert datasets.image_file_problem(str(tmp_path / "nope.jpg")) == datasets.MISSING
    assert datasets.image_file_problem(str(tmp_path / "a.jpg" / "x.jpg")) == datasets.MISSING
    assert datasets.image_file_problem(str(tmp_path / "folder.jpg")).startswith("unreadable")
    # The threaded check keeps the order (more paths than one chunk).
    paths = [str(tmp_path / name) for name in ("a.jpg", "empty.jpg", "nope.jpg")] * 3000
    assert datasets.check_image_files(paths) == ["", "empty", datasets.MISSING] * 3000


def test_a_missing_data_dir_is_named(tmp_path):
    with pytest.raises(DataError) as error:
        load_source("inat2018", str(tmp_path / "nope"))
    message = str(error.value)
    assert f"--data_dir {tmp_path / 'nope'} does not exist" in message and "train2018.json" in message
    assert not os.path.exists(tmp_path / "nope")


def test_without_json_or_tfds_data_the_error_names_both(tmp_path):
    with pytest.raises(DataError) as error:
        load_source("inat2018", str(tmp_path))
    message = str(error.value)
    assert "train2018.json" in message and "i_naturalist2018" in message and str(tmp_path) in message


# ----------------------------------------------------------------------------- TFDS (mocked)


def test_tfds_source_streams_records(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    metadata_dir = str(tmp_path / "tfds")
    # Split sizes in dataset_info.json, written offline from the builder's code (as datasets_test does).
    builder = tfds.builder("i_naturalist2018", data_dir=metadata_dir)
    builder.info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(name=name, shard_lengths=[count], num_bytes=0)
                for name, count in (("train", 6), ("validation", 6), ("test", 2))
            ]
        )
    )
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    with tfds.testing.mock_data(num_examples=6, data_dir=metadata_dir):
        source = load_source("inat2018", None)
        assert isinstance(source, datasets.FileSource) and source.origin == "tfds:i_naturalist2018"
        assert source.num_classes == 8142 and source.category_ids == list(range(8142))
        assert source.class_names[0] == builder.info.features["label"].names[0]
        for split in (source.train, source.test):
            assert split.paths is None and len(split.labels) == 6 and split.labels.dtype == np.int64
            assert ((split.labels >= 0) & (split.labels < 8142)).all()
        assert source.train.ids[0].startswith("train:") and source.test.ids[0].startswith("validation:")
        # (The mock draws new random examples per read, so labels are not compared across reads.)
        images, labels = next(iter(input_pipeline.build_record_eval_dataset(source.test.records(), 6, 32)))
        assert images.shape == (6, 32, 32, 3) and images.dtype == tf.uint8 and labels.dtype == tf.int64
        subset = source.train.records([0, 2, 5])
        train = input_pipeline.build_record_train_dataset(subset, 3, seed=0, image_size=24)
        batches = list(train)
        assert len(batches) == 1 and batches[0][0].shape == (3, 24, 24, 3)


# ----------------------------------------------------------------------------- the pipelines


def _encoded(image: np.ndarray, kind: str = "jpeg") -> tf.Tensor:
    return tf.io.encode_jpeg(image, quality=100) if kind == "jpeg" else tf.io.encode_png(image)


def test_crop_window_area_and_aspect_ratio():
    areas, ratios = [], []
    for s in range(300):
        offset, size = input_pipeline.sample_crop_window([90, 120, 3], tf.constant([s, 7]))
        (y, x), (h, w) = offset.numpy(), size.numpy()
        assert 0 <= y and 0 <= x and y + h <= 90 and x + w <= 120
        areas.append(h * w / (90 * 120))
        ratios.append(w / h)
    areas, ratios = np.array(areas), np.array(ratios)
    assert areas.min() >= 0.08 - 0.01 and areas.max() <= 1.0
    assert areas.min() < 0.2 and areas.max() > 0.8  # The range is used.
    cropped = areas < 1.0  # The whole image is the fallback, at its own ratio.
    assert ratios[cropped].min() >= 0.75 - 0.05 and ratios[cropped].max() <= 4 / 3 + 0.05
    again = input_pipeline.sample_crop_window([90, 120, 3], tf.constant([5, 7]))
    np.testing.assert_array_equal(
        again[1], input_pipeline.sample_crop_window([90, 120, 3], tf.constant([5, 7]))[1]
    )


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_random_resized_crop_flip_is_stateless_eager_and_in_map(kind):
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3)).astype(np.uint8)
    encoded = _encoded(image, kind)
    seed = tf.constant([3, 4], tf.int64)
    eager = input_pipeline.random_resized_crop_flip(encoded, seed, 32)
    assert eager.shape == (32, 32, 3) and eager.dtype == tf.uint8
    mapped = next(
        iter(
            tf.data.Dataset.from_tensors((encoded, seed)).map(
                lambda e, s: input_pipeline.random_resized_crop_flip(e, s, 32)
            )
        )
    )
    np.testing.assert_array_equal(eager, mapped)
    other = input_pipeline.random_resized_crop_flip(encoded, tf.constant([3, 5], tf.int64), 32)
    assert not np.array_equal(eager, other)


def test_resize_center_crop_keeps_the_centre_and_makes_greyscale_rgb():
    # Three horizontal bands of a tall image: the centre crop of the resized image is the middle band.
    image = np.zeros((120, 40, 3), np.uint8)
    image[:40], image[40:80], image[80:] = (250, 0, 0), (0, 250, 0), (0, 0, 250)
    crop = input_pipeline.resize_center_crop(_encoded(image, "png"), 20).numpy()  # 40x120 -> 23x69, crop 20
    assert crop.shape == (20, 20, 3) and crop.dtype == np.uint8
    np.testing.assert_allclose(crop.reshape(-1, 3).mean(0), (0, 250, 0), atol=2)
    grey = input_pipeline.resize_center_crop(_encoded(np.full((30, 50, 1), 77, np.uint8)), 16).numpy()
    assert grey.shape == (16, 16, 3)
    np.testing.assert_allclose(grey, 77, atol=2)
    with pytest.raises(ValueError, match="smaller than the crop"):
        input_pipeline.resize_center_crop(_encoded(image, "png"), 20, resize_size=10)


def test_file_train_pipeline_shapes_and_determinism(inat_root):
    root, _ = inat_root
    split = load_source("inat2018", root).train

    def first_epoch(seed, **kwargs):
        dataset = input_pipeline.build_file_train_dataset(split.paths, split.labels, 4, seed, 32, **kwargs)
        return [(x.numpy(), y.numpy()) for x, y in dataset]

    epoch = first_epoch(0)
    assert len(epoch) == 2  # 11 images, batches of 4: the partial batch is dropped.
    for images, labels in epoch:
        assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    for (a, la), (b, lb) in zip(epoch, first_epoch(0), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(epoch[0][0], first_epoch(1)[0][0])
    labels = np.concatenate([labels for _, labels in epoch])
    assert len(set(labels.tolist())) > 1 and set(labels.tolist()) <= {0, 1, 2}
    # Without augmentation: the evaluation crop, shuffled. The class-balanced stream is endless.
    assert first_epoch(0, augmentation="none")[0][0].shape == (4, 32, 32, 3)
    balanced = input_pipeline.build_file_train_dataset(
        split.paths, split.labels, 4, 0, 32, sampler="class_balanced"
    )
    assert next(iter(balanced.take(3)))[0].shape == (4, 32, 32, 3)
    with pytest.raises(DataError, match="fewer than one batch"):
        input_pipeline.build_file_train_dataset(split.paths, split.labels, 64, 0, 32)


def _truncated_copy(source_path: str, path: str) -> None:
    """A JPEG cut in half: its first bytes pass the load-time check, its decoding fails."""
    with open(source_path, "rb") as f:
        data = f.read()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"augmentation": "none"}, {"sampler": "class_balanced"}],
    ids=["crop_flip", "none", "balanced"],
)
def test_file_train_pipeline_drops_an_image_that_fails_to_decode(inat_root, tmp_path, kwargs):
    root, _ = inat_root
    split = load_source("inat2018", root).train
    truncated = str(tmp_path / "truncated.jpg")
    _truncated_copy(split.paths[0], truncated)
    assert datasets.image_file_problem(truncated) == ""
    with pytest.raises(tf.errors.InvalidArgumentError):
        input_pipeline.random_resized_crop_flip(tf.io.read_file(truncated), tf.constant([1, 2]), 32)
    paths = np.array([truncated] + split.paths[1:].tolist())  # 11 files, the first one truncated.
    dataset = input_pipeline.build_file_train_dataset(paths, split.labels, 5, 0, 32, **kwargs)
    if kwargs.get("sampler") == "class_balanced":
        batches = list(dataset.take(6))  # Endless; draws the truncated file (1 of 4 in its class) too.
        assert len(batches) == 6
    else:
        batches = list(dataset)
        assert len(batches) == 2  # 10 decodable images: two full batches.
    assert all(images.shape == (5, 32, 32, 3) for images, _ in batches)


def test_record_train_pipeline_drops_a_record_that_fails_to_decode(inat_root):
    root, _ = inat_root
    split = load_source("inat2018", root).train
    encoded = [tf.io.read_file(p).numpy() for p in split.paths]
    encoded[4] = encoded[4][: len(encoded[4]) // 2]
    records = tf.data.Dataset.from_tensor_slices((encoded, split.labels))
    batches = list(input_pipeline.build_record_train_dataset(records, 5, 0, 32, shuffle_buffer=11))
    assert len(batches) == 2 and batches[0][0].shape == (5, 32, 32, 3)


def test_file_eval_pipeline_keeps_order_and_every_image(inat_root):
    root, _ = inat_root
    test = load_source("inat2018", root).test
    batches = list(input_pipeline.build_file_eval_dataset(test.paths, test.labels, 4, 24))
    assert [x.shape[0] for x, _ in batches] == [4, 2]
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), test.labels)
    images = np.concatenate([x for x, _ in batches])
    grey = images[test.ids.tolist().index(next(i for i in test.ids if "/12/" in i))]
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])  # The greyscale JPEG, as RGB.


# ----------------------------------------------------------------------------- ResNet-50, config, CLI


def test_resnet50():
    model = models.build_model("resnet50", 1000, (64, 64, 3), datasets.IMAGENET_MEAN, datasets.IMAGENET_STD)
    assert model.name == "resnet50"
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 25_557_032  # torchvision's
    assert model.get_layer("stem_conv").kernel_size == (7, 7)
    assert model.get_layer("stage2_block1_1_conv").strides == (1, 1)  # v1.5: the stride on the 3x3.
    assert model.get_layer("stage2_block1_2_conv").strides == (2, 2)
    np.testing.assert_array_equal(model.get_layer("stage1_block1_3_bn").gamma.numpy(), 0.0)
    assert model.get_layer("classifier").input.shape[-1] == 2048
    logits = model(np.zeros((1, 64, 64, 3), np.uint8), training=False)
    assert logits.shape == (1, 1000) and logits.dtype == "float32"


def test_auto_model_and_augmentation():
    config = config_lib.Config(dataset="inat2018", model_dir="/tmp/x")
    assert config.resolved_model == "resnet50" and config.resolved_augmentation == "crop_flip"


def test_cli_run_records_the_class_mapping(cli, inat_root, tmp_path):
    root, _ = inat_root
    model_dir = str(tmp_path / "run")
    result = cli(
        "--dataset=inat2018",
        f"--data_dir={root}",
        "--model=resnet20",  # Small and fast; resnet50 is built in test_resnet50.
        "--image_size=32",
        "--epochs=1",
        "--batch_size=4",
        "--holdout_per_class=1",
        "--stats_every=1",
        "--eval_every=1",
        "--checkpoint_every=1",
        f"--model_dir={model_dir}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "top-1" in result.stdout
    # The Fig. 7 statistics work on file-based runs too (one feature pass over tf.data pipelines).
    assert os.listdir(os.path.join(model_dir, "logs", "stats"))
    with open(os.path.join(model_dir, "classes.json")) as f:
        classes = json.load(f)
    assert [c["category_id"] for c in classes["classes"]] == SORTED_IDS
    assert [c["index"] for c in classes["classes"]] == [0, 1, 2]
    with open(os.path.join(model_dir, "subset.json")) as f:
        subset = json.load(f)
    assert subset["ids"] is None and subset["class_counts"] == [3, 3, 2] and subset["num_images"] == 8
    assert subset["holdout_hash"] and subset["holdout_ids"] is None
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    assert results["num_train_images"] == 8 and results["num_test_images"] == 6
    assert results["post_hoc"]["nc_tau"]["selected_on"] == "holdout"
    assert len(results["per_class_accuracy"]) == 3

    # Every report works on a run whose images are read from files.
    for module, args in (
        ("cdt_tf.post_hoc", ()),
        ("cdt_tf.analyze", ("--num_rounds=5", "--tsne_per_class=2")),
        ("cdt_tf.retrain_classifier", ("--epochs=1",)),
    ):
        ran = run_module(module, f"--model_dir={model_dir}", *args)
        assert ran.returncode == 0, f"{module}: {ran.stderr[-2000:]}"
    with open(os.path.join(model_dir, "results.json")) as f:
        assert "crt" in json.load(f)["post_hoc"]
    assert os.path.exists(os.path.join(model_dir, "analysis", "analysis.json"))


def test_bad_images_flag():
    values = flags.FlagValues()
    config_lib.define_flags(values)
    values(["prog", "--dataset=inat2018", "--model_dir=/tmp/x"])
    assert config_lib.Config.from_flags(values).bad_images == "error"
    values = flags.FlagValues()
    config_lib.define_flags(values)
    values(["prog", "--dataset=inat2018", "--model_dir=/tmp/x", "--bad_images=skip"])
    assert config_lib.Config.from_flags(values).bad_images == "skip"
    with pytest.raises(flags.IllegalFlagValueError):
        values["bad_images"].parse("ignore")


def test_cli_stops_on_bad_files_before_training(cli, tmp_path):
    root = str(tmp_path / "inat")
    os.makedirs(root)
    write_inat(root)
    train_files = _train_files(root)
    os.remove(os.path.join(root, train_files[4]))
    _break(os.path.join(root, train_files[7]), b"garbage")
    args = ("--dataset=inat2018", f"--data_dir={root}", "--model=resnet20", "--image_size=32", "--epochs=1")
    result = cli(*args, f"--model_dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("cdt_tf: error:")]
    assert len(errors) == 1 and "1 image file listed in train2018.json (1 of 11) does not exist" in errors[0]
    assert train_files[4] in errors[0] and "Epoch" not in result.stdout
    with open(os.path.join(root, train_files[4]), "wb") as f:
        f.write(b"")
    result = cli(*args, f"--model_dir={tmp_path / 'run2'}")
    errors = [line for line in result.stderr.splitlines() if line.startswith("cdt_tf: error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert (
        "2 image files listed in train2018.json (2 of 11)" in errors[0] and "--bad_images=skip" in errors[0]
    )
    assert f"{train_files[4]} (empty), {train_files[7]} (not an image)" in errors[0]


@pytest.mark.parametrize("method", ["ce", "cdt"])
def test_flagfiles_hold_the_table_3_recipe(method):
    path = os.path.join(REPO_ROOT, "flags", f"inat2018_{method}.cfg")
    with open(path) as f:
        assert "Paper, Table 3:" in f.read()
    config = flagfile_config(path)
    assert (config.dataset, config.imbalance, config.resolved_model, config.loss) == (
        "inat2018",
        "none",
        "resnet50",
        method,
    )
    assert (config.epochs, config.batch_size, config.learning_rate, config.warmup_epochs) == (90, 512, 0.2, 5)
    assert config.decay_epochs == (30, 60, 80) and config.decay_multipliers == (0.1, 0.01, 0.001)
    if method == "cdt":
        assert (config.gamma_schedule, config.gamma_epoch) == ("step", 45) and config.gamma > 0


def test_an_undecodable_test_image_stops_in_one_line_and_keeps_the_training(cli, inat_root, tmp_path):
    root = str(tmp_path / "inat")
    shutil.copytree(inat_root[0], root)
    source = load_source("inat2018", root)
    victim = source.test.paths[0]
    original = open(victim, "rb").read()
    _truncated_copy(victim, victim)  # Passes the header check, fails to decode.
    model_dir = str(tmp_path / "run")
    args = (
        "--dataset=inat2018",
        f"--data_dir={root}",
        "--model=resnet20",
        "--image_size=32",
        "--epochs=1",
        "--batch_size=4",
        "--eval_every=1",
        f"--model_dir={model_dir}",
    )
    result = cli(*args)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    # The pass that stopped (the test evaluation, not training) and the file, by its id.
    assert last.startswith(
        "cdt_tf: error: evaluating the test split after epoch 1 stopped on unreadable"
    ), last
    assert f"unreadable: {source.test.ids[0]}" in last and "--bad_images=skip" in last
    assert "run the same command again" in last and "Traceback" not in result.stderr
    assert os.path.exists(os.path.join(model_dir, "backup", "training_metadata.json"))  # The epoch is kept.

    skip_dir = str(tmp_path / "skip")  # The same file, left out of the test split instead.
    skipped = cli(*args[:-1], f"--model_dir={skip_dir}", "--bad_images=skip")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    with open(os.path.join(skip_dir, "results.json")) as f:
        results = json.load(f)
    assert results["skipped_images"]["test"]["ids"] == [source.test.ids[0]]
    assert results["num_test_images"] == len(source.test.ids) - 1

    with open(victim, "wb") as f:
        f.write(original)
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Resuming from epoch 2" in again.stdout and "Epoch 1/1" not in again.stdout
    assert os.path.exists(os.path.join(model_dir, "results.json"))
