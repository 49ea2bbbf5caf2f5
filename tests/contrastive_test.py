"""The balanced contrastive branch (cdt_tf/contrastive.py): its loss against a NumPy reference, the
two-view pipeline, one training step, the plain network it leaves, and the flags' checks."""

from __future__ import annotations

import dataclasses
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from cdt_tf import config as config_lib
from cdt_tf import contrastive, input_pipeline, run_data, shift_learning
from cdt_tf.errors import UserError
from conftest import digits_run

RNG = np.random.default_rng(0)


def _config(**overrides):
    return config_lib.Config(dataset="digits", model_dir="/tmp/run", **overrides)


def _normalised(shape):
    x = RNG.normal(size=shape)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference_losses(embeddings, labels, centers, temperature):
    """L_i of every anchor written from its definition, one anchor and one class at a time (float64)."""
    contrast = np.concatenate([embeddings, centers])
    contrast_labels = np.concatenate([labels, np.arange(len(centers))])
    losses = []
    for i, anchor in enumerate(embeddings):
        others = [j for j in range(len(contrast)) if j != i]  # A(i)
        similarity = {j: anchor @ contrast[j] / temperature for j in others}
        denominator = 0.0
        for k in range(len(centers)):
            members = [j for j in others if contrast_labels[j] == k]  # A_k(i), never empty
            denominator += np.mean([np.exp(similarity[j]) for j in members])
        positives = [j for j in others if contrast_labels[j] == labels[i]]
        losses.append(-np.mean([similarity[p] - np.log(denominator) for p in positives]))
    return np.array(losses)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_loss_matches_its_definition(temperature):
    # Class 3 has no image in the batch (its center alone), class 2 a single image (two views).
    labels = np.array([0, 0, 1, 0, 1, 2, 0, 0, 1, 0, 1, 2])
    embeddings, centers = _normalised((12, 5)), _normalised((4, 5))
    args = (tf.constant(embeddings, tf.float32), tf.constant(labels), tf.constant(centers, tf.float32))
    per_anchor = contrastive.anchor_losses(*args, temperature).numpy()
    expected = _reference_losses(embeddings, labels, centers, temperature)
    np.testing.assert_allclose(per_anchor, expected, rtol=1e-5)
    loss = contrastive.balanced_contrastive_loss(*args, temperature)
    np.testing.assert_allclose(float(loss), np.mean(expected), rtol=1e-5)


def test_class_averaging_counts_a_class_once_however_many_images_it_has():
    """An anchor's denominator takes each class's mean: copies of a negative image change nothing
    (a plain supervised-contrastive loss would weigh that class three times)."""
    embeddings, centers = _normalised((3, 4)), _normalised((2, 4))
    centers[1] = embeddings[2]  # Class 1's members (its image and its center) alike: its mean is known.
    once = contrastive.anchor_losses(
        embeddings.astype(np.float32), [0, 0, 1], centers.astype(np.float32), 0.2
    )
    copies = np.concatenate([embeddings, embeddings[2:], embeddings[2:]]).astype(np.float32)
    thrice = contrastive.anchor_losses(copies, [0, 0, 1, 1, 1], centers.astype(np.float32), 0.2)
    np.testing.assert_allclose(once.numpy()[:2], thrice.numpy()[:2], rtol=1e-6)
    # Not a constant: moving the negative image moves the anchors' losses.
    moved = np.concatenate([embeddings[:2], -embeddings[2:]]).astype(np.float32)
    other = contrastive.anchor_losses(moved, [0, 0, 1], centers.astype(np.float32), 0.2)
    assert np.abs(other.numpy()[:2] - once.numpy()[:2]).min() > 1e-3


# ----------------------------------------------------------------------------- the two views


def test_in_memory_pipeline_gives_both_views_of_each_image_side_by_side():
    images = RNG.integers(0, 256, size=(8, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(8) % 3
    batches = list(input_pipeline.build_train_dataset(images, labels, 4, "crop_flip", seed=1, views=2))
    assert len(batches) == 2 and all(x.shape == (8, 16, 16, 3) for x, _ in batches)
    x, y = (np.concatenate([b[i].numpy() for b in batches]) for i in (0, 1))
    np.testing.assert_array_equal(y[0::2], y[1::2])  # Each image's views are next to each other.
    assert sorted(y[0::2]) == sorted(labels)  # One epoch: every image once.
    assert any(not np.array_equal(a, b) for a, b in zip(x[0::2], x[1::2]))  # Augmented apart.
    # Without augmentation the two views are the image itself, twice.
    plain = next(iter(input_pipeline.build_train_dataset(images, labels, 4, "none", seed=1, views=2)))
    np.testing.assert_array_equal(plain[0].numpy()[0::2], plain[0].numpy()[1::2])
    # One view is the pipeline as it was.
    one = next(iter(input_pipeline.build_train_dataset(images, labels, 4, "crop_flip", seed=1, views=1)))
    default = next(iter(input_pipeline.build_train_dataset(images, labels, 4, "crop_flip", seed=1)))
    np.testing.assert_array_equal(one[0].numpy(), default[0].numpy())


def test_file_pipeline_reads_each_view(tmp_path):
    paths = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        tf.io.write_file(str(path), tf.io.encode_png(RNG.integers(0, 256, (20, 20, 3), dtype=np.uint8)))
        paths.append(str(path))
    dataset = input_pipeline.build_file_train_dataset(
        np.array(paths), np.array([0, 1, 2, 3]), 2, seed=0, image_size=8, views=2
    )
    x, y = next(iter(dataset))
    assert x.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(y.numpy()[0::2], y.numpy()[1::2])


def test_the_second_stages_take_one_view_of_each_image():
    """A contrastive run's classifier retraining and batch-norm passes read plain batches."""
    config = dataclasses.replace(
        _config(), contrastive_weight=0.35, augmentation="crop_flip", batch_size=16, steps_per_epoch=1
    ).validate()
    data = run_data.load(config)
    images, labels = next(iter(shift_learning.pad_crop_flip_batches(config, data)))
    assert images.shape[0] == 16 and labels.shape == (16,)
    training, _ = next(iter(data.train_dataset(config)))
    assert training.shape[0] == 32  # The run's own batches: both views.


# ----------------------------------------------------------------------------- the model

NUM_FEATURES, NUM_CLASSES, WEIGHT, TEMPERATURE = 6, 3, 0.5, 0.2


def _network():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((NUM_FEATURES,))
    features = keras.layers.Dense(8, activation="relu", name="features")(inputs)
    outputs = keras.layers.Dense(NUM_CLASSES, name="classifier")(features)
    return keras.Model(inputs, outputs, name="net")


def _wrapped(learning_rate=0.1):
    model = contrastive.ContrastiveModel.wrap(_network(), WEIGHT, TEMPERATURE, dim=4)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


X = RNG.normal(size=(8, NUM_FEATURES)).astype(np.float32)
Y = np.array([0, 0, 1, 1, 2, 2, 0, 0])


def test_a_step_minimises_the_classifier_loss_plus_the_weighted_contrastive_loss():
    model = _wrapped()
    features, logits = model.encoder(X, training=True)
    expected_cls = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(Y, logits))
    expected_bcl = float(model.contrastive_loss(features, Y))  # Batch statistics, as in training.
    heads = [w.numpy().copy() for w in model.projection.weights + model.center_projection.weights]
    history = model.fit(X, Y, batch_size=8, epochs=1, verbose=0, shuffle=False).history
    np.testing.assert_allclose(history["contrastive_loss"][0], expected_bcl, rtol=1e-5)
    np.testing.assert_allclose(history["loss"][0], expected_cls + WEIGHT * expected_bcl, rtol=1e-5)
    after = model.projection.weights + model.center_projection.weights
    trainable = [not np.array_equal(a, w.numpy()) for a, w in zip(heads, after, strict=True) if w.trainable]
    assert all(trainable)  # Both heads (centers included) get gradients.


def test_plain_model_is_the_network_without_the_heads(tmp_path):
    model = _wrapped()
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    plain = model.plain_model()
    assert not isinstance(plain, contrastive.ContrastiveModel)
    assert plain.get_layer("classifier") is model.get_layer("classifier")
    assert not any("projection" in layer.name for layer in plain.layers)
    path = str(tmp_path / "model.keras")
    plain.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # E.g. "Skipping variable loading for optimizer".
        loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(X, verbose=0), model.predict(X, verbose=0), rtol=1e-6)
    assert int(loaded.optimizer.iterations.numpy()) == 1  # One step of a batch of 8.


def test_resume_restores_the_heads_too(tmp_path):
    """BackupAndRestore saves the wrapped model and loads it into one built anew."""
    model = _wrapped()
    model.fit(X, Y, batch_size=8, epochs=2, verbose=0)
    path = str(tmp_path / "backup.weights.h5")
    model.save_weights(path)
    fresh = contrastive.ContrastiveModel.wrap(_network(), WEIGHT, TEMPERATURE, dim=4)
    fresh.load_weights(path)
    for a, b in zip(model.weights, fresh.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The network (2 Dense layers) and per head Dense, batch norm (4 with its statistics), Dense.
    assert len(model.projection.weights) == 8 and len(model.weights) == 4 + 2 * 8


# ----------------------------------------------------------------------------- flags and a run


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"contrastive_weight": -1.0}, "--contrastive_weight must be >= 0"),
        (
            {"contrastive_weight": 0.3, "contrastive_temperature": 0.0},
            "--contrastive_temperature must be > 0",
        ),
        ({"contrastive_weight": 0.3, "contrastive_dim": 0}, "--contrastive_dim must be >= 1"),
        ({"contrastive_weight": 0.3, "augmentation": "crop_flip", "mixup_alpha": 1.0}, "MixUp/CutMix"),
        ({"contrastive_weight": 0.3, "augmentation": "crop_flip", "sam_rho": 0.05}, "--sam_rho"),
        (
            {"contrastive_weight": 0.3, "augmentation": "crop_flip", "strategy": "multi_worker"},
            "multi_worker",
        ),
        ({"contrastive_weight": 0.3}, "--augmentation=none they are the same image"),
    ],
)
def test_flags_refuse_what_the_branch_cannot_do(overrides, fragment):
    with pytest.raises(UserError, match=fragment.replace("-", r"\-").replace("+", r"\+")):
        dataclasses.replace(_config(), **overrides).validate()


def test_flags_accept_the_branch_and_give_two_views():
    config = dataclasses.replace(_config(), contrastive_weight=0.35, cutout=4).validate()
    assert config.training_views == 2 and _config().training_views == 1


def test_digits_run_with_the_contrastive_branch(tmp_path):
    model_dir = tmp_path / "run"
    flags = ("--augmentation=crop_flip", "--contrastive_weight=0.35", "--contrastive_dim=16")
    results, epochs = digits_run(model_dir, *flags)
    assert results["config"]["contrastive_weight"] == 0.35 and 0.0 <= results["top1"] <= 1.0
    assert len(epochs) == 2 and all(
        np.isfinite(e["contrastive_loss"]) and e["contrastive_loss"] > 0 for e in epochs
    )
    model = keras.models.load_model(model_dir / "model.keras")
    assert not isinstance(model, contrastive.ContrastiveModel)
    assert not any("projection" in layer.name for layer in model.layers)
