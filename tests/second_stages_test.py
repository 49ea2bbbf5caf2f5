"""MiSLAS's shift learning (crt_shift, crt_las_shift) and weight balancing's stage 2 (wb): what each
changes in the network, their records, the served classifier, and their flags' errors."""

from __future__ import annotations

import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from cdt_tf import config, export, models, retrain_classifier, rundir, shift_learning, weight_balancing
from cdt_tf.errors import UserError
from conftest import DIGITS_SMOKE, run_cli, run_module

RUN_FLAGS = (*DIGITS_SMOKE, "--loss=ce", "--gamma=0.0", "--val_per_class=5")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished digits run (linear classifier, a validation split); copy it before writing to it."""
    model_dir = tmp_path_factory.mktemp("second_stages") / "run"
    result = run_cli(*RUN_FLAGS, f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    return str(model_dir)


def _copy(finished_run, tmp_path) -> str:
    model_dir = str(tmp_path / "run")
    shutil.copytree(finished_run, model_dir)
    return model_dir


def _weights(model) -> dict:
    return {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights}


def test_norm_threshold_and_the_class_balanced_loss_match_their_formulas():
    kernel = np.array([[3.0, 0.0, 1.0], [4.0, 1.0, 0.0]])  # Column norms 5, 1, 1.
    assert weight_balancing.norm_threshold(kernel, 0.0) == pytest.approx(1.0)
    assert weight_balancing.norm_threshold(kernel, 0.1) == pytest.approx(1.4)
    assert weight_balancing.norm_threshold(kernel, 1.0) == pytest.approx(5.0)
    weights = np.array([0.5, 1.0, 1.5])
    logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]], np.float32)
    labels = np.array([0, 2])
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    one_hot = np.eye(3)[labels]
    entries = -(one_hot * np.log(p) + (1 - one_hot) * np.log(1 - p))
    expected = (weights[labels][:, None] * entries).mean(-1)  # Cui et al.'s "softmax" CB loss, per example.
    loss = weight_balancing.class_balanced_bce(weights)(labels, logits)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss), expected, rtol=1e-5)


def test_weight_balancing_keeps_every_class_norm_within_the_max_norm():
    rng = np.random.default_rng(0)
    counts = [60, 30, 10]
    labels = np.repeat(np.arange(3), counts)
    features = (rng.normal(size=(len(labels), 8)) + 2.0 * np.eye(8)[labels]).astype(np.float32)
    kernel = rng.normal(size=(8, 3)).astype(np.float32) * np.array([4.0, 2.0, 0.5], np.float32)
    data = type("Split", (), {"features": features, "labels": labels})
    new_kernel, bias, fields = weight_balancing.train(
        data, counts, ("linear", kernel, np.zeros(3, np.float32)), weight_decay=0.1, threshold=0.1, epochs=2
    )
    radius = weight_balancing.norm_threshold(kernel, 0.1)
    assert fields["max_norm"] == pytest.approx(radius, rel=1e-5)
    assert np.all(np.linalg.norm(new_kernel, axis=0) <= radius * (1 + 1e-5))
    assert bias.shape == (3,) and fields["options"] == {"weight_decay": 0.1, "threshold": 0.1}
    with pytest.raises(UserError, match="fine-tunes a linear classifier"):
        weight_balancing.train(data, counts, ("cosine", kernel, None), epochs=1)


@pytest.mark.parametrize("affine", [False, True], ids=["mislas", "affine"])
def test_shift_learning_changes_only_the_batch_norms_and_the_classifier(finished_run, affine):
    run = rundir.load_finished(finished_run)
    bn_names = {layer.name for layer in models.batch_norm_layers(run.model)}
    before = _weights(run.model)
    kernel, bias, fields = shift_learning.train_with_shift(
        run.model, run.config, run.data, None, epochs=1, lr_factor=0.2, affine=affine
    )
    after = _weights(run.model)
    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    moving = {p for p in before if p.split("/")[0] in bn_names and "moving" in p}
    affine_paths = {
        p for p in before if p.split("/")[0] in bn_names and p.split("/")[-1] in ("gamma", "beta")
    }
    assert moving and moving <= changed  # The statistics shifted to the class-balanced batches.
    assert (affine_paths <= changed) if affine else not (affine_paths & changed)
    assert changed <= moving | affine_paths  # Convolutions and the model's own classifier untouched.
    trained = run.model.get_layer("classifier")
    assert kernel.shape == tuple(trained.kernel.shape) and bias.shape == tuple(trained.bias.shape)
    assert not np.allclose(kernel, keras.ops.convert_to_numpy(trained.kernel))
    assert len(fields["learned_weight_scaling"]) == len(run.class_names)


def test_shift_stage_records_and_its_export_reproduces_the_record(finished_run, tmp_path):
    model_dir = _copy(finished_run, tmp_path)
    result = run_module(
        "cdt_tf.retrain_classifier",
        f"--model_dir={model_dir}",
        "--method=shift",
        "--shift_affine",
        "--smooth_head=0.3",
        "--epochs=1",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Shift learning: epoch 1/1" in result.stdout and "(validation " in result.stdout
    record = json.load(open(os.path.join(model_dir, "results.json")))["post_hoc"]["crt_las_shift"]
    assert record["options"] == {"lr_factor": 0.2, "affine": True} and record["validation"] is not None
    assert record["weights"] == "retrained_own_las0.3-0_shift_class_balanced.npz"
    kernel, bias, batch_norm, affine = rundir.read_classifier(os.path.join(model_dir, record["weights"]))
    assert batch_norm and affine and set(batch_norm) == set(affine)
    path, tau = export.export_run(model_dir, str(tmp_path / "out"), classifier="crt_las_shift")
    assert tau == 0.0
    run = rundir.load_finished(model_dir)
    images, labels = run.data.images("test"), run.data.labels("test")
    outputs = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    served = outputs["logits"].numpy()
    assert np.mean(served.argmax(-1) == labels) == pytest.approx(record["top1"], abs=1e-6)
    # The same logits from the run's network with the file's statistics, gamma, beta and head.
    models.set_batch_norm_statistics(run.model, batch_norm)
    models.set_batch_norm_affine(run.model, affine)
    features = models.feature_extractor(run.model).predict(images, verbose=0)
    np.testing.assert_allclose(served, features @ kernel + bias, rtol=1e-4, atol=1e-4)


def test_wb_from_main_records_and_serves(tmp_path):
    model_dir = tmp_path / "run"
    result = run_cli(*RUN_FLAGS, f"--model_dir={model_dir}", "--second_stage=wb", "--wb_threshold=0.2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Second stage wb: top-1" in result.stdout and "--classifier=wb" in result.stdout
    record = json.load(open(model_dir / "results.json"))["post_hoc"]["wb"]
    assert record["options"] == {"weight_decay": 0.1, "threshold": 0.2} and record["sampler"] == "instance"
    assert max(record["class_norms"]) <= record["max_norm"] * (1 + 1e-5)
    kernel, bias, batch_norm, affine = rundir.read_classifier(str(model_dir / record["weights"]))
    assert not batch_norm and not affine  # The network's own statistics: the file holds the head only.
    path, _ = export.export_run(str(model_dir), str(tmp_path / "out"), classifier="wb")
    assert json.load(open(os.path.join(path, export.METADATA_FILE)))["classifier"] == "wb"
    # The same command again reuses the record; another threshold retrains.
    again = run_cli(*RUN_FLAGS, f"--model_dir={model_dir}", "--second_stage=wb", "--wb_threshold=0.2")
    assert again.returncode == 0 and "Second stage: wb on the trained network" not in again.stdout
    other = run_cli(*RUN_FLAGS, f"--model_dir={model_dir}", "--second_stage=wb", "--wb_threshold=0.5")
    assert other.returncode == 0 and "Second stage: wb on the trained network" in other.stdout
    assert json.load(open(model_dir / "results.json"))["post_hoc"]["wb"]["options"]["threshold"] == 0.5


def test_weights_files_from_before_affine_parameters_read_as_before(tmp_path):
    path = str(tmp_path / "old.npz")
    mean, variance = np.zeros(4, np.float32), np.ones(4, np.float32)
    np.savez(path, kernel=np.ones((4, 3)), bias=np.zeros(3), **{"bn/bn1/moving_mean": mean})
    with pytest.raises(UserError, match="cannot read the classifier weights"):
        rundir.read_classifier(path)  # A statistic without its pair is refused, as before.
    np.savez(
        path,
        kernel=np.ones((4, 3)),
        bias=np.zeros(3),
        **{"bn/bn1/moving_mean": mean, "bn/bn1/moving_variance": variance},
    )
    kernel, bias, batch_norm, affine = rundir.read_classifier(path)
    assert kernel.shape == (4, 3) and list(batch_norm) == ["bn1"] and affine == {}
    rundir.write_classifier(path, kernel, bias, batch_norm, {"bn1": (variance * 2, mean + 1)})
    _, _, batch_norm, affine = rundir.read_classifier(path)
    np.testing.assert_array_equal(affine["bn1"][0], variance * 2)
    np.testing.assert_array_equal(batch_norm["bn1"][1], variance)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"shift_lr_factor": 0.0}, "--shift_lr_factor must be > 0"),
        ({"wb_weight_decay": -1.0}, "--wb_weight_decay must be >= 0"),
        ({"wb_threshold": 1.5}, r"--wb_threshold must be in \[0, 1\]"),
        (
            {"second_stage": "wb", "loss": "ldam"},
            "--second_stage=wb fine-tunes the trained linear classifier",
        ),
    ],
)
def test_config_refuses_bad_second_stage_options(fields, message):
    with pytest.raises(UserError, match=message):
        config.Config(dataset="digits", model_dir="/tmp/unused", **fields).validate()


def test_retrain_cli_refuses_options_its_method_does_not_take(finished_run):
    for flags_, start in (
        (("--method=wb", "--smooth_head=0.3"), "cdt_tf: error: --method=wb trains with the class-balanced"),
        (("--method=shift", "--bn_stats=class_balanced"), "cdt_tf: error: --bn_stats=class_balanced is"),
        (("--method=wb", "--wb_threshold=2"), "cdt_tf: error: --wb_threshold must be in [0, 1]"),
    ):
        result = run_module("cdt_tf.retrain_classifier", f"--model_dir={finished_run}", *flags_)
        assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(
            start
        ), result.stderr
    assert retrain_classifier.posthoc_key(True, True, "shift") == "crt_las_shift"
