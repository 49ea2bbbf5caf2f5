"""RandAugment, Cutout, MixUp/CutMix (cdt_tf.augment): eagerly and in Dataset.map, seeded, and in training."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from cdt_tf import augment, objective, train
from cdt_tf.config import Config
from cdt_tf.errors import UserError

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(1, 256, (32, 32, 3)).astype(
    np.uint8
)  # No zero pixel: erased pixels are exactly the zeros.
SEED = tf.constant([3, 7], tf.int64)


def _seeds(count, start=0):
    return [tf.constant([start + i, 11], tf.int64) for i in range(count)]


def _map(function, images, seeds):
    """function(image, seed) over a Dataset of (image, seed) pairs, with parallel calls."""
    dataset = tf.data.Dataset.from_tensor_slices((np.stack(images), tf.stack(seeds)))
    return [x.numpy() for x in dataset.map(function, num_parallel_calls=4)]


# ----------------------------------------------------------------------------- Cutout


def _zero_box(image):
    """(rows, cols) of the zeroed pixels' bounding box; asserts they fill it (a rectangle, all channels)."""
    zero = (image == 0).all(-1)
    assert ((image == 0).any(-1) == zero).all()
    rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
    assert zero.sum() == len(rows) * len(cols) and np.ptp(rows) + 1 == len(rows)
    assert np.ptp(cols) + 1 == len(cols)
    return rows, cols


@pytest.mark.parametrize("side", [16, 5])
def test_cutout_zeros_a_side_by_side_square_clipped_at_borders(side):
    clipped = inside = 0
    for seed in _seeds(60):
        out = augment.cutout(tf.constant(IMAGE), seed, side).numpy()
        assert out.shape == IMAGE.shape and out.dtype == np.uint8
        rows, cols = _zero_box(out)
        np.testing.assert_array_equal(out[(out != 0).all(-1)], IMAGE[(out != 0).all(-1)])  # The rest is kept.
        for kept, size in ((rows, 32), (cols, 32)):
            touches = kept[0] == 0 or kept[-1] == size - 1
            assert len(kept) == side or (touches and 0 < len(kept) < side)
        if len(rows) == side and len(cols) == side:
            inside += 1
        else:
            clipped += 1
    assert inside > 0 and clipped > 0  # Both cases were seen.


def test_cutout_is_seeded_and_the_same_inside_dataset_map():
    seeds = _seeds(8)
    eager = [augment.cutout(tf.constant(IMAGE), s, 16).numpy() for s in seeds]
    mapped = _map(lambda image, s: augment.cutout(image, s, 16), [IMAGE] * 8, seeds)
    for a, b in zip(eager, mapped):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(eager[0], eager[1])  # Another seed, another square.


def test_cutout_larger_than_the_image_erases_it():
    assert (augment.cutout(tf.constant(IMAGE[:8, :8]), SEED, 32).numpy() == 0).all()


# ----------------------------------------------------------------------------- RandAugment


@pytest.fixture(scope="module")
def rand_augment_layer():
    return augment.build_rand_augment(0.5, num_ops=2)


def test_rand_augment_keeps_shape_and_dtype_and_changes_the_image(rand_augment_layer):
    outs = [augment.rand_augment(tf.constant(IMAGE), s, rand_augment_layer).numpy() for s in _seeds(6)]
    for out in outs:
        assert out.shape == IMAGE.shape and out.dtype == np.uint8
    assert sum(not np.array_equal(out, IMAGE) for out in outs) >= 5
    assert len({out.tobytes() for out in outs}) >= 5  # Each seed picks its own ops and strengths.


def test_rand_augment_is_seeded_per_image_eagerly_and_inside_dataset_map(rand_augment_layer):
    seeds = _seeds(6, start=100)
    eager = [augment.rand_augment(tf.constant(IMAGE), s, rand_augment_layer).numpy() for s in seeds]
    again = [augment.rand_augment(tf.constant(IMAGE), s, rand_augment_layer).numpy() for s in seeds]
    mapped = _map(lambda image, s: augment.rand_augment(image, s, rand_augment_layer), [IMAGE] * 6, seeds)
    for a, b, c in zip(eager, again, mapped):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)  # Parallel map calls give each image its own seed's result.


def test_rand_augment_layer_refuses_a_call_without_a_seed(rand_augment_layer):
    with pytest.raises(RuntimeError, match="augment"):
        rand_augment_layer(tf.cast(IMAGE, tf.float32), training=True)


@pytest.mark.parametrize("arguments", [(0.0, 2), (1.5, 2), (0.5, 0)])
def test_rand_augment_bad_arguments_raise(arguments):
    with pytest.raises(ValueError):
        augment.build_rand_augment(*arguments)


# ----------------------------------------------------------------------------- MixUp / CutMix

NUM_CLASSES = 6
# Image i is constant, with value VALUES[i] (label i): the mean of a mixed image is then sum_c q_c VALUES[c].
VALUES = np.array([10.0, 50.0, 90.0, 130.0, 170.0, 210.0], np.float32)
BATCH_IMAGES = np.broadcast_to(VALUES[:, None, None, None], (NUM_CLASSES, 16, 16, 3)).astype(np.uint8)
BATCH_LABELS = np.arange(NUM_CLASSES, dtype=np.int64)


def _mix(seed, **kwargs):
    images, targets = augment.mix_batch(BATCH_IMAGES, BATCH_LABELS, seed, NUM_CLASSES, **kwargs)
    return images.numpy(), targets.numpy()


def _is_cutmix(images):
    """CutMix copies pixels (each pixel one of the batch's values); MixUp blends them (other values)."""
    return bool(np.isin(images, VALUES).all())


@pytest.mark.parametrize("method", ["mixup_alpha", "cutmix_alpha"])
def test_mixed_images_and_labels_agree(method):
    for seed in _seeds(10):
        images, targets = _mix(seed, **{method: 1.0})
        assert images.dtype == np.float32 and images.shape == BATCH_IMAGES.shape
        assert targets.dtype == np.float32 and targets.shape == (NUM_CLASSES, NUM_CLASSES)
        np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
        assert ((targets > 0).sum(1) <= 2).all()  # Each image mixes with one partner.
        np.testing.assert_allclose(images.mean((1, 2, 3)), targets @ VALUES, rtol=1e-5)
        assert _is_cutmix(images) == (method == "cutmix_alpha")


def test_one_lam_per_batch():
    for seed in _seeds(5):
        _, targets = _mix(seed, mixup_alpha=0.4)
        own = targets[np.arange(NUM_CLASSES), BATCH_LABELS]
        mixed = own[own < 1]  # Images paired with themselves keep their label.
        np.testing.assert_allclose(mixed, mixed[0] if len(mixed) else mixed, rtol=1e-6)


def test_both_methods_pick_one_per_batch_half_the_time():
    kinds = [_is_cutmix(_mix(seed, mixup_alpha=1.0, cutmix_alpha=1.0)[0]) for seed in _seeds(60)]
    assert 15 <= sum(kinds) <= 45


def test_mix_prob_leaves_batches_unmixed_with_one_hot_labels():
    images, targets = _mix(SEED, mixup_alpha=1.0, mix_prob=0.0)
    np.testing.assert_array_equal(images, BATCH_IMAGES.astype(np.float32))
    np.testing.assert_array_equal(targets, np.eye(NUM_CLASSES, dtype=np.float32))
    mixed = [not np.array_equal(_mix(s, cutmix_alpha=1.0, mix_prob=0.5)[1], np.eye(6)) for s in _seeds(60)]
    assert 15 <= sum(mixed) <= 45


def test_mix_batch_is_seeded_and_the_same_inside_dataset_map():
    seeds = _seeds(4)
    eager = [_mix(s, mixup_alpha=0.5, cutmix_alpha=0.5) for s in seeds]
    dataset = tf.data.Dataset.from_tensors((BATCH_IMAGES, BATCH_LABELS)).repeat(4)
    dataset = tf.data.Dataset.zip((dataset, tf.data.Dataset.from_tensor_slices(tf.stack(seeds))))
    mapped = dataset.map(
        lambda batch, s: augment.mix_batch(batch[0], batch[1], s, NUM_CLASSES, 0.5, 0.5), num_parallel_calls=4
    )
    for (images, targets), (m_images, m_targets) in zip(eager, mapped):
        np.testing.assert_array_equal(images, m_images.numpy())
        np.testing.assert_array_equal(targets, m_targets.numpy())
    assert not np.array_equal(eager[0][1], eager[1][1])


def test_sample_beta_is_in_range_and_follows_alpha():
    draws = np.array([augment.sample_beta(0.2, s).numpy() for s in _seeds(200)])
    assert ((draws >= 0) & (draws <= 1)).all()
    assert np.mean((draws < 0.1) | (draws > 0.9)) > 0.5  # Beta(0.2, 0.2) piles up near 0 and 1.


def test_cutmix_box_follows_the_reference_rand_bbox():
    top, bottom, left, right = (int(v) for v in augment.cutmix_box(32, 32, tf.constant(0.75), SEED))
    assert 0 <= top <= bottom <= 32 and 0 <= left <= right <= 32
    assert bottom - top <= 16 and right - left <= 16  # sqrt(1 - 0.75) * 32 = 16, clipped at borders.


# ----------------------------------------------------------------------------- pipelines


def _batches(count=4, batch_size=8):
    images = np.random.default_rng(1).integers(1, 256, (count * batch_size, 8, 8, 3)).astype(np.uint8)
    labels = np.arange(count * batch_size, dtype=np.int64) % NUM_CLASSES
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size, drop_remainder=True)


def _take(dataset, count=2):
    return [[t.numpy() for t in batch] for batch in dataset.take(count)]


def test_augment_dataset_with_everything_off_is_the_dataset_itself():
    dataset = _batches()
    assert augment.augment_dataset(dataset, NUM_CLASSES, 8, seed=0) is dataset


def test_augment_dataset_per_image_keeps_batches_and_dtypes():
    dataset = augment.augment_dataset(
        _batches(), NUM_CLASSES, 8, seed=0, randaugment_magnitude=0.3, randaugment_ops=1, cutout_side=4
    )
    images, labels = dataset.element_spec
    assert images.dtype == tf.uint8 and images.shape == (8, 8, 8, 3) and labels.shape == (8,)
    batches = _take(dataset, 4)
    assert len(batches) == 4
    originals = _take(_batches(), 4)
    for (image, label), (original, original_label) in zip(batches, originals):
        np.testing.assert_array_equal(label, original_label)
        assert not np.array_equal(image, original)
        assert all((img == 0).all(-1).sum() > 0 for img in image)  # Every image has its cutout.


def test_augment_dataset_mixing_gives_float_soft_labels_reproducibly():
    def build(seed):
        return augment.augment_dataset(
            _batches(), NUM_CLASSES, 8, seed=seed, cutout_side=3, mixup_alpha=0.4, cutmix_alpha=1.0
        )

    images, labels = build(0).element_spec
    assert images.dtype == tf.float32 and images.shape == (8, 8, 8, 3)
    assert labels.dtype == tf.float32 and labels.shape == (8, NUM_CLASSES)
    first, again, other = _take(build(0)), _take(build(0)), _take(build(1))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(first[0][0], other[0][0])
    np.testing.assert_allclose(first[0][1].sum(1), 1.0, rtol=1e-6)


def test_a_mix_prob_variable_switches_mixing_for_the_next_pass():
    """--mix_until_epoch: the pipeline reads the probability from a variable a schedule sets."""
    mix_prob = tf.Variable(1.0, trainable=False, dtype=tf.float32)
    dataset = augment.augment_dataset(_batches(), NUM_CLASSES, 8, seed=0, mixup_alpha=1.0, mix_prob=mix_prob)
    mixed = _take(dataset, 4)
    assert any((labels.max(1) < 1).any() for _, labels in mixed)
    mix_prob.assign(0.0)
    plain = _take(dataset, 4)
    originals = _take(_batches(), 4)
    for (images, labels), (raw_images, raw_labels) in zip(plain, originals, strict=True):
        np.testing.assert_array_equal(images, raw_images.astype(np.float32))
        np.testing.assert_array_equal(labels, np.eye(NUM_CLASSES, dtype=np.float32)[raw_labels])


def _is_mixed(labels):
    """Whether a batch was mixed: some label row is not one-hot (mixup's lam ~ Beta(1, 1) is never 1)."""
    return bool((labels.max(1) < 1).any())


def test_a_ramp_run_mixes_its_batches_as_scheduled():
    """--mix_schedule=ramp: the callback train wires sets the variable the pipeline reads per batch,
    so epochs up to --mix_ramp_start are all mixed, the ramp's middle about half, the rest plain."""
    config = Config(
        dataset="digits",
        model_dir="/tmp/run",
        epochs=6,
        mixup_alpha=1.0,
        mix_schedule="ramp",
        mix_ramp_start=1,
        mix_until_epoch=3,
    ).validate()
    mix_prob = tf.Variable(config.mix_prob, trainable=False, dtype=tf.float32)
    dataset = augment.augment_dataset(
        _batches(count=40), NUM_CLASSES, 8, seed=0, mixup_alpha=config.mixup_alpha, mix_prob=mix_prob
    )
    callback = objective.mix_schedule(config, mix_prob)
    fractions, logged = [], []
    for epoch in range(5):
        callback.on_epoch_begin(epoch)
        fractions.append(np.mean([_is_mixed(labels.numpy()) for _, labels in dataset]))  # One pass.
        logs = {}
        callback.on_epoch_end(epoch, logs)
        logged.append(logs["mix_prob"])
    assert logged == [1.0, 1.0, 0.5, 0.0, 0.0]
    assert fractions[0] == fractions[1] == 1.0
    assert 0.25 < fractions[2] < 0.75  # p = 0.5 over 40 batches.
    assert fractions[3] == fractions[4] == 0.0


# ----------------------------------------------------------------------------- in training


def test_training_metrics_for_soft_labels_take_the_argmax_of_the_label():
    logits = np.array(
        [[3.0, 1, 0, 0, 0, 0, 0], [0, 2, 3, 1, 0, 0, 0], [0, -1, 0.5, 0.6, 1, 2, 3]], np.float32
    )
    soft = np.zeros((3, 7), np.float32)
    soft[0, [0, 1]] = [0.6, 0.4]  # argmax 0: predicted 0, correct.
    soft[1, [1, 2]] = [0.7, 0.3]  # argmax 1: predicted 2, wrong; 1 is in the top 5.
    soft[2, [0, 1]] = [0.45, 0.55]  # argmax 1: predicted 6, wrong; 1 is not in the top 5.
    accuracy, top5 = train.training_metrics(7, soft_labels=True)
    accuracy.update_state(soft, logits)
    top5.update_state(soft, logits)
    assert float(accuracy.result()) == pytest.approx(1 / 3)
    assert float(top5.result()) == pytest.approx(2 / 3)
    sparse_accuracy, _ = train.training_metrics(7, soft_labels=False)
    sparse_accuracy.update_state(soft.argmax(1), logits)
    assert float(sparse_accuracy.result()) == pytest.approx(1 / 3)
    assert [m.name for m in train.training_metrics(5, soft_labels=True)] == ["accuracy"]


def test_a_model_fits_mixed_batches():
    """fit on the augmented pipeline: soft labels reach the loss and the soft-label metrics."""
    from cdt_tf import losses

    keras.utils.set_random_seed(0)
    dataset = augment.augment_dataset(_batches(), NUM_CLASSES, 8, seed=0, mixup_alpha=0.4, cutmix_alpha=0.4)
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(NUM_CLASSES)]
    )
    model.compile(
        optimizer="sgd",
        loss=losses.CDTLoss([40, 20, 10, 8, 5, 4], gamma=0.3),
        metrics=train.training_metrics(NUM_CLASSES, soft_labels=True),
    )
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0]) and 0 <= history.history["accuracy"][0] <= 1


# ----------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"mixup_alpha": -0.1}, "--mixup_alpha"),
        ({"cutmix_alpha": float("nan")}, "--cutmix_alpha"),
        ({"mix_prob": 1.5}, "--mix_prob"),
        ({"randaugment_magnitude": 2.0}, "--randaugment_magnitude"),
        ({"randaugment_ops": 0}, "--randaugment_ops"),
        ({"cutout": -1}, "--cutout"),
        ({"mixup_alpha": 0.2, "strategy": "multi_worker"}, "multi_worker"),
        ({"mix_until_epoch": 5}, "--mix_until_epoch needs --mixup_alpha"),
        ({"mixup_alpha": 0.2, "mix_until_epoch": 200}, r"--mix_until_epoch must be in \[0, --epochs\)"),
        ({"mix_schedule": "linear"}, "unknown mix_schedule 'linear'"),
        ({"mixup_alpha": 0.2, "mix_until_epoch": 5, "mix_ramp_start": 2}, "--mix_ramp_start only applies"),
        ({"mix_schedule": "ramp"}, "--mix_schedule=ramp ramps MixUp/CutMix down: it needs --mixup_alpha"),
        *(
            (
                {
                    "cutmix_alpha": 1.0,
                    "mix_schedule": "ramp",
                    "mix_until_epoch": until,
                    "mix_ramp_start": start,
                },
                "--mix_schedule=ramp needs --mix_until_epoch > --mix_ramp_start >= 0",
            )
            for until, start in ((0, 0), (5, 5), (5, 7), (5, -1))
        ),
    ],
)
def test_bad_flags_name_the_flag(overrides, fragment):
    with pytest.raises(UserError, match=fragment.replace("-", r"\-")):
        dataclasses.replace(Config(dataset="digits", model_dir="/tmp/run"), **overrides).validate()


def test_a_ramp_config_is_valid_and_step_stays_the_default():
    config = Config(
        dataset="digits", model_dir="/tmp/run", cutmix_alpha=1.0, mix_schedule="ramp", mix_until_epoch=160
    ).validate()
    assert (config.mix_ramp_start, Config(dataset="digits", model_dir="/tmp/run").mix_schedule) == (0, "step")


def test_defaults_are_off_so_older_runs_resume():
    config = Config(dataset="digits", model_dir="/tmp/run").validate()
    assert not config.mixes_batches and config.randaugment_magnitude == 0 and config.cutout == 0
    new = (
        "randaugment_magnitude",
        "randaugment_ops",
        "cutout",
        "mixup_alpha",
        "cutmix_alpha",
        "mix_prob",
        "mix_until_epoch",
        "mix_schedule",
        "mix_ramp_start",
    )
    older = {k: v for k, v in config.to_dict().items() if k not in (*new, "lr_schedule", "val_per_class")}
    assert config.differences(older) == []
    assert dataclasses.replace(config, cutout=16).differences(older) == ["cutout"]


def test_augment_dataset_on_images_read_from_files(tmp_path):
    """The file-based pipeline (iNaturalist) takes the same augmentations after its decode and crop."""
    from cdt_tf import input_pipeline

    paths = []
    for i in range(8):
        path = str(tmp_path / f"{i}.png")
        tf.io.write_file(
            path, tf.io.encode_png(np.random.default_rng(i).integers(0, 256, (20, 24, 3), np.uint8))
        )
        paths.append(path)
    base = input_pipeline.build_file_train_dataset(
        np.array(paths), np.arange(8) % 3, batch_size=4, seed=0, image_size=16
    )
    dataset = augment.augment_dataset(
        base, 3, 4, seed=0, randaugment_magnitude=0.5, cutout_side=4, mixup_alpha=1.0, cutmix_alpha=1.0
    )
    batches = _take(dataset)
    assert len(batches) == 2
    assert batches[0][0].shape == (4, 16, 16, 3) and batches[0][1].shape == (4, 3)
    np.testing.assert_allclose(batches[0][1].sum(1), 1.0, rtol=1e-6)
