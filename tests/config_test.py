"""Config: validation, the flag vocabulary against the modules, and run-directory comparison."""

from __future__ import annotations

import dataclasses
import sys

import pytest
from absl import flags

from cdt_tf import catalog
from cdt_tf import config as config_lib
from cdt_tf.errors import UserError
from conftest import run_command


def _config(**overrides):
    return config_lib.Config(dataset="digits", model_dir="/tmp/run", **overrides)


def test_defaults_are_the_paper_recipe():
    config = _config().validate()
    assert (config.epochs, config.batch_size, config.learning_rate, config.momentum) == (200, 128, 0.1, 0.9)
    assert config.weight_decay == 2e-4 and config.warmup_epochs == 5
    assert config.decay_epochs == (160, 180) and config.decay_multipliers == (0.01, 0.0001)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"imbalance_ratio": 0.5}, "--imbalance_ratio"),
        ({"imbalance_ratio": float("nan")}, "--imbalance_ratio"),
        ({"gamma": -0.1}, "--gamma"),
        ({"gamma": float("nan")}, "--gamma"),
        ({"epochs": 0}, "--epochs"),
        ({"batch_size": 0}, "--batch_size"),
        ({"learning_rate": 0.0}, "--learning_rate"),
        ({"decay_epochs": (10,), "decay_multipliers": ()}, "same length"),
        ({"decay_epochs": (10, 10), "decay_multipliers": (0.1, 0.1)}, "strictly increase"),
        ({"loss": "hinge"}, "hinge"),
        ({"dataset": "image_folder"}, "--data_dir"),
    ],
)
def test_validation_errors_name_the_flag(overrides, fragment):
    with pytest.raises(UserError, match=fragment.replace("-", r"\-")):
        dataclasses.replace(_config(), **overrides).validate()


@pytest.mark.parametrize(
    "overrides, name, value",
    [
        ({"gamma": float("inf")}, "gamma", "inf"),  # Was "--gamma must be >= 0, got inf".
        ({"imbalance_ratio": float("inf")}, "imbalance_ratio", "inf"),
        ({"learning_rate": float("inf")}, "learning_rate", "inf"),  # Was accepted.
        ({"weight_decay": float("nan")}, "weight_decay", "nan"),
        ({"ldam_scale": float("inf")}, "ldam_scale", "inf"),
        ({"la_tau": float("-inf")}, "la_tau", "-inf"),
        ({"decay_multipliers": (0.1, float("nan"))}, "decay_multipliers", "nan"),
    ],
)
def test_non_finite_numbers_are_refused_as_such(overrides, name, value):
    with pytest.raises(UserError) as raised:
        dataclasses.replace(_config(), **overrides).validate()
    assert str(raised.value) == f"--{name} must be a finite number, got {value}"


def test_help_topics_name_flags_in_definition_order():
    values = flags.FlagValues()
    config_lib.define_flags(values)
    names = list(values)
    starts = [names.index(first) for _, first in config_lib.HELP_TOPICS]
    assert starts[0] == 0 and starts == sorted(starts)


def test_auto_model_and_augmentation():
    assert _config().resolved_model == "digits_convnet" and _config().resolved_augmentation == "none"
    cifar = dataclasses.replace(_config(), dataset="cifar10")
    assert cifar.resolved_model == "resnet32" and cifar.resolved_augmentation == "crop_flip"


def test_differences_ignore_only_resumable_fields():
    config = _config()
    stored = {**config.to_dict(), "model_dir": "/elsewhere", "eval_every": 3}
    assert config.differences(stored) == []
    assert config.differences({**stored, "gamma": 0.5}) == ["gamma"]
    assert config.differences({**stored, "new_field": 1}) == ["new_field"]


def test_a_run_stored_before_conv_padding_existed_used_same_padding():
    config = _config()
    assert config.conv_padding == "symmetric"
    legacy = {k: v for k, v in config.to_dict().items() if k != "conv_padding"}
    # Resuming it with today's default would put its weights into another architecture: refused.
    assert config.differences(legacy) == ["conv_padding"]
    assert dataclasses.replace(config, conv_padding="same").differences(legacy) == []
    assert config_lib.Config.stored_value(legacy, "conv_padding") == "same"
    assert config_lib.Config.stored_value(legacy, "gamma") == config.gamma


def test_from_flags_parses_lists():
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    flag_values(
        [
            "prog",
            "--dataset=digits",
            "--model_dir=/tmp/x",
            "--decay_epochs=3,7",
            "--decay_multipliers=0.1,0.01",
        ]
    )
    config = config_lib.Config.from_flags(flag_values)
    assert config.decay_epochs == (3, 7) and config.decay_multipliers == (0.1, 0.01)
    assert config.to_dict()["decay_epochs"] == [3, 7]


def test_vocabulary_matches_the_modules():
    from cdt_tf import models

    for name in catalog.MODEL_NAMES:
        shape = (8, 8, 3) if name == "digits_convnet" else (32, 32, 3)
        assert models.build_model(name, 3, shape, (0.5,) * 3, (0.25,) * 3).output_shape == (None, 3)
    with pytest.raises(ValueError):
        models.build_model("resnet33", 3, (32, 32, 3), (0.5,) * 3, (0.25,) * 3)


def test_flag_errors_do_not_import_tensorflow():
    code = (
        "import sys; sys.argv = ['x']; import cdt_tf.config, cdt_tf.class_stats, cdt_tf.datasets; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    assert run_command(sys.executable, "-c", code).returncode == 0


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"sampler": "uniform"}, "uniform"),
        ({"loss": "ce", "gamma_schedule": "step", "gamma_epoch": 5}, "--gamma_schedule"),
        ({"loss": "cdt", "gamma_schedule": "step", "gamma_epoch": 0}, "--gamma_epoch"),
        ({"loss": "cdt", "gamma_schedule": "linear", "gamma_epoch": 200}, "--gamma_epoch"),
        ({"drw_epoch": 200}, "--drw_epoch"),
        ({"drw_epoch": -1}, "--drw_epoch"),
        ({"loss": "reweight", "drw_epoch": 10}, "--gamma_schedule=step"),
        ({"focal_gamma": -1.0}, "--focal_gamma"),
        ({"cb_beta": 1.0}, "--cb_beta"),
        ({"ldam_scale": 0.0}, "--ldam_scale"),
        ({"ldam_max_margin": -0.1}, "--ldam_max_margin"),
        ({"holdout_per_class": -1}, "--holdout_per_class"),
        ({"holdout_per_class": 3, "tau_from": "runs/h"}, "--tau_from"),
    ],
)
def test_baseline_flag_validation(overrides, fragment):
    with pytest.raises(UserError, match=fragment.replace("-", r"\-")):
        dataclasses.replace(_config(), **overrides).validate()


def test_auto_classifier_is_cosine_for_ldam_only():
    assert _config().resolved_classifier == "linear"
    assert dataclasses.replace(_config(), loss="ldam").resolved_classifier == "cosine"
    assert dataclasses.replace(_config(), loss="ldam", classifier="linear").resolved_classifier == "linear"


def test_fields_missing_from_an_older_config_count_as_defaults():
    config = _config()
    stored = {k: v for k, v in config.to_dict().items() if k not in ("sampler", "drw_epoch", "classifier")}
    assert config.differences(stored) == []
    assert dataclasses.replace(config, sampler="class_balanced").differences(stored) == ["sampler"]
    assert config.differences({**config.to_dict(), "tau_from": "runs/h"}) == []  # Post-hoc only.


def test_classifier_vocabulary_matches_models():
    from cdt_tf import models

    assert set(catalog.CLASSIFIERS) == set(models.CLASSIFIERS)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sam_rho": -0.05}, "--sam_rho must be >= 0 (0: off), got -0.05"),
        ({"sam_rho": float("inf")}, "--sam_rho must be a finite number, got inf"),
        ({"sam_rho": float("nan")}, "--sam_rho must be a finite number, got nan"),
        ({"sam_classes": "head"}, "unknown sam_classes 'head'; use one of ('all', 'tail')"),
        (
            {"sam_classes": "tail"},
            "--sam_classes=tail chooses what SAM flattens; give --sam_rho > 0 too (e.g. 0.05)",
        ),
        ({"sam_rho": 0.05, "sam_tail_threshold": 0}, "--sam_tail_threshold must be >= 1, got 0"),
        ({"max_norm": -1.0}, "--max_norm must be >= 0 (0: off), got -1.0"),
        ({"max_norm": float("inf")}, "--max_norm must be a finite number, got inf"),
        (
            {"max_norm": 0.1, "loss": "ldam"},
            "--max_norm constrains the linear classifier's weights; got --classifier=cosine (use "
            "--classifier=linear, or drop --max_norm)",
        ),
        (
            {"max_norm": 0.1, "classifier": "cosine"},
            "--max_norm constrains the linear classifier's weights; got --classifier=cosine (use "
            "--classifier=linear, or drop --max_norm)",
        ),
    ],
)
def test_sam_and_max_norm_errors(overrides, message):
    with pytest.raises(UserError) as raised:
        dataclasses.replace(_config(), **overrides).validate()
    assert str(raised.value) == message


def test_sam_and_max_norm_compose_with_every_loss():
    for loss in catalog.LOSSES:
        classifier = {"classifier": "linear"} if loss == "ldam" else {}
        dataclasses.replace(
            _config(), loss=loss, sam_rho=0.05, sam_classes="tail", max_norm=0.1, **classifier
        ).validate()
    # A run from before these flags resumes: their defaults are "off".
    stored = {
        k: v
        for k, v in _config().to_dict().items()
        if k not in ("sam_rho", "sam_classes", "sam_tail_threshold", "max_norm")
    }
    assert _config().differences(stored) == []
