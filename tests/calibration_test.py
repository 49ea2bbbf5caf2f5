"""N_c^tau calibration (eq. 5): the NumPy rule and the Keras layer, on tiny arrays with exact values."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cdt_tf import catalog
from cdt_tf.calibration import (
    CALIBRATION_LAYERS,
    TAU_RANGE,
    LogitAdjustmentCalibration,
    NcTauCalibration,
    check_tau,
    nc_tau_calibrate,
    nc_tau_scale,
)

COUNTS = [100, 10, 1]
LOGITS = np.array([[2.0, 1.0, 0.5], [-1.0, 0.0, 3.0]], np.float32)


@pytest.mark.parametrize(
    "tau, divisors",
    [
        (0.0, [1.0, 1.0, 1.0]),
        (0.5, [10.0, np.sqrt(10.0), 1.0]),
        (1.0, [100.0, 10.0, 1.0]),
        (2.0, [10000.0, 100.0, 1.0]),
    ],
)
def test_nc_tau_calibrate_divides_by_count_to_the_tau(tau, divisors):
    expected = LOGITS.astype(np.float64) / np.array(divisors)
    np.testing.assert_allclose(nc_tau_calibrate(LOGITS, COUNTS, tau), expected, rtol=1e-12)


def test_tau_moves_predictions_to_minor_classes():
    logits = np.array([[1.0, 0.9, 0.8]])
    assert nc_tau_calibrate(logits, COUNTS, 0.0).argmax() == 0  # Plain argmax: the major class.
    assert nc_tau_calibrate(logits, COUNTS, 0.1).argmax() == 2  # 1/100^0.1 = 0.63 < 0.8.


@pytest.mark.parametrize("counts", [[], [10, 0, 3], [[1, 2]]])
def test_bad_counts_are_refused(counts):
    with pytest.raises(ValueError, match="class_counts|N_c"):
        nc_tau_calibrate(np.zeros((1, 3)), counts, 0.5)
    with pytest.raises(ValueError, match="class_counts|N_c"):
        NcTauCalibration(counts, 0.5)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, TAU_RANGE[1]])
def test_layer_matches_numpy(tau):
    layer = NcTauCalibration(COUNTS, tau)
    output = layer(LOGITS)
    assert output.dtype == "float32" and tuple(output.shape) == LOGITS.shape
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(output), nc_tau_calibrate(LOGITS, COUNTS, tau), rtol=1e-6, atol=1e-7
    )


def test_tau_is_a_non_trainable_variable_and_a_call_argument():
    layer = NcTauCalibration(COUNTS, 0.0)
    assert layer.trainable_weights == [] and len(layer.non_trainable_weights) == 1
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(LOGITS)), LOGITS)  # tau = 0: unchanged.
    layer.tau.assign(1.0)
    np.testing.assert_allclose(layer(LOGITS), nc_tau_calibrate(LOGITS, COUNTS, 1.0), rtol=1e-6)
    # A call-time tau overrides the variable, also as a tensor inside a traced function.
    traced = tf.function(lambda logits, tau: layer(logits, tau=tau))
    np.testing.assert_allclose(
        traced(LOGITS, tf.constant(0.5)), nc_tau_calibrate(LOGITS, COUNTS, 0.5), rtol=1e-6
    )
    assert float(layer.tau.numpy()) == 1.0


def test_layer_serializes_with_plain_config(tmp_path):
    layer = NcTauCalibration(COUNTS, 0.25, name="nc_tau")
    config = layer.get_config()
    assert config["class_counts"] == COUNTS and config["tau"] == 0.25
    json_config = keras.saving.serialize_keras_object(layer)
    assert json_config["registered_name"] == "cdt_tf>NcTauCalibration"
    revived = keras.saving.deserialize_keras_object(json_config)
    np.testing.assert_allclose(revived(LOGITS), layer(LOGITS), rtol=1e-7)

    # Saved inside a model: the reloaded model calibrates with the same counts and tau.
    inputs = keras.Input((3,))
    model = keras.Model(inputs, NcTauCalibration(COUNTS, 0.75)(inputs))
    path = str(tmp_path / "calibrated.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        reloaded.predict(LOGITS, verbose=0), nc_tau_calibrate(LOGITS, COUNTS, 0.75), 1e-6
    )


# ----------------------------------------------------------------------------- the tau range


def test_tau_range_is_zero_to_five():
    assert TAU_RANGE == (0.0, 5.0)
    assert check_tau(0) == 0.0 and check_tau(np.float32(5.0)) == 5.0


@pytest.mark.parametrize("tau", [-0.1, -1.0, 5.01, 100.0, np.nan, np.inf, -np.inf])
def test_tau_outside_the_range_is_refused(tau):
    with pytest.raises(ValueError, match=r"tau must be a finite number in \[0, 5\]"):
        check_tau(tau)
    with pytest.raises(ValueError, match=r"tau must be a finite number in \[0, 5\]"):
        NcTauCalibration(COUNTS, tau)
    layer = NcTauCalibration(COUNTS, 0.5)
    with pytest.raises(ValueError, match=r"tau must be a finite number in \[0, 5\]"):
        layer(LOGITS, tau=tau)  # A Python number per call is checked too.
    with pytest.raises(ValueError, match=r"tau must be a number in \[0, 5\]"):
        check_tau("high")


# Classes of 1e8 .. 1 images: at tau = 5, N_c^tau reaches 1e40, beyond float32 (1e-38 is its smallest
# normal number), so a plain logits / N_c^tau in float32 is 0 (or a denormal) for the largest classes.
HUGE_COUNTS = [10**8, 5 * 10**7, 10**4, 100, 1]


def test_calibration_at_the_largest_tau_is_finite_and_keeps_the_argmax():
    tau = TAU_RANGE[1]
    rng = np.random.default_rng(0)
    logits = np.concatenate(
        [
            [[1.0, 0.5, -1.0, -2.0, -3.0]],  # Class 1 wins: 0.5 / (5e7)^5 > 1 / (1e8)^5; both ~1e-39.
            [[-1.0, -0.5, -0.2, -0.1, -0.05]],  # All negative: the largest class (smallest |value|) wins.
            rng.normal(0, 3, (30, 5)),
        ]
    ).astype(np.float32)
    reference = nc_tau_calibrate(logits, HUGE_COUNTS, tau)  # float64: exact.
    scale = nc_tau_scale(tau, HUGE_COUNTS)
    assert scale == pytest.approx(np.exp(tau * np.log(1e8) - 60))  # N_max^tau / e^60 > 1: rescaled.
    output = keras.ops.convert_to_numpy(NcTauCalibration(HUGE_COUNTS, tau)(logits))
    assert output.dtype == np.float32 and np.isfinite(output).all()
    assert (output != 0).all()  # Every non-zero logit stays non-zero.
    np.testing.assert_allclose(output, reference * scale, rtol=1e-6)
    np.testing.assert_array_equal(output.argmax(-1), reference.argmax(-1))
    assert list(output.argmax(-1)[:2]) == [1, 0]
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(output, axis=-1))
    assert np.isfinite(probabilities).all() and (probabilities.max(-1) > 0.21).all()  # Not uniform (0.2).


def test_scale_is_one_while_the_division_is_representable():
    # N_max^tau <= e^60: exactly logits / N_c^tau (CIFAR's 5,000 images at every allowed tau).
    assert nc_tau_scale(TAU_RANGE[1], [5000, 50]) == 1.0
    assert nc_tau_scale(0.0, HUGE_COUNTS) == 1.0
    assert nc_tau_scale(2.0, HUGE_COUNTS) == 1.0  # 1e16.
    # Continuous in tau: no jump where the rescaling starts.
    edge = 60 / np.log(1e8)
    assert nc_tau_scale(edge + 1e-9, HUGE_COUNTS) == pytest.approx(1.0)


def test_counts_too_imbalanced_for_float32_are_refused():
    NcTauCalibration([int(2e10), 1], 0.0)  # e^24 = 2.6e10 is the limit.
    with pytest.raises(ValueError, match="too imbalanced"):
        NcTauCalibration([10**11, 1], 0.0)


def test_logit_adjustment_layer_matches_the_post_hoc_rule_and_serializes(tmp_path):
    from cdt_tf import post_hoc

    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    logits = np.random.default_rng(0).normal(0, 3, (16, 10)).astype(np.float32)
    layer = LogitAdjustmentCalibration(counts, tau=0.46)
    expected = post_hoc.logit_adjustment(logits, None, None, counts, 0.46)
    # Exactly z_c - tau log(N_c / N): at tau 1, the logits plus log N minus log N_c.
    np.testing.assert_allclose(layer(logits), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        layer(logits, tau=1.0), logits + np.log(sum(counts)) - np.log(counts), rtol=0, atol=1e-4
    )
    np.testing.assert_array_equal(layer(logits, tau=0.0), logits)
    assert not layer.tau.trainable
    # A tail class wins where the head class led by less than tau log(pi_head / pi_tail).
    np.testing.assert_array_equal(np.argmax(layer(np.array([[1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0.5]])), -1), [9])
    with pytest.raises(ValueError, match="tau must be a finite number in"):
        LogitAdjustmentCalibration(counts, tau=-0.1)
    with pytest.raises(ValueError, match="every class count"):
        LogitAdjustmentCalibration([10, 0], tau=0.5)
    inputs = keras.Input((10,))
    model = keras.Model(inputs, LogitAdjustmentCalibration(counts, tau=0.46)(inputs))
    model.save(str(tmp_path / "la.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "la.keras"))
    np.testing.assert_allclose(loaded.predict(logits, verbose=0), expected, rtol=0, atol=1e-5)
    assert tuple(CALIBRATION_LAYERS) == catalog.CALIBRATIONS  # What cdt_tf.export --calibration offers.
