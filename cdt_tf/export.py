r"""SavedModel export for TensorFlow Serving: preprocessing, the trained network and a calibration
(N_c^tau, or logit adjustment with --calibration=logit_adjustment) in one graph.

  python -m cdt_tf.export --model_dir=runs/cifar10_lt100_cdt --export_dir=exports/cdt
  python -m cdt_tf.export --model_dir=runs/cifar10_lt100_cdt --export_dir=exports/cdt --tau=0.5
  # CDT+'s prediction: logit adjustment at the tau its selection run chose on validation.
  python -m cdt_tf.export --model_dir=runs/cifar10_lt100_cdt_plus --calibration=logit_adjustment
  # The network with the classifier cdt_tf.retrain_classifier retrained (cRT; crt_las: with LAS;
  # crt_las_shift: MiSLAS's stage 2 with its shifted batch norms; wb: weight balancing's stage 2).
  python -m cdt_tf.export --model_dir=runs/cifar10_lt100_cdt --export_dir=exports/cdt --classifier=crt

Writes the next TF Serving version directory `<export_dir>/<N>/` (1, 2, ...; an existing version is
never touched): saved_model.pb, variables/, assets/class_names.txt (one name per line, read by the
graph) and cdt_export.json (calibration, tau, class counts, source run). The directory is written under a
temporary name and renamed when complete, so a server watching export_dir never sees half of it.
N is 1 + the largest version already there, counting every name TF Serving reads as a version
(see parse_version: "05" is version 5, so the next is 6); N is always written plainly ("6").

Signatures (every output is batched, B = the number of images):
  serving_default     images uint8 [B, H, W, 3]
  serve_image_bytes   image_bytes string [B] (JPEG/PNG/GIF/BMP file contents; REST: {"b64": ...})
  serve_with_tau      images uint8 [B, H, W, 3], tau float32 [] (scalar)
  -> logits float32 [B, C] (raw decision values), calibrated_logits float32 [B, C] (logits / N_c^tau;
     with --calibration=logit_adjustment, logits - tau log pi_c, pi_c = N_c / N the training prior),
     probabilities float32 [B, C] (softmax of calibrated_logits), classes int64 [B] (their argmax),
     class_names string [B] (the name of classes).
An empty batch (B = 0: images [0, H, W, 3], image_bytes []) returns empty outputs ([0, C], [0]).
image_bytes must be a vector: a scalar string is refused ("Shape of tensor image_bytes [] is not
compatible with expected shape [?]"); send a batch of one, [data].

tau must lie in cdt_tf.calibration.TAU_RANGE ([0, 5]): --tau, a recorded tau and serve_with_tau's
tau outside it are refused. calibrated_logits is exactly logits / N_c^tau unless N_max^tau > e^60
(more than 162,754 images in a class), where it is that times a positive constant so that nothing
underflows (see NcTauCalibration); classes is always the argmax of the calibrated rule.

Images of another size than the model's are resized (bilinear, rounded to uint8 levels), as the
data loader resized the training and test images (cdt_tf.datasets.decode_images). tau defaults to
results.json's post_hoc.<calibration>.tau (the tau selected for the run: on the test set, a held-out
or validation split, or --tau_from's run, as its selected_on says), else 0 (plain argmax); with a
retrained classifier (--classifier=crt, crt_las, crt_bn, crt_las_bn, crt_shift, crt_las_shift or wb),
to 0. CDT's
temperatures are a training device only and are not part of the graph.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile

from absl import flags, logging

from cdt_tf import catalog, cli, rundir
from cdt_tf.errors import UserError
from cdt_tf.serving_module import build_serving_module

SIGNATURES = ("serving_default", "serve_image_bytes", "serve_with_tau")
# --classifier: the run's own, or a retrained one named by its results.json post_hoc entry.
CLASSIFIERS = ("trained",) + catalog.SECOND_STAGES
CLASS_NAMES_FILE = "class_names.txt"
METADATA_FILE = "cdt_export.json"
INT64_MAX = 2**63 - 1
# A directory name TF Serving parses as a version (strings::safe_strto64; C isspace is [ \t\n\v\f\r]).
_VERSION_NAME = re.compile(r"[ \t\n\v\f\r]*-?[0-9]+[ \t\n\v\f\r]*")


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
        "tau of --calibration in serving_default and serve_image_bytes, within "
        "cdt_tf.calibration.TAU_RANGE, 0 to 5 (default: results.json's post_hoc.<calibration>.tau, "
        "else 0).",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "calibration",
        "nc_tau",
        catalog.CALIBRATIONS,
        "The rule the signatures apply to the logits: nc_tau (logits / N_c^tau, the paper's eq. 5) or "
        "logit_adjustment (logits - tau log pi_c; CDT+'s prediction).",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "classifier",
        "trained",
        CLASSIFIERS,
        "The classifier to serve: the run's own (trained), or the one `python -m "
        "cdt_tf.retrain_classifier` retrained on its frozen features (crt; crt_las with label-aware "
        "smoothing; *_bn with re-estimated batch-norm statistics, *_shift with MiSLAS's shifted ones, "
        "both carried by the export; wb: weight balancing's class-balanced, MaxNorm fine-tuning). A "
        "retrained classifier is served with tau 0 unless --tau says otherwise.",
        flag_values=flag_values,
    )
    flags.mark_flag_as_required("model_dir", flag_values=flag_values)


# ----------------------------------------------------------------------------- pure helpers


def default_tau(results: dict, calibration: str = "nc_tau") -> tuple[float, str]:
    """(tau, where it came from): results.json's post_hoc.<calibration>.tau when recorded, else 0."""
    entry = (results.get("post_hoc") or {}).get(calibration) or {}
    if entry.get("tau") is None:
        return 0.0, f"default (no post_hoc.{calibration}.tau in results.json)"
    selected_on = f", selected on {entry['selected_on']}" if entry.get("selected_on") else ""
    return float(entry["tau"]), f"results.json post_hoc.{calibration}.tau{selected_on}"


def parse_version(name: str) -> int | None:
    """The version number TensorFlow Serving reads from a directory name under its base path, else None.

    TF Serving (FileSystemStoragePathSource) takes every name that strings::safe_strto64 parses:
    ASCII digits with an optional "-", leading zeros ("05" is version 5) and surrounding spaces,
    within int64. Other names ("notes", ".tmp-export-x", "²", "1e3", 2**63) are not versions.
    """
    if not _VERSION_NAME.fullmatch(name):
        return None
    version = int(name)
    return version if -(2**63) <= version <= INT64_MAX else None


def next_version(export_dir: str) -> int:
    """1 + the largest version (parse_version) under export_dir; 1 when there is none (or only <= 0).

    A name like "05" counts as the version TF Serving makes of it (5): a new "1".."5" next to it would
    be older than it for the server's latest-version policy, or a duplicate of version 5.
    """
    if not os.path.isdir(export_dir):
        return 1
    versions = [parse_version(name) for name in os.listdir(export_dir)]
    latest = max([0, *(v for v in versions if v is not None)])
    if latest >= INT64_MAX:
        raise UserError(f"{export_dir} already holds version {latest}, the largest TF Serving reads")
    return latest + 1


def check_class_names(class_names) -> list[str]:
    """Class names as one line each of assets/class_names.txt: non-empty, no line breaks."""
    names = [str(name) for name in class_names]
    bad = [name for name in names if not name or "\n" in name or "\r" in name]
    if bad:
        raise UserError(f"class names must be non-empty single lines, got {bad[:3]!r}")
    return names


def export_model(
    model, class_counts, class_names, export_dir: str, tau: float = 0.0, metadata=None, calibration="nc_tau"
) -> str:
    """Writes the next version directory of export_dir; returns its path.

    Args:
      model: a cdt_tf keras.Model (uint8-range images -> logits).
      class_counts: training images per class N_c [C].
      class_names: the C class names.
      export_dir: TF Serving's model base path (created if missing).
      tau: the tau of the calibration in serving_default and serve_image_bytes.
      metadata: extra JSON-able entries for cdt_export.json.
      calibration: "nc_tau" (logits / N_c^tau) or "logit_adjustment" (logits - tau log pi_c).
    """
    import tensorflow as tf

    from cdt_tf.calibration import check_tau

    try:
        tau = check_tau(tau)  # A finite number in calibration.TAU_RANGE.
    except ValueError as error:
        raise UserError(str(error)) from None
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
        module = build_serving_module(model, class_counts, names_path, tau, calibration)
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
            "calibration": calibration,
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


def retrained_classifier(model_dir: str, results: dict, classifier: str) -> tuple[str, dict]:
    """(weights file, post_hoc record) of a retrained classifier; one-line UserError when there is none."""
    if classifier not in CLASSIFIERS[1:]:
        raise UserError(f"--classifier must be one of {', '.join(CLASSIFIERS)}, got {classifier!r}")
    entry = (results.get("post_hoc") or {}).get(classifier) or {}
    weights = os.path.join(model_dir, entry.get("weights") or "")
    if not entry.get("weights") or not os.path.isfile(weights):
        method = catalog.retrain_method(classifier)
        options = "".join(
            option
            for condition, option in (
                (method != "crt", f" --method={method}"),
                ("_las" in classifier, " --smooth_head=0.3"),
                (classifier.endswith("_bn"), " --bn_stats=class_balanced"),
            )
            if condition
        )
        raise UserError(
            f"{model_dir} has no {classifier} classifier weights; retrain it first: python -m "
            f"cdt_tf.retrain_classifier --model_dir={model_dir}{options}"
        )
    return weights, entry


def export_run(
    model_dir: str,
    export_dir: str | None = None,
    tau: float | None = None,
    classifier: str = "trained",
    calibration: str = "nc_tau",
) -> tuple[str, float]:
    """Exports a finished run's model.keras (with a retrained classifier if asked); returns (path, tau)."""
    _, _, results = rundir.read_finished(model_dir)  # JSON only: a bad directory is refused before TF loads.
    weights, record = (
        (None, None) if classifier == "trained" else retrained_classifier(model_dir, results, classifier)
    )
    if tau is not None:
        tau_source = "--tau"
    elif weights:
        tau, tau_source = 0.0, f"0: the {classifier} classifier was retrained class-balanced"
    else:
        tau, tau_source = default_tau(results, calibration)
    class_counts, class_names = results.get("class_counts"), results.get("class_names")
    if not class_counts or not class_names:
        raise UserError(f"{model_dir}/results.json lacks class_counts or class_names; re-run its training")
    from cdt_tf.calibration import check_tau  # Imports Keras: after the run directory is known good.

    try:
        tau = check_tau(tau)  # The range NcTauCalibration and serve_with_tau accept.
    except ValueError as error:
        raise UserError(f"{tau_source}: {error}") from None
    model = rundir.load_model(os.path.join(model_dir, rundir.MODEL))  # Imports TensorFlow.
    metadata = {"tau_source": tau_source, "model_dir": os.path.abspath(model_dir), "classifier": classifier}
    if weights:
        from cdt_tf import models

        kernel, bias, batch_norm, affine = rundir.read_classifier(weights)
        try:
            if batch_norm:  # The statistics the classifier was trained on.
                models.set_batch_norm_statistics(model, batch_norm)
            if affine:  # Shift learning with --shift_affine: the gamma and beta learned with it.
                models.set_batch_norm_affine(model, affine)
            model = models.with_classifier(model, kernel, bias)
        except ValueError as error:
            raise UserError(f"{weights}: {error}; retrain the classifier of this run") from None
        metadata["classifier_weights"] = os.path.basename(weights)
        metadata["classifier_top1"] = record.get("top1")
    export_dir = export_dir or os.path.join(model_dir, "export")
    path = export_model(model, class_counts, class_names, export_dir, tau, metadata, calibration)
    return path, tau


def command(flag_values) -> None:
    """`python -m cdt_tf.export`: export a finished run and say where."""
    if not flag_values["verbosity"].present:
        # TensorFlow's INFO lines about the save name the staging directory, not the export.
        logging.set_verbosity(logging.WARNING)
    f = flag_values
    path, tau = export_run(f.model_dir, f.export_dir, f.tau, f.classifier, f.calibration)
    held = "" if f.classifier == "trained" else f" with the {f.classifier} classifier"
    print(f"Exported {path} ({f.calibration}, tau={tau:g}){held}; signatures: {', '.join(SIGNATURES)}")
    print(f"Inspect: saved_model_cli show --dir {path} --all")


def run() -> None:
    cli.run(define_flags, command)


if __name__ == "__main__":
    run()
