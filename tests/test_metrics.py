"""Tests for leads_engine.metrics: trajectory MSE, activation times and AT errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from leads_engine.metrics import (
    ActivationError,
    activation_summary,
    activation_times,
    at_mae,
    trajectory_mse,
)


def travelling_front(x: np.ndarray, t: np.ndarray, c: float, w: float) -> np.ndarray:
    """u(x, t) = sigmoid((t - x / c) / w): a front crossing u = 0.5 at t = x / c."""
    return 1.0 / (1.0 + np.exp(-(t[:, None] - x[None, :] / c) / w))


# --------------------------------------------------------------------------------------------
# activation_times
# --------------------------------------------------------------------------------------------


def test_travelling_front_recovered_with_coarse_frames() -> None:
    c, w, offset = 0.5, 1.0, 3.0  # conduction velocity (mm/ms), front width (ms), delay (ms)
    x = np.linspace(0.0, 20.0, 41)  # mm, 1-D row of nodes
    t = np.arange(0.0, 60.0, 2.0)  # 2 ms frames: coarse compared with the front width
    u = travelling_front(x, t - offset, c, w)
    at = activation_times(u, t)
    expected = x / c + offset
    assert at.shape == (41,) and at.dtype == np.float64
    # Linear interpolation across a 2 ms frame of a sigmoid of width 1 ms: error << 2 ms.
    np.testing.assert_allclose(at, expected, atol=0.15)
    # Without interpolation the error would be up to a whole frame.
    assert np.max(np.abs(at - expected)) < 0.1 * (t[1] - t[0])


def test_batched_and_torch_inputs_match() -> None:
    x = np.linspace(0.0, 10.0, 11)
    t = np.linspace(0.0, 40.0, 21)
    u = np.stack([travelling_front(x, t - d, 1.0, 0.5) for d in (2.0, 5.0, 8.0)])
    at = activation_times(u, t)
    assert at.shape == (3, 11)
    np.testing.assert_allclose(at[1], activation_times(u[1], t))
    np.testing.assert_allclose(at[2] - at[0], 6.0, atol=0.2)
    at_torch = activation_times(torch.tensor(u, dtype=torch.float32, requires_grad=True), t)
    assert isinstance(at_torch, np.ndarray) and at_torch.dtype == np.float64
    np.testing.assert_allclose(at_torch, at, atol=1e-4)


def test_exact_interpolation_and_special_nodes() -> None:
    t = np.array([0.0, 1.0, 2.0, 4.0])
    u = np.array(
        [
            # 0: rises 0.2 -> 0.8 between t=1 and t=2, crossing 0.5 halfway
            # 1: never rises above 0.4
            # 2: above threshold at the first frame
            # 3: downward-only: starts below, decreases
            # 4: rises between t=2 and t=4 from 0.0 to 1.0 -> t = 3.0
            # 5: exactly at threshold at frame 2 (0.5) after 0.0 -> t = 2.0
            [0.0, 0.1, 0.7, 0.45, 0.0, 0.0],
            [0.2, 0.3, 0.9, 0.30, 0.0, 0.0],
            [0.8, 0.4, 0.2, 0.10, 0.0, 0.5],
            [0.9, 0.2, 0.1, 0.00, 1.0, 0.9],
        ]
    )
    at = activation_times(u, t)
    np.testing.assert_allclose(at[[0, 2, 4, 5]], [1.5, 0.0, 3.0, 2.0])
    assert math.isnan(at[1]) and math.isnan(at[3])
    assert activation_summary(at)["n_not_activated"] == 2


def test_downward_crossing_does_not_count() -> None:
    t = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    # Node 0: starts below, crosses upward at t=1.5, repolarises (down through 0.5) at ~3.5.
    # Node 1: starts at rest, never depolarises; Node 2: repolarising only, starts excited.
    u = np.array(
        [
            [0.0, 0.0, 1.0],
            [0.2, 0.0, 0.8],
            [0.8, 0.0, 0.6],
            [0.7, 0.0, 0.4],
            [0.3, 0.0, 0.2],
        ]
    )
    at = activation_times(u, t)
    assert at[0] == pytest.approx(1.5)  # the later downward crossing is ignored
    assert math.isnan(at[1])
    assert at[2] == 0.0  # excited from the start, not the time of its downward crossing


def test_activation_times_single_frame() -> None:
    at = activation_times(np.array([[0.1, 0.9]]), np.array([5.0]))
    assert math.isnan(at[0]) and at[1] == 5.0


@pytest.mark.parametrize(
    "t",
    [
        np.array([0.0, 1.0, 1.0, 2.0]),  # not strictly increasing
        np.array([0.0, 2.0, 1.0, 3.0]),  # decreasing step
        np.array([0.0, 1.0, 2.0]),  # wrong length
        np.zeros((4, 1)),  # wrong rank
    ],
)
def test_activation_times_rejects_bad_t(t: np.ndarray) -> None:
    with pytest.raises(ValueError):
        activation_times(np.zeros((4, 3)), t)


def test_activation_times_rejects_bad_u_rank() -> None:
    with pytest.raises(ValueError):
        activation_times(np.zeros(4), np.arange(4.0))


def test_activation_times_large_batch_runs() -> None:
    # Shape of a realistic batch; vectorised, so this is fast (no timing assertion).
    rng = np.random.default_rng(0)
    u = rng.random((32, 250, 1119), dtype=np.float32)
    at = activation_times(u, np.arange(250.0))
    assert at.shape == (32, 1119)


# --------------------------------------------------------------------------------------------
# at_mae and activation_summary
# --------------------------------------------------------------------------------------------


def test_at_mae_hand_made() -> None:
    nan = np.nan
    at_true = np.array([[10.0, 20.0, nan, 40.0, nan], [5.0, nan, 15.0, 25.0, 35.0]])
    at_pred = np.array([[12.0, 17.0, 30.0, nan, nan], [5.0, nan, nan, 26.0, 31.0]])
    err = at_mae(at_pred, at_true)
    # Compared: |2|, |3|, |0|, |1|, |4| -> mean 2.0
    assert err == ActivationError(mae=2.0, n_compared=5, n_missing_pred=2, n_missing_true=1)
    assert err.as_dict() == {"mae": 2.0, "n_compared": 5, "n_missing_pred": 2, "n_missing_true": 1}
    assert err.missed_fraction == pytest.approx(2 / 7)  # 7 truly activated, 2 never were
    assert ActivationError(math.nan, 0, 0, 3).missed_fraction == 0.0
    with pytest.raises(AttributeError):
        err.mae = 0.0  # type: ignore[misc]


def test_at_mae_nothing_compared_and_torch() -> None:
    err = at_mae(np.array([np.nan, 1.0]), np.array([2.0, np.nan]))
    assert math.isnan(err.mae)
    assert (err.n_compared, err.n_missing_pred, err.n_missing_true) == (0, 1, 1)
    err_t = at_mae(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 5.0]))
    assert err_t.mae == pytest.approx(1.5) and isinstance(err_t.mae, float)


def test_at_mae_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        at_mae(np.zeros(3), np.zeros(4))


def test_activation_summary() -> None:
    nan = np.nan
    at = np.array([[0.0, 10.0, 30.0, nan], [5.0, 15.0, 25.0, 45.0], [nan, nan, nan, nan]])
    s = activation_summary(at)
    assert s["n_samples"] == 3 and s["n_nodes"] == 4
    assert s["fraction_activated_min"] == 0.0
    assert s["fraction_activated_mean"] == pytest.approx((0.75 + 1.0 + 0.0) / 3)
    assert s["total_activation_time_mean"] == pytest.approx((30.0 + 40.0) / 2)
    assert s["n_not_activated"] == 5
    s1 = activation_summary(at[1])
    assert s1["n_samples"] == 1 and s1["fraction_activated_min"] == 1.0
    assert math.isnan(activation_summary(at[2])["total_activation_time_mean"])


# --------------------------------------------------------------------------------------------
# trajectory_mse
# --------------------------------------------------------------------------------------------


def test_trajectory_mse_numpy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 5, 7)), rng.random((2, 5, 7))
    mse = trajectory_mse(a, b)
    assert isinstance(mse, float)
    assert mse == pytest.approx(float(np.mean((a - b) ** 2)))
    assert trajectory_mse(a, a) == 0.0


def test_trajectory_mse_torch_is_differentiable() -> None:
    rng = np.random.default_rng(2)
    a_np, b_np = rng.random((3, 4, 5)), rng.random((3, 4, 5))
    a = torch.tensor(a_np, requires_grad=True)
    b = torch.tensor(b_np)
    mse = trajectory_mse(a, b)
    assert isinstance(mse, torch.Tensor) and mse.ndim == 0
    assert mse.item() == pytest.approx(float(np.mean((a_np - b_np) ** 2)))
    mse.backward()
    assert a.grad is not None
    np.testing.assert_allclose(a.grad.numpy(), 2.0 * (a_np - b_np) / a_np.size, rtol=1e-12)
    # Mixed torch / numpy inputs also give a differentiable torch scalar.
    a2 = torch.tensor(a_np, dtype=torch.float32, requires_grad=True)
    mixed = trajectory_mse(a2, b_np)
    assert isinstance(mixed, torch.Tensor) and mixed.requires_grad
    assert mixed.dtype == torch.float32


def test_trajectory_mse_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 5, 7\).*\(2, 5, 6\)"):
        trajectory_mse(np.zeros((2, 5, 7)), np.zeros((2, 5, 6)))
    with pytest.raises(ValueError):
        trajectory_mse(torch.zeros(3, 4), torch.zeros(4, 3))
