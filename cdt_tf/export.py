r"""SavedModel export for TensorFlow Serving: preprocessing, the trained network and N_c^tau in one graph.

  python -m cdt_tf.export --model_dir=runs/cifar10_lt100_cdt --export_dir=exports/cdt
  python -m cdt_tf.export --model_dir=runs/cifar10_lt100_cdt --export_dir=exports/cdt --tau=0.5

Writes the next TF Serving version directory `<export_dir>/<N>/` (1, 2, ...; an existing version is
never touched): saved_model.pb, variables/, assets/class_names.txt (one name per line, read by the
graph) and cdt_export.json (tau, class counts, source run). The directory is written under a
temporary name and renamed when complete, so a server watching export_dir never sees half of it.

Signatures (every output is batched, B = the number of images):
  serving_default     images uint8 [B, H, W, 3]
  serve_image_bytes   image_bytes string [B] (JPEG/PNG/GIF/BMP file contents; REST: {"b64": ...})
  serve_with_tau      images uint8 [B, H, W, 3], tau float32 [] (scalar)
  -> logits float32 [B, C] (raw decision values), calibrated_logits float32 [B, C] (logits / N_c^tau),
     probabilities float32 [B, C] (softmax of calibrated_logits), classes int64 [B] (their argmax),
     class_names string [B] (the name of classes).

Images of another size than the model's are resized (bilinear, rounded to uint8 levels), as the
data loader resized the training and test images (cdt_tf.datasets.decode_images). tau defaults to
results.json's post_hoc.nc_tau.tau (the tau selected for the run), else 0 (plain argmax). CDT's
temperatures are a training device only and are not part of the graph.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's C++ start-up chatter out of the way.

from absl import app, flags, logging  # noqa: E402

from cdt_tf.errors import UserError  # noqa: E402

SIGNATURES = ("serving_default", "serve_image_bytes", "serve_with_tau")
OUTPUTS = ("logits", "calibrated_logits", "probabilities", "classes", "class_names")
CLASS_NAMES_FILE = "class_names.txt"
METADATA_FILE = "cdt_export.json"


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the flags of `python -m cdt_tf.export` in flag_values (called by `run`, not on import)."""
    define_string = functools.partial(flags.DEFINE_string, flag_values=flag_values)
    define_string("model_dir", None, "Directory of a finished cdt_tf.main run.")
    define_string(
        "export_dir",
        None,
        "TF Serving model base path; the export goes to its next version <export_dir>/<N>/ "
        "(default <model_dir>/export).",
    )
    flags.DEFINE_float(
        "tau",
        None,
        "N_c^tau exponent of serving_default and serve_image_bytes "
        "(default: results.json's post_hoc.nc_tau.tau, else 0).",
        flag_values=flag_values,
    )
    flags.mark_flag_as_required("model_dir", flag_values=flag_values)


# ----------------------------------------------------------------------------- pure helpers


def default_tau(results: dict) -> tuple[float, str]:
    """(tau, where it came from): results.json's post_hoc.nc_tau.tau when recorded, else 0."""
    tau = ((results.get("post_hoc") or {}).get("nc_tau") or {}).get("tau")
    if tau is None:
        return 0.0, "default (no post_hoc.nc_tau.tau in results.json)"
    return float(tau), "results.json post_hoc.nc_tau.tau"


def next_version(export_dir: str) -> int:
    """1 + the largest integer-named subdirectory of export_dir (1 when there is none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(name) for name in os.listdir(export_dir) if name.isdigit()]
    return max(versions, default=0) + 1


def check_class_names(class_names) -> list[str]:
    """Class names as one line each of assets/class_names.txt: non-empty, no line breaks."""
    names = [str(name) for name in class_names]
    bad = [name for name in names if not name or "\n" in name or "\r" in name]
    if bad:
        raise UserError(f"class names must be non-empty single lines, got {bad[:3]!r}")
    return names


# ----------------------------------------------------------------------------- the graph


def build_serving_module(model, class_counts, class_names_path: str, tau: float):
    """A tf.Module holding the network, NcTauCalibration and the class-name table, with 3 signatures.

    Args:
      model: a cdt_tf keras.Model, uint8-range images [B, H, W, 3] -> logits [B, C].
      class_counts: training images per class N_c [C].
      class_names_path: a text file with the C class names, one per line (becomes the asset).
      tau: the N_c^tau exponent of serving_default and serve_image_bytes.

    Returns:
      The module; its attributes serving_default, serve_image_bytes and serve_with_tau are
      tf.functions with input signatures (see the module docstring).
    """
    import tensorflow as tf

    from cdt_tf.calibration import NcTauCalibration

    _, height, width, channels = model.inputs[0].shape
    if channels != 3 or height is None or width is None:
        raise UserError(f"the model takes images of shape {model.inputs[0].shape}; export needs [B, H, W, 3]")
    num_classes = model.outputs[0].shape[-1]
    if len(class_counts) != num_classes:
        raise UserError(f"{len(class_counts)} class counts for a model with {num_classes} classes")

    def to_model_size(images):
        """uint8 [..., h, w, 3] -> uint8 [..., H, W, 3], resized as cdt_tf.datasets.decode_images does."""
        shape = tf.shape(images)
        same_size = tf.logical_and(tf.equal(shape[-3], height), tf.equal(shape[-2], width))
        resized = lambda: tf.cast(tf.image.resize(images, [height, width]) + 0.5, tf.uint8)  # noqa: E731
        return tf.cond(same_size, lambda: images, resized)

    class ServingModule(tf.Module):
        def __init__(self):
            super().__init__(name="cdt_serving")
            self.model = model
            self.calibration = NcTauCalibration(class_counts, tau, name="nc_tau")
            self.class_names_file = tf.saved_model.Asset(class_names_path)
            self.class_names_table = tf.lookup.StaticHashTable(
                tf.lookup.TextFileInitializer(
                    self.class_names_file,
                    tf.int64,
                    tf.lookup.TextFileIndex.LINE_NUMBER,
                    tf.string,
                    tf.lookup.TextFileIndex.WHOLE_LINE,
                ),
                default_value="",
            )

        def outputs(self, images, tau=None):
            """The five outputs for uint8 images [B, h, w, 3] (eager or traced)."""
            # A loaded signature checks a request's dtype but not its shape, so check the channels
            # here, before the network, with a message that names the contract: tf.raw_ops.Shape is
            # the run-time shape (the static one says 3). A missing batch axis is caught too, by
            # tf.ensure_shape below where the rank check is folded away in a traced signature.
            shape = tf.raw_ops.Shape(input=images)
            valid = tf.logical_and(tf.equal(tf.raw_ops.Size(input=shape), 4), tf.equal(shape[-1], 3))
            check = tf.debugging.Assert(
                valid, ["images must be uint8 [batch, height, width, 3] (RGB); got shape", shape], summarize=8
            )
            with tf.control_dependencies([check]):
                images = tf.identity(images)
            images = tf.ensure_shape(to_model_size(images), [None, height, width, 3])
            logits = tf.cast(self.model(tf.cast(images, tf.float32), training=False), tf.float32)
            calibrated = self.calibration(logits) if tau is None else self.calibration(logits, tau=tau)
            classes = tf.argmax(calibrated, axis=-1, output_type=tf.int64)
            return {
                "logits": logits,
                "calibrated_logits": calibrated,
                "probabilities": tf.nn.softmax(calibrated, axis=-1),
                "classes": classes,
                "class_names": self.class_names_table.lookup(classes),
            }

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        def serving_default(self, images):
            return self.outputs(images)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_image_bytes(self, image_bytes):
            def decode(data):
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                image.set_shape([None, None, 3])
                return to_model_size(image)

            images = tf.map_fn(
                decode, image_bytes, fn_output_signature=tf.TensorSpec([height, width, 3], tf.uint8)
            )
            return self.outputs(images)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
                tf.TensorSpec([], tf.float32, name="tau"),
            ]
        )
        def serve_with_tau(self, images, tau):
            tau = tf.debugging.check_numerics(tau, "tau must be a finite float32 scalar")
            return self.outputs(images, tau)

    return ServingModule()


def export_model(model, class_counts, class_names, export_dir: str, tau: float = 0.0, metadata=None) -> str:
    """Writes the next version directory of export_dir; returns its path.

    Args:
      model: a cdt_tf keras.Model (uint8-range images -> logits).
      class_counts: training images per class N_c [C].
      class_names: the C class names.
      export_dir: TF Serving's model base path (created if missing).
      tau: the N_c^tau exponent of serving_default and serve_image_bytes.
      metadata: extra JSON-able entries for cdt_export.json.
    """
    import tensorflow as tf

    if not math.isfinite(tau):
        raise UserError(f"--tau must be a finite number, got {tau}")
    names = check_class_names(class_names)
    if len(names) != len(class_counts):
        raise UserError(f"{len(names)} class names for {len(class_counts)} class counts")
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise UserError(f"--export_dir {export_dir} is a file; pass a directory")
    os.makedirs(export_dir, exist_ok=True)
    # A non-numeric name: TF Serving ignores the directory until it is renamed to a version.
    staging = tempfile.mkdtemp(prefix=".tmp-export-", dir=export_dir)
    try:
        names_path = os.path.join(staging, CLASS_NAMES_FILE)  # Copied to assets/ by the save.
        with open(names_path, "w", encoding="utf-8") as f:
            f.write("".join(f"{name}\n" for name in names))
        module = build_serving_module(model, class_counts, names_path, tau)
        signatures = {name: getattr(module, name).get_concrete_function() for name in SIGNATURES}
        # Keras 3 variables reached only through the Keras model are restored by tf.saved_model.load
        # but not by the TF1-style loader of TF Serving and saved_model_cli ("Could not find variable
        # classifier/kernel"): track the tf.Variables the signatures read directly, as
        # keras.export.ExportArchive does.
        used = {id(v): v for function in signatures.values() for v in function.variables}
        module.graph_variables = list(used.values())
        saved = os.path.join(staging, "saved_model")
        tf.saved_model.save(module, saved, signatures=signatures)
        content = {
            "tau": float(tau),
            "class_counts": [int(c) for c in class_counts],
            "image_size": list(model.inputs[0].shape[1:3]),
            **(metadata or {}),
        }
        with open(os.path.join(saved, METADATA_FILE), "w") as f:
            json.dump(content, f, indent=2)
            f.write("\n")
        while True:
            version = next_version(export_dir)
            target = os.path.join(export_dir, str(version))
            # rename() would replace an empty directory of that name: never take an existing one.
            if not os.path.exists(target):
                os.rename(saved, target)
                return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_run(model_dir: str, export_dir: str | None = None, tau: float | None = None) -> tuple[str, float]:
    """Exports a finished run's model.keras; returns (version directory, tau used)."""
    from cdt_tf.analyze import read_run_dir  # Reads JSON only: a bad directory is refused before TF loads.

    _, _, results = read_run_dir(model_dir)
    if tau is None:
        tau, tau_source = default_tau(results)
    else:
        tau_source = "--tau"
    class_counts, class_names = results.get("class_counts"), results.get("class_names")
    if not class_counts or not class_names:
        raise UserError(f"{model_dir}/results.json lacks class_counts or class_names; re-run its training")
    from cdt_tf.analyze import load_model  # Imports TensorFlow.

    model = load_model(os.path.join(model_dir, "model.keras"))
    path = export_model(
        model,
        class_counts,
        class_names,
        export_dir or os.path.join(model_dir, "export"),
        tau,
        metadata={"tau_source": tau_source, "model_dir": os.path.abspath(model_dir)},
    )
    return path, tau


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    flag_values = flags.FLAGS
    if not flag_values["verbosity"].present:
        # TensorFlow's INFO lines about the save name the staging directory, not the export.
        logging.set_verbosity(logging.WARNING)
    try:
        path, tau = export_run(flag_values.model_dir, flag_values.export_dir, flag_values.tau)
    except UserError as error:
        print(f"cdt_tf: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"Exported {path} (tau={tau:g}); signatures: {', '.join(SIGNATURES)}")
    print(f"Inspect: saved_model_cli show --dir {path} --all")


def run():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
