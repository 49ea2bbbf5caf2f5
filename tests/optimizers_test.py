"""Tests of CoupledDecaySGD against a NumPy implementation of torch.optim.SGD(weight_decay=wd)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cdt_tf.optimizers import CoupledDecaySGD

W0 = np.array([1.0, -2.0, 0.5], np.float64)
GRADIENTS = [
    np.array([0.1, 0.2, -0.3]),
    np.array([-0.4, 0.05, 0.6]),
    np.array([0.25, -0.15, 0.0]),
]


def torch_sgd(w0, gradients, lr, momentum, weight_decay, nesterov=False):
    """PyTorch's SGD: g' = g + wd * w; buf = g' (first step) else m * buf + g'; w -= lr * buf."""
    w = np.array(w0, np.float64)
    buf = None
    trajectory = []
    for g in gradients:
        g = g + weight_decay * w
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g
            step = g + momentum * buf if nesterov else buf
        else:
            step = g
        w = w - lr * step
        trajectory.append(w.copy())
    return trajectory


def run_keras(optimizer, w0, gradients):
    variable = keras.Variable(np.asarray(w0, np.float32))
    trajectory = []
    for g in gradients:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g.astype(np.float32)), variable)])
        trajectory.append(keras.ops.convert_to_numpy(variable).astype(np.float64))
    return trajectory


def test_reference_hand_values():
    # One step, wd 0.5, lr 0.1: g' = 0.2 + 0.5 * 2 = 1.2; w = 2 - 0.12 = 1.88.
    # Second step, m 0.9: g' = 0 + 0.5 * 1.88 = 0.94; buf = 0.9 * 1.2 + 0.94 = 2.02; w = 1.88 - 0.202.
    traj = torch_sgd([2.0], [np.array([0.2]), np.array([0.0])], lr=0.1, momentum=0.9, weight_decay=0.5)
    np.testing.assert_allclose(traj[0], [1.88], rtol=1e-12)
    np.testing.assert_allclose(traj[1], [1.678], rtol=1e-12)


@pytest.mark.parametrize(
    "lr, momentum, wd",
    [
        (0.1, 0.9, 2e-4),
        (0.1, 0.9, 0.05),
        (0.05, 0.0, 0.1),
        (0.2, 0.5, 0.0),
        (0.01, 0.99, 1.0),
    ],
)
def test_matches_pytorch_sgd_with_coupled_weight_decay(lr, momentum, wd):
    optimizer = CoupledDecaySGD(coupled_weight_decay=wd, learning_rate=lr, momentum=momentum)
    got = run_keras(optimizer, W0, GRADIENTS)
    expected = torch_sgd(W0, GRADIENTS, lr, momentum, wd)
    for step, (g, e) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6, err_msg=f"step {step + 1}")


def test_weight_decay_changes_the_trajectory():
    with_decay = run_keras(
        CoupledDecaySGD(coupled_weight_decay=0.1, learning_rate=0.1, momentum=0.9), W0, GRADIENTS
    )
    without = run_keras(
        CoupledDecaySGD(coupled_weight_decay=0.0, learning_rate=0.1, momentum=0.9), W0, GRADIENTS
    )
    assert np.abs(with_decay[-1] - without[-1]).max() > 1e-3


def test_decay_goes_through_momentum_not_decoupled():
    # Coupled decay with zero gradients: the decay accumulates in the buffer, unlike AdamW-style decay.
    zeros = [np.zeros(3)] * 3
    got = run_keras(CoupledDecaySGD(coupled_weight_decay=0.1, learning_rate=0.1, momentum=0.9), W0, zeros)
    expected = torch_sgd(W0, zeros, 0.1, 0.9, 0.1)
    np.testing.assert_allclose(got[-1], expected[-1], rtol=1e-5)
    # Decoupled decay would give w * (1 - lr * wd)^3 instead.
    decoupled = W0 * (1 - 0.1 * 0.1) ** 3
    assert np.abs(got[-1] - decoupled).max() > 1e-3


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_zero_weight_decay_equals_keras_sgd(momentum):
    got = run_keras(
        CoupledDecaySGD(coupled_weight_decay=0.0, learning_rate=0.1, momentum=momentum), W0, GRADIENTS
    )
    expected = run_keras(keras.optimizers.SGD(learning_rate=0.1, momentum=momentum), W0, GRADIENTS)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_default_has_no_decay():
    assert CoupledDecaySGD().coupled_weight_decay == 0.0


def test_get_config_round_trip():
    optimizer = CoupledDecaySGD(coupled_weight_decay=2e-4, learning_rate=0.1, momentum=0.9, nesterov=False)
    config = optimizer.get_config()
    assert config["coupled_weight_decay"] == pytest.approx(2e-4)
    assert config["momentum"] == pytest.approx(0.9)
    assert config["learning_rate"] == pytest.approx(0.1)
    # Keras' own (decoupled) weight_decay stays unset.
    assert config.get("weight_decay") in (None, 0.0)
    restored = CoupledDecaySGD.from_config(config)
    assert isinstance(restored, CoupledDecaySGD)
    assert restored.coupled_weight_decay == pytest.approx(2e-4)
    assert restored.momentum == pytest.approx(0.9)
    got = run_keras(restored, W0, GRADIENTS)
    expected = torch_sgd(W0, GRADIENTS, 0.1, 0.9, 2e-4)
    np.testing.assert_allclose(got[-1], expected[-1], rtol=1e-5, atol=1e-6)


def test_keras_serialize_round_trip():
    optimizer = CoupledDecaySGD(coupled_weight_decay=0.01, learning_rate=0.05, momentum=0.5)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, CoupledDecaySGD)
    assert restored.coupled_weight_decay == pytest.approx(0.01)
    assert restored.get_config()["learning_rate"] == pytest.approx(0.05)
