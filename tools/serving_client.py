r"""Client for a cdt_tf export served by TensorFlow Serving: prints the top-k classes of each image.

  python tools/serving_client.py --images=cat.jpg,dog.png                         # REST, port 8501
  python tools/serving_client.py --images=cat.jpg --protocol=grpc --server=localhost:8500
  python tools/serving_client.py --images=batch.npy --tau=0.5 \
      --class_names_file=exports/cdt/1/assets/class_names.txt                     # serve_with_tau

Image files (JPEG, PNG, GIF, BMP) go as bytes to the `serve_image_bytes` signature (REST: {"b64": ...}).
.npy files hold uint8 images [H, W, 3] or [B, H, W, 3] and go to `serving_default`, or to
`serve_with_tau` with --tau. The response names only the top class; --class_names_file (the export's
assets/class_names.txt) names the other top-k classes too.

An empty --images is refused: TF Serving's REST API refuses a row-format request without instances
("No values in 'instances' array"), so build_rest_request refuses an empty batch (an .npy of zero
images) too; over gRPC such a batch is served and answers empty outputs. Bad flags and input stop
with one line `cdt_tf: error: ...` and exit status 2, as every cdt_tf command does.

REST needs only absl, NumPy and the standard library (no cdt_tf). gRPC needs tensorflow-serving-api, which
depends on `tensorflow` rather than `tensorflow-cpu`; install it without its dependencies:
`pip install --no-deps -r requirements-serving.txt` (grpcio and protobuf come with TensorFlow).
Request building (build_rest_request, build_grpc_request) is separate from sending, and tested
against the exported signatures (tests/export_test.py).
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import urllib.error
import urllib.request
from typing import NoReturn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # The gRPC path imports TensorFlow.

import numpy as np
from absl import app, flags

DEFAULT_PORTS = {"rest": 8501, "grpc": 8500}
ERROR_PREFIX = "cdt_tf: error:"  # cdt_tf.cli's, as its messages (tests/cli_test.py compares them).
_MISSING_REQUIRED = re.compile(r"flag --(\w+)=None: Flag --\1 must have a value other than None\.")


def fail(message) -> NoReturn:
    """cdt_tf.cli.fail without cdt_tf: the message as one line on stderr, exit status 2."""
    print(f"{ERROR_PREFIX} {' '.join(str(message).splitlines())}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with cdt_tf.cli's one-line errors (absl's own says FATAL and exits 1)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        lines = [_MISSING_REQUIRED.sub(r"--\1 is required", line) for line in str(error).splitlines()]
        fail(f"{'; '.join(lines)}; see --help")


# ----------------------------------------------------------------------------- inputs


def check_images(images) -> np.ndarray:
    """uint8 images [B, H, W, 3] (a single [H, W, 3] image gains the batch axis); ValueError otherwise."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0..255), got {images.dtype}; convert with .astype(np.uint8)")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [batch, height, width, 3] (RGB), got shape {list(images.shape)}")
    return images


def read_inputs(paths, tau: float | None = None) -> tuple[str, dict, list[str]]:
    """(signature name, named inputs, a label per example) for image files or .npy files (not both).

    Image files: ("serve_image_bytes", {"image_bytes": [bytes, ...]}, paths). .npy files:
    ("serving_default", {"images": uint8 [B, H, W, 3]}, ["a.npy[0]", ...]), or with tau
    ("serve_with_tau", {"images": ..., "tau": float}, ...). An empty list is refused (ValueError).
    """
    if not paths:
        raise ValueError("--images is empty: name image files (JPEG/PNG/GIF/BMP) or .npy files")
    arrays = [path for path in paths if path.endswith(".npy")]
    if arrays and len(arrays) != len(paths):
        raise ValueError("pass either image files or .npy files, not both")
    if arrays:
        batches = [check_images(np.load(path)) for path in arrays]
        labels = [
            f"{path}[{i}]" for path, batch in zip(arrays, batches, strict=True) for i in range(len(batch))
        ]
        inputs = {"images": np.concatenate(batches)}
        if tau is None:
            return "serving_default", inputs, labels
        return "serve_with_tau", {**inputs, "tau": float(tau)}, labels
    if tau is not None:
        raise ValueError("--tau needs uint8 .npy inputs (serve_with_tau takes decoded images)")
    contents = []
    for path in paths:
        with open(path, "rb") as f:
            contents.append(f.read())
    return "serve_image_bytes", {"image_bytes": contents}, list(paths)


# ----------------------------------------------------------------------------- requests


def _json_value(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def build_rest_request(signature_name: str, inputs: dict) -> dict:
    """The JSON body of POST /v1/models/<name>:predict.

    Batched inputs (a list of file contents, an array [B, ...]) go in the row format
    ("instances": one {name: value} per example; bytes as {"b64": ...}). A signature with a
    scalar input (serve_with_tau's tau) needs the columnar format ("inputs": {name: value}).

    Args:
      signature_name: the SignatureDef to run.
      inputs: name -> list of bytes, NumPy array [B, ...] or a Python scalar.
    """
    scalars = {name for name, value in inputs.items() if np.ndim(value) == 0 and not isinstance(value, list)}
    if scalars:
        columns = {
            name: [_json_value(v) for v in value] if isinstance(value, list) else _json_value(value)
            for name, value in inputs.items()
        }
        return {"signature_name": signature_name, "inputs": columns}
    sizes = {len(value) for value in inputs.values()}
    if len(sizes) != 1:
        raise ValueError(f"batched inputs of different lengths: { {n: len(v) for n, v in inputs.items()} }")
    (size,) = sizes
    if size == 0:
        raise ValueError(
            "TF Serving's REST API refuses an empty batch (\"No values in 'instances' array\"); "
            "send at least one image, or use --protocol=grpc, which serves it"
        )
    instances = [{name: _json_value(value[i]) for name, value in inputs.items()} for i in range(size)]
    return {"signature_name": signature_name, "instances": instances}


def build_grpc_request(model_name: str, signature_name: str, inputs: dict, version: int | None = None):
    """A tensorflow_serving PredictRequest for the same inputs as build_rest_request.

    Imports tensorflow-serving-api (and TensorFlow) here, so the REST path works without them.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    for name, value in inputs.items():
        if isinstance(value, list):  # File contents: a string tensor [B].
            proto = tf.make_tensor_proto(value, dtype=tf.string, shape=[len(value)])
        elif isinstance(value, np.ndarray):
            proto = tf.make_tensor_proto(value)
        else:  # A Python float: a float32 scalar.
            proto = tf.make_tensor_proto(np.float32(value))
        request.inputs[name].CopyFrom(proto)
    return request


# ----------------------------------------------------------------------------- sending


def rest_url(server: str, model_name: str, version: int | None = None) -> str:
    versioned = f"/versions/{version}" if version is not None else ""
    return f"http://{server}/v1/models/{model_name}{versioned}:predict"


def send_rest(url: str, body: dict, timeout: float = 30.0) -> dict:
    """POSTs the JSON body; returns the decoded JSON answer (RuntimeError with the server's message)."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        raise RuntimeError(f"{url} answered {error.code}: {detail}") from error
    except urllib.error.URLError as error:
        raise RuntimeError(
            f"cannot reach {url}: {error.reason}; is tensorflow_model_server running?"
        ) from error


def parse_rest_response(response: dict) -> dict:
    """Output name -> NumPy array [B, ...], from the row ("predictions") or columnar ("outputs") format.

    An empty row-format answer ({"predictions": []}) names no outputs: it gives {}.
    """
    if "outputs" in response:
        return {name: np.asarray(value) for name, value in response["outputs"].items()}
    predictions = response["predictions"]
    if not predictions:
        return {}
    return {name: np.asarray([p[name] for p in predictions]) for name in predictions[0]}


def send_grpc(target: str, request, timeout: float = 30.0) -> dict:
    """Runs the PredictRequest on host:port; returns output name -> NumPy array."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout)
        except grpc.RpcError as error:
            raise RuntimeError(f"{target} answered {error.code().name}: {error.details()}") from error
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


# ----------------------------------------------------------------------------- output


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def format_predictions(outputs: dict, labels, top_k: int = 5, class_names=None) -> str:
    """One line per example: its label, then the top-k classes with their probabilities.

    Args:
      outputs: the export's outputs (probabilities [B, C], classes [B], class_names [B]).
      labels: what to call each example (file names).
      top_k: classes to show per example.
      class_names: all C names (assets/class_names.txt); without them the classes after the
        first are shown by index.
    """
    if not len(labels):
        return ""
    probabilities = np.asarray(outputs["probabilities"], np.float64)
    lines = []
    for i, label in enumerate(labels):
        order = np.argsort(-probabilities[i], kind="stable")[:top_k]
        shown = []
        for rank, c in enumerate(order):
            if class_names is not None:
                name = class_names[c]
            elif rank == 0 and int(outputs["classes"][i]) == c:
                name = _text(outputs["class_names"][i])
            else:
                name = f"class {c}"
            shown.append(f"{name} {probabilities[i, c]:.3f}")
        lines.append(f"{label}: {', '.join(shown)}")
    return "\n".join(lines)


def main(argv):
    flag_values = flags.FLAGS
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are written --name=value); see --help")
    try:
        signature_name, inputs, labels = read_inputs(flag_values.images, flag_values.tau)
        server = flag_values.server or f"localhost:{DEFAULT_PORTS[flag_values.protocol]}"
        if flag_values.protocol == "rest":
            body = build_rest_request(signature_name, inputs)
            outputs = parse_rest_response(
                send_rest(rest_url(server, flag_values.model_name, flag_values.version), body)
            )
        else:
            request = build_grpc_request(flag_values.model_name, signature_name, inputs, flag_values.version)
            outputs = send_grpc(server, request)
        class_names = None
        if flag_values.class_names_file:
            with open(flag_values.class_names_file, encoding="utf-8") as f:
                class_names = f.read().splitlines()
    except (OSError, ValueError, RuntimeError) as error:
        fail(error)
    print(format_predictions(outputs, labels, flag_values.top_k, class_names))


def define_flags() -> None:
    flags.DEFINE_list("images", None, "Image files (JPEG/PNG/GIF/BMP), or .npy files of uint8 [B, H, W, 3].")
    flags.DEFINE_enum("protocol", "rest", ("rest", "grpc"), "rest (port 8501) or grpc (port 8500).")
    flags.DEFINE_string("server", None, "host:port of tensorflow_model_server (default localhost:8501/8500).")
    flags.DEFINE_string("model_name", "cdt", "The server's --model_name.")
    flags.DEFINE_integer("version", None, "Model version to ask for (default: the server's latest).")
    flags.DEFINE_float("tau", None, "N_c^tau exponent for serve_with_tau (.npy inputs only).")
    flags.DEFINE_integer("top_k", 5, "Classes to print per image.")
    flags.DEFINE_string(
        "class_names_file", None, "The export's assets/class_names.txt, to name every top-k class."
    )
    flags.mark_flag_as_required("images")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
