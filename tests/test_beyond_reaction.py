"""Beeler-Reuter 1977 in the generator only: its action potential, its stiff gates, and that the
search catalog does not know it.

Single cell from rest, u = 0.6 at t = 0 (measured, explicit Euler with Rush-Larsen gates):

=========  ======  ===========  ============  ============  ====================
dt (ms)    peak u  u at 50 ms   u at 150 ms   u at 250 ms   last u > 0.1 peak
=========  ======  ===========  ============  ============  ====================
0.05       1.006   0.850        0.711         0.381         285.3 ms
0.01       1.000   0.850        0.711         0.382         285.5 ms
=========  ======  ===========  ============  ============  ====================
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leads_engine.generator import BenchmarkConfig, generate_benchmark
from leads_engine.reactions import REACTION_MODELS, resolve_reaction_name
from leads_engine.reactions.beeler_reuter import V_REST, V_SPAN, BeelerReuter
from leads_engine.reactions.generator_models import (
    GENERATOR_MODELS,
    OUT_OF_CATALOG,
    build_generator_reaction,
    in_search_catalog,
    resolve_generator_reaction,
)
from leads_engine.spec import CandidateSpec


def single_cell(dt: float, horizon_ms: float = 500.0, rush_larsen: bool = True) -> np.ndarray:
    """u of one isolated cell started at u = 0.6 from the resting gates, every step."""
    model = BeelerReuter(learnable=False)
    model.rush_larsen_step_ms = dt if rush_larsen else None
    y = model.initial_state(1, 1, dtype=torch.float64)
    y[0] = 0.6
    steps = int(round(horizon_ms / dt))
    trace = np.empty(steps)
    with torch.inference_mode():
        p = model.physical_parameters()
        for i in range(steps):
            du, dw = model(y[0], y[1:], p)
            y = y + dt * torch.cat((du.unsqueeze(0), dw))
            trace[i] = float(y[0, 0, 0])
    return trace


@pytest.fixture(scope="module")
def trace() -> np.ndarray:
    return single_cell(0.05)


def test_resting_state_is_a_fixed_point():
    model = BeelerReuter(learnable=False)
    y = model.initial_state(1, 1, dtype=torch.float64)
    du, dw = model(y[0], y[1:])
    assert abs(float(du)) < 1e-4  # mV/ms / 120: rest is rest
    assert float(dw.abs().max()) < 1e-3
    assert V_REST + V_SPAN * float(y[0, 0, 0]) == pytest.approx(-84.574)


def test_spike_and_dome_of_plausible_duration(trace):
    dt = 0.05
    t = (np.arange(len(trace)) + 1) * dt
    peak = trace.max()
    assert 0.95 < peak < 1.1
    assert t[trace.argmax()] < 5.0  # fast sodium upstroke
    dome = trace[int(50 / dt)]
    assert 0.75 < dome < peak - 0.1  # the spike stands above the plateau's dome
    # repolarised to 10% of the peak between 250 and 320 ms (BR 1977: about 280 ms at 1 Hz)
    apd = t[trace > 0.1 * peak].max()
    assert 250.0 < apd < 320.0
    assert abs(trace[-1]) < 0.05


def test_rush_larsen_gates_are_accurate_at_the_generator_step(trace):
    """At 0.05 ms (5x the sodium gate's fastest time constant) Rush-Larsen matches a 5x finer
    reference; plain Euler gates at that step are not even stable."""
    fine = single_cell(0.01)[4::5]  # the same times as the 0.05 ms trace
    assert np.abs(trace - fine).max() < 0.03
    with np.errstate(all="ignore"):
        plain = single_cell(0.05, horizon_ms=20.0, rush_larsen=False)
    reference = fine[: len(plain)]
    assert not np.isfinite(plain).all() or np.abs(plain - reference).max() > 0.05


def test_not_in_the_search_catalog():
    assert "beeler_reuter" not in REACTION_MODELS
    assert set(OUT_OF_CATALOG) == {"beeler_reuter"}
    assert set(REACTION_MODELS) < set(GENERATOR_MODELS)
    with pytest.raises(ValueError, match="unknown reaction model"):
        resolve_reaction_name("br")
    with pytest.raises(ValueError):
        CandidateSpec(reaction="beeler_reuter", diffusion="laplacian_global")
    assert resolve_generator_reaction("BR") == "beeler_reuter"
    assert not in_search_catalog("br") and in_search_catalog("ms")
    model = build_generator_reaction("br", step_size_ms=0.05)
    assert isinstance(model, BeelerReuter) and model.rush_larsen_step_ms == 0.05
    assert not any(p.requires_grad for p in model.parameters())


def test_generated_set_propagates_and_says_it_is_out_of_catalog(small_mesh):
    config = BenchmarkConfig(reaction="br", n_samples=3, split_sizes=(1, 1, 1), duration_ms=60.0)
    dataset = generate_benchmark(config, mesh=small_mesh, name="br_small")
    assert dataset.meta["reaction"] == "beeler_reuter"
    assert dataset.meta["reaction_in_catalog"] is False
    assert dataset.meta["activation"]["fraction_activated_min"] == 1.0
    assert np.isfinite(dataset.u).all()
    assert -0.01 < dataset.u.min() and dataset.u.max() < 1.1
