"""Tests of the warm-up + cosine learning-rate schedule and of --lr_schedule."""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from cdt_tf import catalog, train
from cdt_tf.config import Config
from cdt_tf.errors import UserError
from cdt_tf.schedules import WarmupCosineDecay, WarmupStepDecay

# 10 steps an epoch, 5 warm-up epochs (50 steps), 200 epochs (2,000 steps): 1,950 cosine steps.
STEPS, WARMUP, EPOCHS = 10, 5, 200


def cosine_schedule():
    return WarmupCosineDecay(0.1, steps_per_epoch=STEPS, warmup_epochs=WARMUP, epochs=EPOCHS)


def lr(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.1 * 1 / 50),  # Warm-up is per step: (t + 1) / 50 of the base rate.
        (9, 0.1 * 10 / 50),
        (24, 0.1 * 25 / 50),
        (49, 0.1),  # The last warm-up step reaches the base rate ...
        (50, 0.1),  # ... and the cosine starts from it.
        (50 + 1950 // 2, 0.05),  # Half-way through the cosine: half the base rate.
        (50 + 1950 // 4, 0.05 * (1 + math.cos(math.pi * (1950 // 4) / 1950))),
        (1999, 0.05 * (1 + math.cos(math.pi * 1949 / 1950))),  # The last step trained: nearly 0.
        (2000, 0.0),  # 0 at the end of --epochs ...
        (10**6, 0.0),  # ... and after it.
    ],
)
def test_values_at_warmup_mid_and_end(step, expected):
    np.testing.assert_allclose(lr(cosine_schedule(), step), expected, rtol=1e-5, atol=1e-9)


def test_decreases_after_warmup_and_stays_positive_while_training():
    values = [lr(cosine_schedule(), step) for step in range(50, 2000, 10)]
    assert all(b < a for a, b in zip(values, values[1:]))
    assert values[-1] > 0


def test_no_warmup_starts_at_the_base_rate():
    schedule = WarmupCosineDecay(0.2, steps_per_epoch=4, warmup_epochs=0, epochs=10)
    np.testing.assert_allclose([lr(schedule, s) for s in (0, 20, 40)], [0.2, 0.1, 0.0], rtol=1e-6, atol=1e-9)


def test_accepts_tensor_steps_inside_tf_function():
    schedule = cosine_schedule()
    step = tf.Variable(0, dtype=tf.int64)
    compiled = tf.function(lambda: schedule(step))
    values = []
    for s in (0, 49, 1025, 2000):
        step.assign(s)
        values.append(float(compiled()))
    np.testing.assert_allclose(values, [0.002, 0.1, 0.05, 0.0], rtol=1e-5, atol=1e-9)
    assert keras.ops.convert_to_numpy(schedule(tf.constant(3, tf.int32))).dtype == np.float32


def test_serialisation_round_trip_and_optimizer():
    schedule = cosine_schedule()
    assert schedule.get_config() == {
        "base_learning_rate": 0.1,
        "steps_per_epoch": STEPS,
        "warmup_epochs": WARMUP,
        "epochs": EPOCHS,
    }
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(restored, WarmupCosineDecay) and restored.get_config() == schedule.get_config()
    optimizer = keras.optimizers.SGD.from_config(keras.optimizers.SGD(learning_rate=schedule).get_config())
    assert isinstance(optimizer._learning_rate, WarmupCosineDecay)
    assert [lr(restored, s) for s in (0, 700, 1999)] == [lr(schedule, s) for s in (0, 700, 1999)]


@pytest.mark.parametrize(
    "arguments",
    [{"steps_per_epoch": 0}, {"warmup_epochs": 200}, {"warmup_epochs": -1}],
)
def test_bad_arguments_raise(arguments):
    with pytest.raises(ValueError):
        WarmupCosineDecay(0.1, **{"steps_per_epoch": 10, "warmup_epochs": 5, "epochs": 200, **arguments})


def _config(**overrides):
    return Config(dataset="digits", model_dir="/tmp/run", **overrides).validate()


def test_the_flag_picks_the_schedule():
    assert catalog.LR_SCHEDULES == ("step", "cosine")
    step = train.learning_rate_schedule(_config(), steps_per_epoch=10)
    assert isinstance(step, WarmupStepDecay) and step.get_config()["decay_epochs"] == [160, 180]
    cosine = train.learning_rate_schedule(_config(lr_schedule="cosine", epochs=30, warmup_epochs=2), 10)
    assert isinstance(cosine, WarmupCosineDecay)
    assert cosine.get_config() == {
        "base_learning_rate": 0.1,
        "steps_per_epoch": 10,
        "warmup_epochs": 2,
        "epochs": 30,
    }


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"lr_schedule": "cosine", "epochs": 5, "warmup_epochs": 5}, "--warmup_epochs"),
    ],
)
def test_bad_flags_name_the_flag(overrides, fragment):
    with pytest.raises(UserError, match=fragment.replace("-", r"\-")):
        dataclasses.replace(Config(dataset="digits", model_dir="/tmp/run"), **overrides).validate()
