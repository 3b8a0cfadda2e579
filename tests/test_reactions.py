"""Tests of the reaction catalog: single-cell action potentials, bounded parameters, registry.

Single-cell shapes measured with explicit Euler, dt = 0.02 ms, from u = 0.3 with recovery at
rest (defaults):

===================  ========  ===============  =============  ==========  =================
model                peak u    first u > 0.8    time u > 0.5   min u       back to |u|<0.05
===================  ========  ===============  =============  ==========  =================
aliev_panfilov       0.999     10.4 ms          318 ms         0.0         345 ms
rogers_mcculloch     0.868     13.8 ms          66 ms          0.0         126 ms
mitchell_schaeffer   0.946     1.7 ms           257 ms         0.0         293 ms
fitzhugh_nagumo      0.963     6.4 ms           57 ms          -0.261      183 ms
fenton_karma         1.018     0.9 ms           141 ms         0.0         168 ms
===================  ========  ===============  =============  ==========  =================

From u = 0.05 every model decays to rest (peak 0.05; FitzHugh-Nagumo dips to -0.006).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from leads_engine.reactions import (
    ALIASES,
    REACTION_MODELS,
    ParameterRange,
    ReactionModel,
    build_reaction,
    resolve_reaction_name,
)

MODEL_NAMES = sorted(REACTION_MODELS)
DT_MS = 0.02
HORIZON_MS = 600.0
STARTS = (0.3, 0.05)  # supra- and sub-threshold initial u, integrated together as a batch


def single_cell_traces(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``t [steps]`` and ``u [steps, 2]``: one isolated cell per start value, explicit Euler.

    The two starts are the two batch columns of one integration; cells do not interact (no
    diffusion), so each column is exactly a separate single-cell run.
    """
    model = build_reaction(name, learnable=False)
    state = model.initial_state(1, len(STARTS))
    u, w = state[0].clone(), state[1:].clone()
    u[0] = torch.tensor(STARTS)
    steps = int(round(HORIZON_MS / DT_MS))
    trace = np.empty((steps + 1, len(STARTS)))
    with torch.inference_mode():
        p = model.physical_parameters()
        for i in range(steps):
            trace[i] = u[0].numpy()
            du, dw = model(u, w, p)
            u, w = u + DT_MS * du, w + DT_MS * dw
        trace[steps] = u[0].numpy()
    return np.arange(steps + 1) * DT_MS, trace


@pytest.fixture(scope="module")
def traces() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {name: single_cell_traces(name) for name in MODEL_NAMES}


def time_above(t: np.ndarray, u: np.ndarray, level: float) -> float:
    return float((u > level).sum() * (t[1] - t[0]))


# ---- single-cell action potential ------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_suprathreshold_start_fires_and_repolarises(traces, name):
    t, u = traces[name]
    ap = u[:, 0]
    assert np.isfinite(ap).all()
    upstroke = t[ap > 0.8]
    assert upstroke.size, f"{name}: peak u {ap.max():.3f} never above 0.8"
    assert upstroke[0] < 60.0
    assert ap.max() < 1.1  # normalised TMP: no overshoot far past 1
    assert abs(ap[-1]) < 0.05, f"{name}: u = {ap[-1]:.3f} at 600 ms, not back at rest"


@pytest.mark.parametrize(
    ("name", "min_duration_ms"),
    [("mitchell_schaeffer", 150.0), ("aliev_panfilov", 150.0), ("fenton_karma", 60.0)],
)
def test_plateau_models_stay_depolarised(traces, name, min_duration_ms):
    t, u = traces[name]
    assert time_above(t, u[:, 0], 0.5) > min_duration_ms


def test_fitzhugh_nagumo_undershoots_and_rogers_mcculloch_does_not(traces):
    assert traces["fitzhugh_nagumo"][1][:, 0].min() < -0.05
    assert traces["rogers_mcculloch"][1][:, 0].min() >= -0.01


def test_action_potential_durations_are_ordered(traces):
    """RM is a short AP, FK intermediate, MS and AP long (see the module table)."""
    apd = {name: time_above(traces[name][0], traces[name][1][:, 0], 0.5) for name in MODEL_NAMES}
    assert apd["fitzhugh_nagumo"] < apd["rogers_mcculloch"] < apd["fenton_karma"]
    assert apd["fenton_karma"] < apd["mitchell_schaeffer"] < apd["aliev_panfilov"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_subthreshold_start_decays_to_rest(traces, name):
    _, u = traces[name]
    sub = u[:, 1]
    assert sub.max() < 0.2
    assert abs(sub[-1]) < 0.01
    assert sub.min() > -0.05


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_resting_state_is_a_fixed_point(name):
    model = build_reaction(name, learnable=False)
    state = model.initial_state(5, 3)
    du, dw = model(state[0], state[1:])
    assert du.shape == (5, 3) and dw.shape == (model.n_recovery, 5, 3)
    assert float(du.abs().max()) < 1e-6
    assert float(dw.abs().max()) < 1e-6


# ---- bounded learnable parameters ------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("raw", [1e4, -1e4])
def test_parameters_stay_in_range_after_an_absurd_step(name, raw):
    model = build_reaction(name)
    ranges = model.all_parameter_ranges()
    optimiser = torch.optim.SGD(model.parameters(), lr=1.0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(raw)
    state = model.initial_state(4, 2)
    u = state[0] + torch.linspace(0.0, 0.9, 4).unsqueeze(1)
    du, dw = model(u, state[1:])
    (du.square().sum() + dw.square().sum()).backward()
    for parameter in model.parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
    optimiser.step()
    for key, value in model.parameter_values().items():
        spec = ranges[key]
        assert math.isfinite(value)
        # float32 rounding of the bound itself is the only slack
        assert spec.low * (1 - 1e-6) <= value <= spec.high * (1 + 1e-6), (key, value)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_defaults_and_given_values_round_trip(name):
    cls = REACTION_MODELS[name]
    ranges = cls.all_parameter_ranges()
    values = cls(learnable=False).parameter_values()
    for key, spec in ranges.items():
        assert values[key] == pytest.approx(spec.default, rel=1e-5)
    key, spec = next(iter(cls.parameter_ranges.items()))
    inside = spec.low + 0.3 * (spec.high - spec.low)
    model_values = cls(**{key: inside}).parameter_values()
    assert model_values[key] == pytest.approx(inside, rel=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_unknown_parameter_is_refused_by_name(name):
    with pytest.raises(ValueError, match="not_a_parameter"):
        build_reaction(name, not_a_parameter=1.0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_out_of_range_value_is_refused(name):
    key, spec = next(iter(REACTION_MODELS[name].parameter_ranges.items()))
    for value in (spec.high * 10, spec.low - abs(spec.low) - 1, spec.high, spec.low):
        with pytest.raises(ValueError, match="outside"):
            build_reaction(name, **{key: value})


def test_parameter_range_rejects_bad_declarations():
    with pytest.raises(ValueError, match="outside"):
        ParameterRange(5.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="log"):
        ParameterRange(0.5, 0.0, 1.0, log=True)
    spec = ParameterRange(1.0, 0.1, 10.0, log=True)
    assert spec.to_unit(1.0) == pytest.approx(0.5)
    assert float(spec.from_unit(torch.tensor(0.5))) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_time_scale_scales_rates_linearly(name):
    cls = REACTION_MODELS[name]
    default = cls.time_scale_range.default
    slow, fast = cls(learnable=False), cls(learnable=False, time_scale=2 * default)
    state = slow.initial_state(6, 1)
    u = torch.linspace(0.0, 0.9, 6).unsqueeze(1)
    w = state[1:] * 0.7
    du_slow, dw_slow = slow(u, w)
    du_fast, dw_fast = fast(u, w)
    assert torch.allclose(du_fast, 2 * du_slow, rtol=1e-5, atol=1e-7)
    assert torch.allclose(dw_fast, 2 * dw_slow, rtol=1e-5, atol=1e-7)
    assert float(du_slow.abs().max()) > 0  # the comparison is not between zeros


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_layout(name):
    model = build_reaction(name)
    assert model.n_recovery == len(model.resting_state) - 1 == len(model.state_names)
    assert model.n_recovery >= 1
    state = model.initial_state(7, 3, dtype=torch.float64)
    assert state.shape == (1 + model.n_recovery, 7, 3) and state.dtype == torch.float64
    assert torch.equal(state[:, 0, 0], torch.tensor(model.resting_state, dtype=torch.float64))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_learnable_flag(name):
    frozen = build_reaction(name, learnable=False)
    assert list(frozen.parameters()) == []
    learnable = build_reaction(name)
    names = {n for n, _ in learnable.named_parameters()}
    assert names == {f"raw_{key}" for key in learnable.all_parameter_ranges()}
    assert all(isinstance(p, nn.Parameter) for p in learnable.parameters())
    # both carry the same physical values
    assert frozen.parameter_values() == learnable.parameter_values()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_docstring_cites_source_and_defaults(name):
    doc = REACTION_MODELS[name].__doc__ or ""
    assert "Source:" in doc or "Sources:" in doc
    assert "Defaults" in doc


# ---- registry --------------------------------------------------------------------------------


def test_catalog_has_the_five_models():
    assert set(REACTION_MODELS) == {
        "aliev_panfilov",
        "rogers_mcculloch",
        "mitchell_schaeffer",
        "fitzhugh_nagumo",
        "fenton_karma",
    }
    for name, cls in REACTION_MODELS.items():
        assert issubclass(cls, ReactionModel) and cls.name == name
    assert set(ALIASES.values()) == set(REACTION_MODELS)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ap", "aliev_panfilov"),
        ("AP", "aliev_panfilov"),
        ("rm", "rogers_mcculloch"),
        ("ms", "mitchell_schaeffer"),
        ("fhn", "fitzhugh_nagumo"),
        ("fk", "fenton_karma"),
        ("Fenton_Karma", "fenton_karma"),
        ("mitchell_schaeffer", "mitchell_schaeffer"),
    ],
)
def test_resolve_reaction_name(given, expected):
    assert resolve_reaction_name(given) == expected
    assert build_reaction(given).name == expected


def test_unknown_reaction_name_lists_choices():
    with pytest.raises(ValueError, match="'hodgkin_huxley'") as info:
        resolve_reaction_name("hodgkin_huxley")
    message = str(info.value)
    for alias, name in ALIASES.items():
        assert alias in message and name in message
    with pytest.raises(ValueError, match="unknown reaction"):
        build_reaction("hh")
