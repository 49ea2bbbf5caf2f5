"""The run directory (--model_dir): every file's name, atomic JSON, prepare / refuse / finished, loading.

  config.json      the Config (flags) of the run, plus what it resolved when it started
                   (`resolved_precision`): a resumed run keeps it
  subset.json      the training subset (and held-out split): `RunData.subset_record`'s schema
  classes.json     file-based sources only: class index -> the dataset's category id and name
  metrics.jsonl    one JSON line per epoch (the epoch's logs and wall time)
  results.json     written last: top-1/5, per class, many/medium/few, post_hoc, precision, ...
  model.keras      the trained model (written when training ends, before the evaluation)
  backup/          keras.callbacks.BackupAndRestore's state: a killed run resumes from here
  checkpoints/     weights every --checkpoint_every epochs
  logs/            TensorBoard
  post_hoc.png     top-1 against tau of each post-hoc rule
  .lock            the exclusive lock of the process that writes the run (`exclusive`)

What a run directory guarantees (README "The run directory"; the means are in `durability`): one
writer at a time (`durability.exclusive`: an flock the kernel drops when its holder dies, so a killed
run leaves no stale lock); every state
file written under a temporary name, flushed and renamed (`write_json`, the backup, model.keras), so a
kill or a full disk costs at most the epoch in progress; backup/ removed only once model.keras is
complete and re-readable.

The JSON readers turn a missing, unreadable or malformed file into one UserError line; nothing here
imports TensorFlow at module level, so a bad directory is refused before TensorFlow loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil

import numpy as np

from cdt_tf import durability
from cdt_tf.config import Config
from cdt_tf.errors import UserError

CONFIG = "config.json"
SUBSET = "subset.json"
CLASSES = "classes.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
MODEL = "model.keras"
BACKUP = "backup"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
POST_HOC_PLOT = "post_hoc.png"
LOCK = durability.LOCK


def write_json(path: str, value) -> None:
    """Writes JSON atomically: a killed process or a full disk never leaves a half-written file."""
    temporary = f"{path}.tmp"
    try:
        with open(temporary, "w") as f:
            json.dump(value, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        durability.fault_point("json")
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    os.replace(temporary, path)
    durability.sync_directory(os.path.dirname(path) or ".")


def write_classifier(
    path: str, kernel, bias, batch_norm: dict | None = None, affine: dict | None = None
) -> None:
    """Writes a linear classifier (kernel [D, C], bias [C]) as .npz, atomically.

    batch_norm: {layer name: (moving mean, moving variance)} the classifier was trained with, when
    they are not the run's own (re-estimated or shifted statistics); stored beside the weights as
    bn/<name>/moving_mean and bn/<name>/moving_variance.
    affine: {layer name: (gamma, beta)} of batch norms whose affine parameters were learned with the
    classifier (shift learning with --shift_affine), as bn/<name>/gamma and bn/<name>/beta.
    """
    arrays = {"kernel": np.asarray(kernel, np.float32), "bias": np.asarray(bias, np.float32)}
    for group, keys in ((batch_norm, ("moving_mean", "moving_variance")), (affine, ("gamma", "beta"))):
        for name, values in (group or {}).items():
            for key, value in zip(keys, values, strict=True):
                arrays[f"bn/{name}/{key}"] = np.asarray(value, np.float32)
    temporary = f"{path}.tmp.npz"
    np.savez(temporary, **arrays)
    os.replace(temporary, path)


def read_classifier(path: str) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """(kernel [D, C], bias [C], batch-norm statistics or {}, batch-norm (gamma, beta) or {}) of a file
    `write_classifier` wrote (older files, without gamma and beta, read the same).

    One-line UserError when it is missing or unusable.
    """
    try:
        with np.load(path) as content:

            def layers(key: str) -> list[str]:
                return sorted(
                    {k.split("/")[1] for k in content.files if k.startswith("bn/") and k.endswith(key)}
                )

            batch_norm = {
                name: (content[f"bn/{name}/moving_mean"], content[f"bn/{name}/moving_variance"])
                for name in layers("/moving_mean")
            }
            affine = {
                name: (content[f"bn/{name}/gamma"], content[f"bn/{name}/beta"]) for name in layers("/gamma")
            }
            return content["kernel"], content["bias"], batch_norm, affine
    except (OSError, KeyError, ValueError) as error:
        raise UserError(f"cannot read the classifier weights {path} ({error}); retrain them") from None


def read_metrics(model_dir: str) -> list:
    """The lines of a run's metrics.jsonl, parsed ([] without the file; a line cut by a kill is skipped)."""
    path = os.path.join(model_dir, METRICS)
    lines = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    lines.append(json.loads(line))
                except json.JSONDecodeError:  # A line cut by a kill.
                    continue
    return lines


def trim_metrics(path: str, finished_epochs: int) -> None:
    """Keeps the metrics.jsonl lines of epochs 1..finished_epochs (the ones the restored backup holds).

    The line of an epoch is written before its backup, so a kill between the two leaves a line the
    backup lacks: the resumed run redoes that epoch and writes its line again, once. Lines cut by a
    kill are dropped. The file is rewritten atomically, and only when something goes.
    """
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            epoch = json.loads(line).get("epoch", 0)
        except (json.JSONDecodeError, AttributeError):
            continue
        if epoch <= finished_epochs:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        temporary = f"{path}.tmp"
        with open(temporary, "w") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)


def training_time(model_dir: str) -> dict | None:
    """What metrics.jsonl says of the training's wall time, over every start of the run.

    Returns {"epochs": epochs logged, "epoch_seconds": their summed wall time (an epoch logged twice,
    by a start killed after logging it, counts once: its last line), "starts": how many processes
    trained it (None when the lines predate the "started" field)}, or None without metrics.jsonl.
    """
    if not os.path.exists(os.path.join(model_dir, METRICS)):
        return None
    lines = read_metrics(model_dir)
    last = {line["epoch"]: line for line in lines if isinstance(line, dict) and "epoch" in line}
    starts = {line["started"] for line in lines if isinstance(line, dict) and "started" in line}
    return {
        "epochs": len(last),
        "epoch_seconds": round(sum(float(line.get("seconds", 0)) for line in last.values()), 1),
        "starts": len(starts) or None,
    }


def read_json(path: str, what: str = "", remedy: str = ""):
    """The JSON content of a file; one-line UserError when it is missing or malformed.

    Args:
      path: the file.
      what: "object" to require a JSON object (dict), else any JSON value.
      remedy: what the user should do, appended to the message.
    """
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {path} ({error}){'; ' + remedy if remedy else ''}") from error
    if what == "object" and not isinstance(value, dict):
        raise UserError(
            f"{path} is unreadable (it holds a JSON {type(value).__name__}, not an object)"
            f"{'; ' + remedy if remedy else ''}"
        )
    return value


def config_from_dict(values: dict) -> Config:
    """The Config stored in a run's config.json (fields it lacks take Config.stored_value's values)."""
    names = {field.name for field in dataclasses.fields(Config)}
    legacy = {k: Config.stored_value(values, k) for k in Config.LEGACY_VALUES}
    values = {k: v for k, v in {**legacy, **values}.items() if k in names}
    try:
        values["decay_epochs"] = tuple(values.get("decay_epochs", ()))
        values["decay_multipliers"] = tuple(values.get("decay_multipliers", ()))
        return Config(**values).validate()
    except (TypeError, UserError) as error:
        raise UserError(f"config.json does not hold a valid cdt_tf config ({error})") from error


def prepare(config: Config) -> dict:
    """Creates model_dir and writes config.json, or checks that it holds this run; returns config.json.

    Raises UserError when the directory holds another run (other flags), or an unreadable config.json.
    """
    os.makedirs(config.model_dir, exist_ok=True)
    path = os.path.join(config.model_dir, CONFIG)
    if not os.path.exists(path):
        stored = config.to_dict()
        write_json(path, stored)
        return stored
    stored = read_json(path, "object", "use a new --model_dir")
    differences = config.differences(stored)
    if differences and not has_progress(config.model_dir):
        # A start that failed before its first epoch (e.g. --batch_size too large): nothing to keep.
        print(
            f"{config.model_dir} holds no finished epoch of its earlier config: starting it with these flags",
            flush=True,
        )
        stored = config.to_dict()
        write_json(path, stored)
        return stored
    if differences:
        shown = ", ".join(
            f"{k}: {Config.stored_value(stored, k)!r} -> {config.to_dict().get(k)!r}" for k in differences[:4]
        )
        raise UserError(
            f"--model_dir {config.model_dir} holds a run with another config ({shown}); "
            "use a new --model_dir, or the same flags to resume it"
        )
    return stored


def has_progress(model_dir: str) -> bool:
    """Whether a run directory holds anything trained: a finished epoch (metrics.jsonl or backup/), a
    checkpoint, model.keras or results.json."""
    if any(os.path.exists(os.path.join(model_dir, name)) for name in (MODEL, RESULTS)):
        return True
    for folder in (BACKUP, CHECKPOINTS):
        path = os.path.join(model_dir, folder)
        if os.path.isdir(path) and any(name.endswith(".h5") for name in os.listdir(path)):
            return True
    metrics = os.path.join(model_dir, METRICS)
    return os.path.exists(metrics) and os.path.getsize(metrics) > 0


def remove_backup(model_dir: str) -> None:
    """Removes backup/ once model.keras holds the trained weights (nothing to resume any more)."""
    backup = os.path.join(model_dir, BACKUP)
    if os.path.isdir(backup) and trained(model_dir):
        shutil.rmtree(backup, ignore_errors=True)


def backed_up_epochs(model_dir: str) -> int:
    """Epochs the run's backup holds (what a resume restores); 0 without a readable backup."""
    try:
        with open(os.path.join(model_dir, BACKUP, "training_metadata.json")) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def record(model_dir: str, **fields) -> None:
    """Adds what the run resolved when it started (Config.RECORDED_FIELDS) to its config.json."""
    path = os.path.join(model_dir, CONFIG)
    stored = read_json(path, "object", "use a new --model_dir")
    unknown = set(fields) - set(Config.RECORDED_FIELDS)
    if unknown:
        raise ValueError(f"not recorded fields: {sorted(unknown)}")
    write_json(path, {**stored, **fields})


def finished_results(model_dir: str) -> dict | None:
    """results.json of a finished run, or None while the run is not finished."""
    path = os.path.join(model_dir, RESULTS)
    if not os.path.exists(path):
        return None
    return read_json(
        path, "object", "delete it to evaluate the trained model again, or use a new --model_dir"
    )


def classifier_summary(results: dict, classifier: str, where: str) -> dict:
    """The test summary of one way to classify with a finished run's network.

    classifier: "argmax" (the logits as trained: results.json itself) or a key of its post_hoc
    section (nc_tau, logit_adjustment, crt_las, ...) whose record has per-class accuracy. Returns
    the record (top1, many_medium_few, per_class_accuracy, ...); a one-line UserError naming the
    classifiers `where` (the run directory) has when it lacks this one.
    """
    if classifier == "argmax":
        return results
    post_hoc = results.get("post_hoc") or {}
    entry = post_hoc.get(classifier) or {}
    if "per_class_accuracy" not in entry:
        have = ["argmax"] + sorted(k for k, v in post_hoc.items() if "per_class_accuracy" in (v or {}))
        raise UserError(
            f"{where} has no post_hoc.{classifier} with per-class accuracy; it has: {', '.join(have)}"
        )
    return entry


def trained(model_dir: str) -> bool:
    """Whether training finished (model.keras written); the evaluation may still be missing."""
    return os.path.exists(os.path.join(model_dir, MODEL))


def read_finished(model_dir: str) -> tuple[Config, dict, dict]:
    """(config, subset.json, results.json) of a finished run. Raises UserError naming what is missing.

    Reads only JSON files: a bad directory is refused before TensorFlow is imported.
    """
    if not model_dir or not os.path.isdir(model_dir):
        raise UserError(f"--model_dir {model_dir} does not exist; pass the directory of a cdt_tf.main run")
    config_path = os.path.join(model_dir, CONFIG)
    if not os.path.exists(config_path):
        raise UserError(f"{model_dir} holds no config.json: it is not a cdt_tf.main run directory")
    missing = [name for name in (MODEL, RESULTS) if not os.path.exists(os.path.join(model_dir, name))]
    if missing:
        raise UserError(
            f"{model_dir} holds an unfinished run (no {' or '.join(missing)}); "
            "finish it by running its training command again"
        )
    subset_path = os.path.join(model_dir, SUBSET)
    if not os.path.exists(subset_path):
        raise UserError(f"{model_dir} holds no subset.json, so its training subset cannot be checked")
    config = config_from_dict(read_json(config_path, "object", "use a new --model_dir"))
    subset = read_json(subset_path, "object")
    results = read_json(os.path.join(model_dir, RESULTS), "object")
    return config, subset, results


def load_model(path: str):
    """The trained keras.Model (uncompiled) of a run's model.keras."""
    import keras

    import cdt_tf.models  # noqa: F401  (registers the custom layers)

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a damaged or foreign file.
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"cannot load {path}: {first_line}") from error


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    """A finished run: its config, results.json, trained model and data (`run_data.RunData`)."""

    model_dir: str
    config: Config
    results: dict
    model: object  # keras.Model: images -> logits
    data: object  # run_data.RunData

    @property
    def class_counts(self) -> list[int]:
        return list(self.data.class_counts)

    @property
    def class_names(self) -> list[str]:
        return self.data.class_names


def load_finished(model_dir: str, data_dir: str | None = None) -> FinishedRun:
    """Reads a finished run and re-creates its data, the training subset checked against subset.json.

    Args:
      model_dir: the run directory.
      data_dir: read the data from here instead of the run's own --data_dir (moved data).
    """
    config, subset, results = read_finished(model_dir)
    if data_dir:
        config = dataclasses.replace(config, data_dir=data_dir)
    from cdt_tf import input_pipeline, run_data  # Imports TensorFlow: after the directory is known good.

    data = run_data.load(config)
    digest = input_pipeline.subset_hash(data.ids("train"))
    if digest != subset.get("hash"):
        raise UserError(
            f"the training subset re-created from {model_dir}/config.json differs from its subset.json "
            f"(hash {digest[:12]} != {str(subset.get('hash'))[:12]}); the data under --data_dir "
            f"({config.data_dir}) is not the data the run was trained on"
        )
    model = load_model(os.path.join(model_dir, MODEL))
    return FinishedRun(model_dir, config, results, model, data)


def plain(value):
    """JSON-ready: arrays to lists, NumPy scalars to Python numbers, NaN and inf to None."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    return value
