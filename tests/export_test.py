"""The SavedModel export: reloaded without cdt_tf, against the Keras model, the CLIs and the serving client.

One small run directory (an untrained digits ConvNet, so no training) is exported once for the file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from cdt_tf import datasets, export, models, rundir
from cdt_tf.calibration import TAU_RANGE, nc_tau_calibrate
from cdt_tf.config import Config
from cdt_tf.errors import UserError
from conftest import REPO_ROOT, load_tool, run_command

# Every signature returns these (tested: the exported outputs are exactly these keys).
OUTPUTS = ("logits", "calibrated_logits", "probabilities", "classes", "class_names")


serving_client = load_tool("serving_client")

CLASS_COUNTS = [124, 96, 74, 57, 44, 34, 26, 20, 16, 12]  # imbalanced_counts(10, 124, 10)
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "number nine"]
RECORDED_TAU = 0.7  # results.json's post_hoc.nc_tau.tau: the export's default.
TOLERANCE = 1e-5

# Runs in a fresh interpreter outside the repository: TensorFlow and NumPy only, no cdt_tf, no Keras
# custom objects. Writes every output of every signature to an .npz.
FRESH_PROCESS = r"""
import importlib.util, os, sys
import numpy as np
import tensorflow as tf

export_path, inputs_path, png_dir, outputs_path = sys.argv[1:]
assert importlib.util.find_spec("cdt_tf") is None, "cdt_tf must not be importable here"
inputs = np.load(inputs_path)
loaded = tf.saved_model.load(export_path)
signatures = loaded.signatures
results = {}

def run(prefix, name, **kwargs):
    for key, value in signatures[name](**kwargs).items():
        value = value.numpy()
        results[f"{prefix}/{key}"] = value.astype(str) if value.dtype == object else value

def png_bytes(folder):
    files = sorted(os.listdir(os.path.join(png_dir, folder)), key=lambda name: int(name.split(".")[0]))
    return tf.constant([tf.io.read_file(os.path.join(png_dir, folder, f)).numpy() for f in files])

run("default", "serving_default", images=tf.constant(inputs["images"]))
run("large", "serving_default", images=tf.constant(inputs["large"]))
for prefix, tau in (("tau_recorded", inputs["recorded_tau"]), ("tau_zero", 0.0), ("tau_half", 0.5)):
    run(prefix, "serve_with_tau", images=tf.constant(inputs["images"]), tau=tf.constant(tau, tf.float32))
run("bytes", "serve_image_bytes", image_bytes=png_bytes("same"))
run("bytes_large", "serve_image_bytes", image_bytes=png_bytes("large"))
with open(loaded.class_names_file.asset_path.numpy().decode()) as f:
    results["asset_class_names"] = np.array(f.read().splitlines())
results["cdt_tf_loaded"] = np.array([name for name in sys.modules if name.startswith("cdt_tf")], dtype=str)
np.savez(outputs_path, **results)
"""


def _python(*args: str, cwd: str = REPO_ROOT, pythonpath: bool = True, timeout: int = 180):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if pythonpath:
        env["PYTHONPATH"] = REPO_ROOT
    return run_command(sys.executable, *args, cwd=cwd, env=env, timeout=timeout)


def _softmax(logits):
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def _write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f)


def _write_pngs(folder, images):
    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(images):
        tf.io.write_file(os.path.join(folder, f"{i}.png"), tf.io.encode_png(image))
    return [os.path.join(folder, f"{i}.png") for i in range(len(images))]


def _digest(folder):
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                digest.update(name.encode() + f.read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A run directory with an untrained digits ConvNet, exported once (version 1, the recorded tau)."""
    root = tmp_path_factory.mktemp("export")
    model_dir = str(root / "run")
    os.makedirs(model_dir)
    keras.utils.set_random_seed(0)
    model = models.digits_convnet(10, mean=(0.3, 0.3, 0.3), std=(0.4, 0.4, 0.4))
    # Non-trivial batch-norm statistics, so the inference-mode normalisation is exercised.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.random.default_rng(1).normal(0, 0.5, layer.moving_mean.shape))
            layer.moving_variance.assign(
                np.random.default_rng(2).uniform(0.5, 2, layer.moving_variance.shape)
            )
    # Real digits, and a classifier bias that centres their logits: an untrained network then
    # predicts several classes, and N_c^tau changes some of its predictions.
    images = datasets.load_source("digits").test.images()[::25][:12]
    features = models.feature_extractor(model).predict(images, verbose=0)
    classifier = model.get_layer("classifier")
    classifier.bias.assign(-features.mean(0) @ keras.ops.convert_to_numpy(classifier.kernel))
    model.save(os.path.join(model_dir, "model.keras"))
    config = Config(dataset="digits", model_dir=model_dir, imbalance="exp", imbalance_ratio=10, loss="cdt")
    _write_json(os.path.join(model_dir, "config.json"), config.validate().to_dict())
    _write_json(os.path.join(model_dir, "subset.json"), {"hash": "0" * 64, "class_counts": CLASS_COUNTS})
    _write_json(
        os.path.join(model_dir, "results.json"),
        {
            "class_counts": CLASS_COUNTS,
            "class_names": CLASS_NAMES,
            "post_hoc": {"nc_tau": {"tau": RECORDED_TAU}},
        },
    )
    export_dir = str(root / "serving")
    path, tau = export.export_run(model_dir, export_dir)
    rng = np.random.default_rng(0)
    return types.SimpleNamespace(
        root=root,
        model_dir=model_dir,
        export_dir=export_dir,
        path=path,
        tau=tau,
        # cdt_tf.models (imported) registers the custom layers.
        model=keras.saving.load_model(os.path.join(model_dir, "model.keras"), compile=False),
        images=images,
        large=rng.integers(0, 256, (3, 12, 10, 3), dtype=np.uint8),  # Resized to 8x8 by the graph.
    )


@pytest.fixture(scope="module")
def fresh_outputs(exported):
    """Every signature's outputs, computed by a fresh process that imports only TensorFlow and NumPy."""
    root = exported.root
    inputs_path, outputs_path = str(root / "inputs.npz"), str(root / "outputs.npz")
    np.savez(inputs_path, images=exported.images, large=exported.large, recorded_tau=np.float32(RECORDED_TAU))
    png_dir = str(root / "png")
    _write_pngs(os.path.join(png_dir, "same"), exported.images)
    _write_pngs(os.path.join(png_dir, "large"), exported.large)
    script = str(root / "fresh_process.py")
    with open(script, "w") as f:
        f.write(FRESH_PROCESS)
    result = _python(
        script, exported.path, inputs_path, png_dir, outputs_path, cwd=str(root), pythonpath=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(outputs_path) as outputs:
        return {key: outputs[key] for key in outputs.files}


def _assert_outputs(outputs, prefix, logits, tau):
    """The five outputs of one call against the Keras logits and the NumPy rule of eq. 5."""
    np.testing.assert_allclose(outputs[f"{prefix}/logits"], logits, rtol=0, atol=TOLERANCE)
    calibrated = nc_tau_calibrate(logits, CLASS_COUNTS, tau)
    np.testing.assert_allclose(outputs[f"{prefix}/calibrated_logits"], calibrated, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(
        outputs[f"{prefix}/probabilities"], _softmax(calibrated), rtol=0, atol=TOLERANCE
    )
    np.testing.assert_array_equal(outputs[f"{prefix}/classes"], calibrated.argmax(-1))
    assert outputs[f"{prefix}/classes"].dtype == np.int64
    np.testing.assert_array_equal(
        outputs[f"{prefix}/class_names"], np.array(CLASS_NAMES)[calibrated.argmax(-1)]
    )


def test_fresh_process_matches_the_keras_model(exported, fresh_outputs):
    assert exported.tau == RECORDED_TAU
    assert list(fresh_outputs["cdt_tf_loaded"]) == []  # (`import tensorflow` itself imports Keras.)
    assert list(fresh_outputs["asset_class_names"]) == CLASS_NAMES
    logits = exported.model.predict(exported.images, verbose=0)
    for prefix, tau in (
        ("default", RECORDED_TAU),
        ("tau_recorded", RECORDED_TAU),
        ("tau_zero", 0.0),
        ("tau_half", 0.5),
        ("bytes", RECORDED_TAU),
    ):
        _assert_outputs(fresh_outputs, prefix, logits, tau)
    # Other sizes are resized as the data loader resizes image files (cdt_tf.datasets.decode_images).
    paths = [os.path.join(str(exported.root), "png", "large", f"{i}.png") for i in range(len(exported.large))]
    loader_logits = exported.model.predict(datasets.decode_images(np.array(paths), 8), verbose=0)
    _assert_outputs(fresh_outputs, "large", loader_logits, RECORDED_TAU)
    _assert_outputs(fresh_outputs, "bytes_large", loader_logits, RECORDED_TAU)


def test_calibration_is_logits_over_recorded_counts_to_the_tau(exported, fresh_outputs):
    with open(os.path.join(exported.model_dir, "results.json")) as f:
        counts = np.array(json.load(f)["class_counts"], np.float64)
    logits = fresh_outputs["default/logits"].astype(np.float64)
    np.testing.assert_allclose(
        fresh_outputs["default/calibrated_logits"], logits / counts**RECORDED_TAU, rtol=1e-6, atol=1e-7
    )
    # The test images are predicted as several classes, and tau = 0.7 moves some predictions.
    assert len(set(fresh_outputs["tau_zero/classes"])) >= 3
    assert (fresh_outputs["default/classes"] != fresh_outputs["tau_zero/classes"]).any()
    np.testing.assert_array_equal(
        fresh_outputs["tau_zero/calibrated_logits"], fresh_outputs["tau_zero/logits"]
    )
    for key in OUTPUTS:  # serve_with_tau at the exported tau is serving_default.
        np.testing.assert_array_equal(fresh_outputs[f"tau_recorded/{key}"], fresh_outputs[f"default/{key}"])
        np.testing.assert_array_equal(fresh_outputs[f"bytes/{key}"], fresh_outputs[f"default/{key}"])


def test_export_cli_writes_the_next_version_and_keeps_the_first(exported):
    first = os.path.join(exported.export_dir, "1")
    assert exported.path == first
    before = _digest(first)
    result = _python(
        "-m",
        "cdt_tf.export",
        f"--model_dir={exported.model_dir}",
        f"--export_dir={exported.export_dir}",
        "--tau=0.25",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    second = os.path.join(exported.export_dir, "2")
    assert f"Exported {second} (nc_tau, tau=0.25)" in result.stdout
    assert sorted(os.listdir(exported.export_dir)) == ["1", "2"]  # No staging directory left behind.
    assert _digest(first) == before
    for version, tau, source in ((first, RECORDED_TAU, "post_hoc"), (second, 0.25, "--tau")):
        assert {"saved_model.pb", "variables", "assets", export.METADATA_FILE} <= set(os.listdir(version))
        with open(os.path.join(version, "assets", export.CLASS_NAMES_FILE)) as f:
            assert f.read().splitlines() == CLASS_NAMES
        with open(os.path.join(version, export.METADATA_FILE)) as f:
            metadata = json.load(f)
        assert metadata["tau"] == tau and source in metadata["tau_source"]
        assert metadata["calibration"] == "nc_tau"
        assert metadata["class_counts"] == CLASS_COUNTS and metadata["image_size"] == [8, 8]
    assert export.next_version(exported.export_dir) == 3


def _saved_model_cli(*args: str):
    """Runs saved_model_cli (`run` loads with the TF1-style loader, as TensorFlow Serving does)."""
    saved_model_cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    command = (
        [saved_model_cli]
        if os.path.exists(saved_model_cli)
        else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    )
    return run_command(*command, *args, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=120)


def test_saved_model_cli_shows_and_runs_the_signatures(exported, tmp_path):
    shown = _saved_model_cli("show", "--dir", exported.path, "--all")
    assert shown.returncode == 0, shown.stderr[-3000:]
    for expected in (
        "signature_def['serving_default']",
        "signature_def['serve_image_bytes']",
        "signature_def['serve_with_tau']",
        "inputs['images'] tensor_info:\n        dtype: DT_UINT8\n        shape: (-1, -1, -1, 3)",
        "inputs['image_bytes'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)",
        "inputs['tau'] tensor_info:\n        dtype: DT_FLOAT\n        shape: ()",
        "outputs['classes'] tensor_info:\n        dtype: DT_INT64",
        "outputs['class_names'] tensor_info:\n        dtype: DT_STRING",
        "outputs['probabilities'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, 10)",
    ):
        assert expected in shown.stdout, expected

    # `run` loads with the TF1-style loader, as TensorFlow Serving does.
    np.save(tmp_path / "images.npy", exported.images)
    out_dir = tmp_path / "outputs"
    ran = _saved_model_cli(
        "run",
        "--dir",
        exported.path,
        "--tag_set",
        "serve",
        "--signature_def",
        "serving_default",
        "--inputs",
        f"images={tmp_path / 'images.npy'}",
        "--outdir",
        str(out_dir),
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    logits = exported.model.predict(exported.images, verbose=0)
    np.testing.assert_allclose(np.load(out_dir / "logits.npy"), logits, rtol=0, atol=TOLERANCE)
    calibrated = nc_tau_calibrate(logits, CLASS_COUNTS, RECORDED_TAU)
    np.testing.assert_array_equal(np.load(out_dir / "classes.npy"), calibrated.argmax(-1))
    names = np.load(out_dir / "class_names.npy", allow_pickle=True).astype(str)
    np.testing.assert_array_equal(names, np.array(CLASS_NAMES)[calibrated.argmax(-1)])


# ----------------------------------------------------------------------------- the serving client


def _client_cases(exported):
    png = [tf.io.encode_png(image).numpy() for image in exported.images[:2]]
    return [
        ("serving_default", {"images": exported.images[:3]}),
        ("serve_image_bytes", {"image_bytes": png}),
        ("serve_with_tau", {"images": exported.images[:3], "tau": 0.5}),
    ]


def _tensors_from_rest_body(body, specs):
    """Decodes a predict body into tensors the way TF Serving's REST API documents it (b64 -> bytes)."""
    decode = lambda v: base64.b64decode(v["b64"]) if isinstance(v, dict) else v  # noqa: E731
    if "instances" in body:
        columns = {name: [instance[name] for instance in body["instances"]] for name in body["instances"][0]}
    else:
        columns = body["inputs"]
    tensors = {}
    for name, value in columns.items():
        value = [decode(v) for v in value] if isinstance(value, list) else value
        tensors[name] = tf.constant(value, dtype=specs[name].dtype)
    return tensors


def _assert_same_outputs(actual, expected):
    for key in OUTPUTS:
        np.testing.assert_array_equal(actual[key].numpy(), expected[key].numpy())


def test_rest_requests_match_the_signatures(exported):
    loaded = tf.saved_model.load(exported.path)
    for signature_name, inputs in _client_cases(exported):
        body = json.loads(json.dumps(serving_client.build_rest_request(signature_name, inputs)))
        assert body["signature_name"] == signature_name
        signature = loaded.signatures[signature_name]
        specs = signature.structured_input_signature[1]
        tensors = _tensors_from_rest_body(body, specs)
        assert set(tensors) == set(specs), signature_name
        for name, spec in specs.items():
            assert spec.is_compatible_with(tensors[name]), (signature_name, name, tensors[name].shape)
        direct = {
            name: tf.constant(value, dtype=specs[name].dtype) for name, value in inputs.items()
        }  # The same inputs, not through JSON.
        _assert_same_outputs(signature(**tensors), signature(**direct))
    image_bytes = _client_cases(exported)[1][1]["image_bytes"]
    body = serving_client.build_rest_request("serve_image_bytes", {"image_bytes": image_bytes})
    assert body["instances"][0] == {"image_bytes": {"b64": base64.b64encode(image_bytes[0]).decode()}}
    assert "inputs" in serving_client.build_rest_request("serve_with_tau", _client_cases(exported)[2][1])
    assert serving_client.rest_url("localhost:8501", "cdt") == "http://localhost:8501/v1/models/cdt:predict"


def test_grpc_requests_match_the_signatures(exported):
    pytest.importorskip(
        "tensorflow_serving.apis.predict_pb2", reason="pip install --no-deps -r requirements-serving.txt"
    )
    loaded = tf.saved_model.load(exported.path)
    for signature_name, inputs in _client_cases(exported):
        request = serving_client.build_grpc_request("cdt", signature_name, inputs, version=1)
        request = type(request).FromString(request.SerializeToString())  # What goes over the wire.
        assert (request.model_spec.name, request.model_spec.signature_name) == ("cdt", signature_name)
        assert request.model_spec.version.value == 1
        signature = loaded.signatures[signature_name]
        specs = signature.structured_input_signature[1]
        assert set(request.inputs) == set(specs), signature_name
        arrays = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        for name, spec in specs.items():
            assert tf.as_dtype(request.inputs[name].dtype) == spec.dtype, (signature_name, name)
            assert spec.shape.is_compatible_with(arrays[name].shape), (signature_name, name)
        direct = {name: tf.constant(value, dtype=specs[name].dtype) for name, value in inputs.items()}
        _assert_same_outputs(signature(**{n: tf.constant(a) for n, a in arrays.items()}), signature(**direct))


def test_client_reads_inputs_and_prints_top_k(exported, tmp_path):
    np.save(tmp_path / "batch.npy", exported.images[:2])
    signature_name, inputs, labels = serving_client.read_inputs([str(tmp_path / "batch.npy")], tau=0.5)
    assert (
        signature_name == "serve_with_tau" and inputs["tau"] == 0.5 and inputs["images"].shape == (2, 8, 8, 3)
    )
    assert labels == [f"{tmp_path / 'batch.npy'}[0]", f"{tmp_path / 'batch.npy'}[1]"]
    paths = _write_pngs(str(tmp_path / "png"), exported.images[:2])
    signature_name, inputs, labels = serving_client.read_inputs(paths)
    assert signature_name == "serve_image_bytes" and labels == paths
    with pytest.raises(ValueError, match="--tau needs uint8 .npy"):
        serving_client.read_inputs(paths, tau=0.5)

    # A row-format REST answer, as TF Serving writes it from the signature's outputs.
    outputs = tf.saved_model.load(exported.path).signatures["serve_image_bytes"](
        image_bytes=tf.constant(inputs["image_bytes"])
    )
    rows = [
        {
            key: (value[i].decode() if isinstance(value[i], bytes) else value[i].tolist())
            for key, value in ((k, v.numpy()) for k, v in outputs.items())
        }
        for i in range(2)
    ]
    parsed = serving_client.parse_rest_response({"predictions": rows})
    np.testing.assert_allclose(parsed["probabilities"], outputs["probabilities"].numpy())
    text = serving_client.format_predictions(parsed, labels, top_k=3, class_names=CLASS_NAMES)
    lines = text.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{paths[0]}: ")
    top_class = CLASS_NAMES[int(parsed["classes"][0])]
    assert lines[0].split(": ", 1)[1].startswith(f"{top_class} ") and lines[0].count(",") == 2
    without_names = serving_client.format_predictions(parsed, labels, top_k=2)
    assert without_names.splitlines()[0].split(": ", 1)[1].startswith(f"{top_class} ")
    assert "class " in without_names  # The other classes by index.


# ----------------------------------------------------------------------------- bad input


def test_bad_images_are_refused_with_a_clear_message(exported):
    signatures = tf.saved_model.load(exported.path).signatures
    serve = signatures["serving_default"]
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"images must be uint8 \[batch, height, width, 3\]"
    ):
        serve(images=tf.zeros([1, 8, 8, 4], tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a uint8 tensor but is a float"):
        serve(images=tf.zeros([1, 8, 8, 3], tf.float32))
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"\[8,8,3\] is not compatible with .*\[\?,8,8,3\]"
    ):
        serve(images=tf.zeros([8, 8, 3], tf.uint8))  # No batch axis.
    with pytest.raises(tf.errors.InvalidArgumentError, match="tau must be a finite"):
        signatures["serve_with_tau"](
            images=tf.zeros([1, 8, 8, 3], tf.uint8), tau=tf.constant(np.nan, tf.float32)
        )
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        signatures["serve_image_bytes"](image_bytes=tf.constant([b"not an image"]))
    # Python-side check of NumPy inputs in the client.
    with pytest.raises(ValueError, match="must be uint8"):
        serving_client.check_images(np.zeros([1, 8, 8, 3], np.float32))
    with pytest.raises(ValueError, match=r"\[batch, height, width, 3\] \(RGB\), got shape \[1, 8, 8, 4\]"):
        serving_client.check_images(np.zeros([1, 8, 8, 4], np.uint8))
    assert serving_client.check_images(np.zeros([8, 8, 3], np.uint8)).shape == (1, 8, 8, 3)


EMPTY_OUTPUTS = {
    "logits": ([0, 10], tf.float32),
    "calibrated_logits": ([0, 10], tf.float32),
    "probabilities": ([0, 10], tf.float32),
    "classes": ([0], tf.int64),
    "class_names": ([0], tf.string),
}


def test_an_empty_batch_returns_empty_outputs(exported, tmp_path):
    signatures = tf.saved_model.load(exported.path).signatures
    no_images = tf.zeros([0, 8, 8, 3], tf.uint8)
    for name, outputs in (
        ("serving_default", signatures["serving_default"](images=no_images)),
        ("resized", signatures["serving_default"](images=tf.zeros([0, 12, 10, 3], tf.uint8))),
        ("serve_image_bytes", signatures["serve_image_bytes"](image_bytes=tf.constant([], tf.string))),
        ("serve_with_tau", signatures["serve_with_tau"](images=no_images, tau=tf.constant(0.5))),
    ):
        assert set(outputs) == set(OUTPUTS), name
        for key, (shape, dtype) in EMPTY_OUTPUTS.items():
            assert outputs[key].shape == shape and outputs[key].dtype == dtype, (name, key, outputs[key])
    # TF Serving's TF1-style loader, through saved_model_cli.
    ran = _saved_model_cli(
        "run",
        "--dir",
        exported.path,
        "--tag_set",
        "serve",
        "--signature_def",
        "serve_image_bytes",
        "--input_exprs",
        "image_bytes=[]",
        "--outdir",
        str(tmp_path / "outputs"),
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert np.load(tmp_path / "outputs" / "logits.npy").shape == (0, 10)
    assert np.load(tmp_path / "outputs" / "classes.npy").shape == (0,)


def test_a_scalar_image_bytes_is_refused_with_a_clear_message(exported):
    png = tf.io.encode_png(exported.images[0])
    loaded = tf.saved_model.load(exported.path)
    serve = loaded.signatures["serve_image_bytes"]
    assert serve(image_bytes=tf.reshape(png, [1]))["classes"].shape == [1]  # A batch of one: [data].
    # A loaded signature does not check shapes (nor does TF Serving): the graph refuses a scalar.
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"Shape of tensor image_bytes \[\] is not compatible with expected shape \[\?\]",
    ):
        serve(image_bytes=png)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes \[1,1\] is not compatible"):
        serve(image_bytes=tf.reshape(png, [1, 1]))
    # The restored tf.function binds its input signature before running.
    with pytest.raises(TypeError, match=r"Can not cast TensorSpec\(shape=\(\), dtype=tf.string"):
        loaded.serve_image_bytes(png)
    # saved_model_cli's session refuses it before the graph runs.
    ran = _saved_model_cli(
        "run",
        "--dir",
        exported.path,
        "--tag_set",
        "serve",
        "--signature_def",
        "serve_image_bytes",
        "--input_exprs",
        'image_bytes=b"not a batch"',
    )
    assert ran.returncode != 0
    assert "Cannot feed value of shape () for Tensor serve_image_bytes_image_bytes:0" in ran.stderr


def test_serve_with_tau_refuses_tau_outside_the_range(exported):
    serve = tf.saved_model.load(exported.path).signatures["serve_with_tau"]
    images = tf.constant(exported.images)
    for tau, shown in ((100.0, "100"), (-0.5, "-0.5"), (-1e-6, "-1e-06"), (5.01, "5.01")):
        with pytest.raises(
            tf.errors.InvalidArgumentError, match=rf"tau must be in \[0, 5\]; got\] \[{shown}\]"
        ):
            serve(images=images, tau=tf.constant(tau, tf.float32))


def test_serve_with_tau_at_the_largest_tau_is_finite_and_keeps_the_argmax(exported):
    tau = TAU_RANGE[1]
    serve = tf.saved_model.load(exported.path).signatures["serve_with_tau"]
    outputs = {
        key: value.numpy() for key, value in serve(images=exported.images, tau=tf.constant(tau)).items()
    }
    # The float64 NumPy rule on the served logits; 124^5 < e^60, so the division itself is served.
    reference = nc_tau_calibrate(outputs["logits"], CLASS_COUNTS, tau)
    assert np.isfinite(outputs["calibrated_logits"]).all() and np.isfinite(outputs["probabilities"]).all()
    assert (outputs["calibrated_logits"] != 0).all()
    np.testing.assert_allclose(outputs["calibrated_logits"], reference, rtol=1e-5)
    np.testing.assert_array_equal(outputs["classes"], reference.argmax(-1))
    np.testing.assert_array_equal(
        outputs["class_names"].astype(str), np.array(CLASS_NAMES)[reference.argmax(-1)]
    )
    np.testing.assert_allclose(outputs["probabilities"], _softmax(reference), rtol=0, atol=1e-7)
    assert (outputs["probabilities"].max(-1) > outputs["probabilities"].min(-1)).all()  # Not uniform.
    # tau = 5 sends predictions to minor classes (CLASS_COUNTS fall with the class index).
    plain = serve(images=exported.images, tau=tf.constant(0.0))["classes"].numpy()
    assert outputs["classes"].mean() > plain.mean()


def test_export_refuses_tau_outside_the_range(exported, tmp_path):
    result = _python(
        "-m", "cdt_tf.export", f"--model_dir={exported.model_dir}", f"--export_dir={tmp_path}", "--tau=-1"
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("cdt_tf: error:")]
    assert errors == ["cdt_tf: error: --tau: tau must be a finite number in [0, 5], got -1"], result.stderr
    assert os.listdir(tmp_path) == []
    for tau in (5.5, 100.0, -0.1, float("nan")):
        with pytest.raises(UserError, match=r"^--tau: tau must be a finite number in \[0, 5\]"):
            export.export_run(exported.model_dir, str(tmp_path / "run"), tau)
        with pytest.raises(UserError, match=r"^tau must be a finite number in \[0, 5\]"):
            export.export_model(exported.model, CLASS_COUNTS, CLASS_NAMES, str(tmp_path / "api"), tau)
    assert os.listdir(tmp_path) == []
    # A recorded tau outside the range is refused as well, naming where it came from.
    model_dir = str(tmp_path / "run_dir")
    shutil.copytree(exported.model_dir, model_dir)
    results = {"class_counts": CLASS_COUNTS, "class_names": CLASS_NAMES, "post_hoc": {"nc_tau": {"tau": 7.0}}}
    _write_json(os.path.join(model_dir, "results.json"), results)
    with pytest.raises(UserError, match=r"^results.json post_hoc.nc_tau.tau: tau must be .* got 7$"):
        export.export_run(model_dir, str(tmp_path / "run"))
    assert sorted(os.listdir(tmp_path)) == ["run_dir"]


def test_a_retrained_classifier_is_exported_in_place_of_the_trained_one(exported, tmp_path):
    model_dir = str(tmp_path / "run")
    shutil.copytree(exported.model_dir, model_dir)
    # No crt weights yet: a one-line error naming the command that makes them, nothing written.
    result = _python(
        "-m",
        "cdt_tf.export",
        f"--model_dir={model_dir}",
        f"--export_dir={tmp_path / 'out'}",
        "--classifier=crt",
    )
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("cdt_tf: error:")]
    assert len(errors) == 1 and "python -m cdt_tf.retrain_classifier" in errors[0], result.stderr
    assert not os.path.exists(tmp_path / "out")
    # A retrained head as cdt_tf.retrain_classifier records it: weights file + post_hoc entry.
    features = models.feature_extractor(exported.model).predict(exported.images, verbose=0)
    rng = np.random.default_rng(3)
    kernel = rng.normal(0, 1, (features.shape[1], 10)).astype(np.float32)
    bias = (-features.mean(0) @ kernel).astype(np.float32)
    rundir.write_classifier(os.path.join(model_dir, "retrained_own_class_balanced.npz"), kernel, bias)
    results = json.load(open(os.path.join(model_dir, "results.json")))
    results["post_hoc"]["crt"] = {"weights": "retrained_own_class_balanced.npz", "top1": 0.5}
    _write_json(os.path.join(model_dir, "results.json"), results)
    path, tau = export.export_run(model_dir, str(tmp_path / "out"), classifier="crt")
    assert tau == 0.0  # Not the recorded N_c^tau tau, which belongs to the trained classifier.
    metadata = json.load(open(os.path.join(path, export.METADATA_FILE)))
    assert metadata["classifier"] == "crt" and metadata["classifier_weights"].endswith(".npz")
    outputs = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(exported.images))
    expected = features @ kernel + bias
    np.testing.assert_allclose(outputs["logits"].numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(outputs["classes"].numpy(), expected.argmax(-1))
    trained = exported.model.predict(exported.images, verbose=0)
    assert not np.allclose(outputs["logits"].numpy(), trained, atol=1e-2)  # The head was replaced.
    # With re-estimated batch-norm statistics (crt_bn), the export carries them too.
    statistics = {
        name: (mean + 0.3, variance * 1.5)
        for name, (mean, variance) in models.batch_norm_statistics(exported.model).items()
    }
    rundir.write_classifier(
        os.path.join(model_dir, "retrained_own_bn_class_balanced.npz"), kernel, bias, statistics
    )
    results["post_hoc"]["crt_bn"] = {"weights": "retrained_own_bn_class_balanced.npz", "top1": 0.5}
    _write_json(os.path.join(model_dir, "results.json"), results)
    path, _ = export.export_run(model_dir, str(tmp_path / "out"), classifier="crt_bn")
    shifted = keras.models.clone_model(exported.model)
    shifted.set_weights(exported.model.get_weights())
    models.set_batch_norm_statistics(shifted, statistics)
    expected = models.feature_extractor(shifted).predict(exported.images, verbose=0) @ kernel + bias
    outputs = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(exported.images))
    np.testing.assert_allclose(outputs["logits"].numpy(), expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(expected, features @ kernel + bias, atol=1e-2)  # The statistics mattered.
    # Weights of another width are refused, naming the file.
    rundir.write_classifier(os.path.join(model_dir, "retrained_own_class_balanced.npz"), kernel[:-1], bias)
    with pytest.raises(UserError, match=r"retrained_own_class_balanced.npz: a classifier kernel"):
        export.export_run(model_dir, str(tmp_path / "out"), classifier="crt")


def test_logit_adjustment_is_served_at_its_recorded_tau(exported, tmp_path):
    # --calibration=logit_adjustment: calibrated_logits = logits - tau log pi_c at results.json's
    # post_hoc.logit_adjustment.tau (not nc_tau's), in every signature; cdt_export.json says which.
    model_dir = str(tmp_path / "run")
    shutil.copytree(exported.model_dir, model_dir)
    results = json.load(open(os.path.join(model_dir, "results.json")))
    results["post_hoc"]["logit_adjustment"] = {"tau": 0.46, "selected_on": "holdout of selection_run"}
    _write_json(os.path.join(model_dir, "results.json"), results)
    result = _python(
        "-m",
        "cdt_tf.export",
        f"--model_dir={model_dir}",
        f"--export_dir={tmp_path / 'out'}",
        "--calibration=logit_adjustment",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    path = str(tmp_path / "out" / "1")
    assert f"Exported {path} (logit_adjustment, tau=0.46)" in result.stdout
    metadata = json.load(open(os.path.join(path, export.METADATA_FILE)))
    assert metadata["calibration"] == "logit_adjustment" and metadata["tau"] == 0.46
    assert "post_hoc.logit_adjustment.tau, selected on holdout of selection_run" in metadata["tau_source"]
    loaded = tf.saved_model.load(path).signatures
    logits = exported.model.predict(exported.images, verbose=0).astype(np.float64)
    log_prior = np.log(np.array(CLASS_COUNTS, np.float64) / sum(CLASS_COUNTS))
    images = tf.constant(exported.images)
    for outputs, tau in (
        (loaded["serving_default"](images=images), 0.46),
        (loaded["serve_with_tau"](images=images, tau=tf.constant(1.5)), 1.5),
    ):
        expected = logits - tau * log_prior
        np.testing.assert_allclose(outputs["calibrated_logits"].numpy(), expected, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(outputs["classes"].numpy(), expected.argmax(-1))
        np.testing.assert_allclose(outputs["probabilities"].numpy(), _softmax(expected), atol=1e-5)
    # tau 1.5 moves predictions to the tail, away from the plain argmax.
    assert (expected.argmax(-1) != logits.argmax(-1)).any()
    # An unknown calibration is refused by the flag parser, one line, nothing written.
    bad = _python("-m", "cdt_tf.export", f"--model_dir={model_dir}", "--calibration=ncm")
    assert bad.returncode != 0 and "--calibration" in bad.stderr and "Traceback" not in bad.stderr


def test_export_cli_on_a_missing_model_dir_is_a_one_line_error(tmp_path):
    result = _python("-m", "cdt_tf.export", f"--model_dir={tmp_path / 'missing'}", f"--export_dir={tmp_path}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("cdt_tf: error:")]
    assert len(errors) == 1 and "does not exist" in errors[0], result.stderr
    assert os.listdir(tmp_path) == []


def test_pure_helpers(tmp_path):
    assert export.default_tau({"post_hoc": {"nc_tau": {"tau": 0.3}}})[0] == 0.3
    assert export.default_tau({})[0] == 0.0
    assert export.next_version(str(tmp_path / "none")) == 1
    for name in ("1", "7", "notes", ".tmp-export-x"):
        os.makedirs(tmp_path / name)
    assert export.next_version(str(tmp_path)) == 8
    with pytest.raises(UserError, match="single lines"):
        export.check_class_names(["a", "b\nc"])


def test_next_version_counts_what_tf_serving_reads_as_a_version(tmp_path):
    # TF Serving reads a version from a directory name with strings::safe_strto64: leading zeros,
    # a "-" and surrounding spaces allowed, ASCII digits only, within int64.
    for name, version in (("1", 1), ("12", 12), ("05", 5), ("007", 7), (" 7", 7), ("8\n", 8), ("-3", -3)):
        assert export.parse_version(name) == version, name
    assert export.parse_version(str(2**63 - 1)) == 2**63 - 1
    for name in (
        "notes",
        ".tmp-export-x",
        "",
        "\u00b2",
        "\u0663",
        "1e3",
        "+7",
        "1_0",
        "0x1",
        str(2**63),
        "9" * 20,
    ):
        assert export.parse_version(name) is None, repr(name)
    os.makedirs(tmp_path / "05")
    # "05" is version 5 to TF Serving: a new "1".."5" would be older than it (or a duplicate).
    assert export.next_version(str(tmp_path)) == 6
    for name in ("\u00b2", "9" * 20, "-3", "notes"):  # Not versions, or below 1.
        os.makedirs(tmp_path / name)
    assert export.next_version(str(tmp_path)) == 6
    os.makedirs(tmp_path / "negative" / "-3")
    assert export.next_version(str(tmp_path / "negative")) == 1
    os.makedirs(tmp_path / str(2**63 - 1))
    with pytest.raises(UserError, match="the largest TF Serving reads"):
        export.next_version(str(tmp_path))


def test_evaluate_export_scores_an_image_folder_through_serve_image_bytes(exported, tmp_path):
    # Class folders named as the export names its classes (one with a space), labels 0..9, 0, 1.
    labels = np.arange(len(exported.images)) % 10
    for i, (image, label) in enumerate(zip(exported.images, labels, strict=True)):
        folder = tmp_path / "test" / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        tf.io.write_file(str(folder / f"{i:04d}.png"), tf.io.encode_png(image))
    outputs = tf.saved_model.load(exported.path).signatures["serving_default"](
        images=tf.constant(exported.images)
    )
    expected = outputs["classes"].numpy() == labels
    assert 0 < expected.mean() < 1  # Neither all right nor all wrong: the count is checked.
    tool = os.path.join("tools", "evaluate_export.py")
    result = _python(tool, f"--export={exported.path}", f"--images={tmp_path / 'test'}", "--batch_size=5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"top-1 {100 * expected.mean():.2f}% on 12 images" in result.stdout, result.stdout
    assert f"  zero: {100 * expected[labels == 0].mean():.1f}% of 2" in result.stdout, result.stdout
    # A folder that is not a class of the export: one line, exit 2.
    (tmp_path / "test" / "ten").mkdir()
    result = _python(tool, f"--export={exported.path}", f"--images={tmp_path / 'test'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "folder(s) ['ten'] are not classes of the export" in result.stderr.strip().splitlines()[-1]
    result = _python(tool, f"--export={exported.export_dir}", f"--images={tmp_path / 'test'}")
    assert result.returncode == 2 and "pass <export_dir>/<version>" in result.stderr, result.stderr[-3000:]
