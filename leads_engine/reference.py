"""An independent scipy-sparse/numpy integrator of the paper's three ground-truth models.

Written without torch, line by line from the published equations, so that the torch simulator
can be checked against it (tests) and timed against it (``benchmarks/simulator_speed.py``).
It uses the same explicit Euler scheme and stimulus as :func:`leads_engine.simulator.simulate`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import scipy.sparse as sp

ReactionRates = Callable[
    [np.ndarray, np.ndarray, Mapping[str, float]], tuple[np.ndarray, np.ndarray]
]


def aliev_panfilov(u: np.ndarray, v: np.ndarray, p: Mapping[str, float]):
    du = p["k"] * u * (1 - u) * (u - p["a"]) - u * v
    dv = (p["e"] + p["mu1"] * v / (u + p["mu2"])) * (-v - p["k"] * u * (u - p["a"] - 1))
    return du, dv


def rogers_mcculloch(u: np.ndarray, v: np.ndarray, p: Mapping[str, float]):
    du = p["c1"] * u * (u - p["a"]) * (1 - u) - p["c2"] * u * v
    dv = p["b"] * (u - p["d"] * v)
    return du, dv


def mitchell_schaeffer(u: np.ndarray, h: np.ndarray, p: Mapping[str, float]):
    du = h * u**2 * (1 - u) / p["tau_in"] - u / p["tau_out"]
    closing = 1.0 / (1.0 + np.exp(-(u - p["v_gate"]) / 0.005))
    dh = (1 - closing) * (1 - h) / p["tau_open"] - closing * h / p["tau_close"]
    return du, dh


REFERENCE_RATES: dict[str, tuple[ReactionRates, float]] = {
    # name: (rates in native time, resting value of the recovery variable)
    "aliev_panfilov": (aliev_panfilov, 0.0),
    "rogers_mcculloch": (rogers_mcculloch, 0.0),
    "mitchell_schaeffer": (mitchell_schaeffer, 1.0),
}


def reference_simulate(
    laplacian: sp.spmatrix,
    reaction: str,
    parameters: Mapping[str, float],
    stimulated: np.ndarray,
    n_steps: int,
    step_size: float,
    record_every: int,
) -> np.ndarray:
    """Explicit Euler on ``[nodes, batch]`` state; returns ``u`` as ``[batch, frames, nodes]``.

    ``stimulated`` is the ``[nodes, batch]`` mask of nodes starting at ``u = 1``; frames are
    taken every ``record_every`` steps, the initial state included.
    """
    rates, w_rest = REFERENCE_RATES[reaction]
    L = sp.csr_matrix(laplacian, dtype=np.float64)
    u = np.where(stimulated, 1.0, 0.0)
    w = np.full_like(u, w_rest)
    scale = parameters["time_scale"]
    frames = [u.copy()]
    for step in range(1, n_steps + 1):
        du, dw = rates(u, w, parameters)
        u, w = u + step_size * (L @ u + scale * du), w + step_size * scale * dw
        if step % record_every == 0:
            frames.append(u.copy())
    return np.stack(frames).transpose(2, 0, 1)
