"""N_c^tau calibration (eq. 5): the NumPy rule and the Keras layer, on tiny arrays with exact values."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cdt_tf.calibration import NcTauCalibration, nc_tau_calibrate

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


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0])
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
