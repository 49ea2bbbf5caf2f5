"""Tests of the warm-up + step-decay learning-rate schedule and the mixing-probability schedule."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cdt_tf.schedules import WarmupStepDecay, mix_prob_at


def cifar_schedule():
    return WarmupStepDecay(
        0.1, steps_per_epoch=10, warmup_epochs=5, decay_epochs=[160, 180], decay_multipliers=[0.01, 1e-4]
    )


def lr(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.02),
        (9, 0.02),
        (10, 0.04),
        (19, 0.04),
        (20, 0.06),
        (30, 0.08),
        (39, 0.08),
        (40, 0.1),
        (49, 0.1),
        (50, 0.1),
        (1000, 0.1),
        (1599, 0.1),
        (1600, 0.001),
        (1799, 0.001),
        (1800, 1e-5),
        (1999, 1e-5),
        (10**7, 1e-5),
    ],
)
def test_cifar_recipe(step, expected):
    np.testing.assert_allclose(lr(cifar_schedule(), step), expected, rtol=1e-6)


def test_accepts_int_and_tensor_steps_and_returns_float32():
    schedule = cifar_schedule()
    for step in (
        15,
        np.int64(15),
        tf.constant(15, tf.int64),
        tf.constant(15, tf.int32),
        tf.Variable(15, dtype=tf.int64),
    ):
        value = schedule(step)
        assert keras.ops.convert_to_numpy(value).dtype == np.float32
        np.testing.assert_allclose(float(keras.ops.convert_to_numpy(value)), 0.04, rtol=1e-6)


def test_inside_tf_function_follows_step_variable():
    schedule = cifar_schedule()
    step = tf.Variable(0, dtype=tf.int64)
    compiled = tf.function(lambda: schedule(step))
    values = []
    for s in (0, 10, 40, 1600, 1800):
        step.assign(s)
        values.append(float(compiled()))
    np.testing.assert_allclose(values, [0.02, 0.04, 0.1, 0.001, 1e-5], rtol=1e-6)


def test_epoch_learning_rate():
    schedule = cifar_schedule()
    got = [
        float(keras.ops.convert_to_numpy(schedule.epoch_learning_rate(e)))
        for e in (0, 4, 5, 159, 160, 179, 180)
    ]
    np.testing.assert_allclose(got, [0.02, 0.1, 0.1, 0.1, 0.001, 0.001, 1e-5], rtol=1e-6)


@pytest.mark.parametrize(
    "step, expected", [(0, 0.5), (2, 0.5), (3, 0.05), (5, 0.05), (6, 0.005), (100, 0.005)]
)
def test_no_warmup(step, expected):
    schedule = WarmupStepDecay(
        0.5, steps_per_epoch=3, warmup_epochs=0, decay_epochs=[1, 2], decay_multipliers=[0.1, 0.01]
    )
    np.testing.assert_allclose(lr(schedule, step), expected, rtol=1e-6)


def test_constant_without_warmup_or_decay():
    schedule = WarmupStepDecay(0.3, steps_per_epoch=7)
    for step in (0, 6, 7, 1000):
        np.testing.assert_allclose(lr(schedule, step), 0.3, rtol=1e-6)


def test_warmup_overrides_an_early_decay():
    # While e < warmup_epochs the warm-up rate wins, even past a decay epoch.
    schedule = WarmupStepDecay(
        1.0, steps_per_epoch=1, warmup_epochs=4, decay_epochs=[2], decay_multipliers=[0.1]
    )
    np.testing.assert_allclose(
        [lr(schedule, s) for s in range(6)], [0.25, 0.5, 0.75, 1.0, 0.1, 0.1], rtol=1e-6
    )


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="same length"):
        WarmupStepDecay(0.1, 10, 5, decay_epochs=[160, 180], decay_multipliers=[0.01])
    with pytest.raises(ValueError, match="same length"):
        WarmupStepDecay(0.1, 10, 5, decay_epochs=[160], decay_multipliers=[0.01, 1e-4])


@pytest.mark.parametrize("epochs", [[180, 160], [10, 5, 20], [3, 2]])
def test_decreasing_decay_epochs_raise(epochs):
    with pytest.raises(ValueError, match="increase"):
        WarmupStepDecay(0.1, 10, 5, decay_epochs=epochs, decay_multipliers=[0.1] * len(epochs))


def test_get_config_round_trip():
    schedule = cifar_schedule()
    config = schedule.get_config()
    assert config == {
        "base_learning_rate": 0.1,
        "steps_per_epoch": 10,
        "warmup_epochs": 5,
        "decay_epochs": [160, 180],
        "decay_multipliers": [0.01, 1e-4],
    }
    restored = WarmupStepDecay.from_config(config)
    assert restored.get_config() == config
    for step in (0, 10, 40, 1600, 1800):
        assert lr(restored, step) == lr(schedule, step)


def test_keras_serialize_round_trip_and_optimizer():
    schedule = cifar_schedule()
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(restored, WarmupStepDecay)
    assert restored.get_config() == schedule.get_config()
    optimizer = keras.optimizers.SGD(learning_rate=schedule)
    restored_optimizer = keras.optimizers.SGD.from_config(optimizer.get_config())
    assert isinstance(restored_optimizer._learning_rate, WarmupStepDecay)
    assert restored_optimizer._learning_rate.get_config() == schedule.get_config()


def test_repeated_decay_epoch_raises():
    # decay_epochs must strictly increase: with [160, 160] the first multiplier would never apply.
    with pytest.raises(ValueError, match="increase"):
        WarmupStepDecay(0.1, 10, 5, decay_epochs=[160, 160], decay_multipliers=[0.01, 1e-4])


@pytest.mark.parametrize(
    "epoch, expected",
    [(0, 1.0), (1, 1.0), (2, 1.0), (3, 0.75), (4, 0.5), (5, 0.25), (6, 0.0), (7, 0.0), (100, 0.0)],
)
def test_mix_ramp_falls_linearly_from_its_start_to_zero_at_mix_until_epoch(epoch, expected):
    assert mix_prob_at(epoch, 1.0, "ramp", until_epoch=6, ramp_start=2) == expected


def test_mix_ramp_scales_mix_prob_and_may_start_at_epoch_zero():
    assert [mix_prob_at(e, 0.8, "ramp", 4, 0) for e in range(6)] == pytest.approx([0.8, 0.6, 0.4, 0.2, 0, 0])


def test_mix_step_is_mix_prob_before_mix_until_epoch_and_every_epoch_without_it():
    assert [mix_prob_at(e, 0.5, "step", 3) for e in range(5)] == [0.5, 0.5, 0.5, 0.0, 0.0]
    assert [mix_prob_at(e, 0.5) for e in (0, 10, 1000)] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    "schedule, until, start", [("ramp", 0, 0), ("ramp", 5, 5), ("ramp", 5, -1), ("cosine", 5, 0)]
)
def test_a_bad_mix_schedule_raises(schedule, until, start):
    with pytest.raises(ValueError, match="mix"):
        mix_prob_at(0, 1.0, schedule, until, start)
