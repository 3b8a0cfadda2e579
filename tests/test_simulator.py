"""Tests of the torch reaction-diffusion simulator on the bundled ventricle.

Measured on the bundled mesh (uniform sigma = 1.5 mm^2/ms, 4 sites, pacing radius 6 mm,
40 ms, frames every 1 ms), against the numpy reference / fine Euler (dt = 0.01 ms):

* torch vs reference: max |du| 3.5e-7 (ap), 3.2e-7 (rm), 5.8e-7 (ms);
* batch vs one site at a time: 2.4e-7; native Euler vs torchdiffeq euler: 4.2e-7;
* vs Euler dt = 0.01: Euler dt 0.05 6.4e-3, rk4 dt 0.1 1.6e-3, midpoint 1.9e-3,
  dopri5 (rtol 1e-4) 5.2e-3.

Conduction velocity of Aliev-Panfilov: a 1-D cable (dx 0.1 mm) gives 0.476 mm/ms against
the travelling-front formula sqrt(D s k / 2) (1 - 2a) = 0.4774 mm/ms (0.3 %). On the mesh the
slope of graph distance against AT (nodes > 10 mm away) is 1.005-1.067 x theory depending on
the site (graph distances overestimate geodesic ones by zig-zagging along edges; with heat-
method geodesic distances the ratio is 0.974-1.019), so 15 % is ample.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from leads_engine.metrics import activation_times
from leads_engine.reactions import build_reaction
from leads_engine.reference import reference_simulate
from leads_engine.simulator import (
    Pacing,
    ReactionDiffusionField,
    SimulationDiverged,
    SparseLaplacian,
    StabilityGuard,
    integrate,
    simulate,
    steps_per_frame,
    to_torch_csr,
)

SITES = [0, 300, 600, 900]
SIGMA = 1.5
RADIUS = 6.0
STEP = 0.05
T40 = np.arange(0.0, 40.0 + 1e-9, 1.0)


@pytest.fixture(scope="module")
def laplacian(heart):
    return heart.laplacian(SIGMA)


@pytest.fixture(scope="module")
def distances(heart):
    return heart.graph_distances(SITES)


def run(laplacian, distances, reaction="ap", t=T40, sites=SITES, **kwargs):
    model = build_reaction(reaction, learnable=False)
    pacing = kwargs.pop("pacing", None) or Pacing(sites, radius=RADIUS)
    kwargs.setdefault("step_size", STEP)
    with torch.no_grad():
        return simulate(laplacian, model, pacing, t, distances, device="cpu", **kwargs)


@pytest.fixture(scope="module")
def ap_euler(laplacian, distances) -> np.ndarray:
    return run(laplacian, distances).u.numpy()


@pytest.fixture(scope="module")
def ap_fine(laplacian, distances) -> np.ndarray:
    return run(laplacian, distances, step_size=0.01).u.numpy()


# ---- agreement between schemes and implementations -----------------------------------------


@pytest.mark.parametrize("reaction", ["ap", "rm", "ms"])
def test_matches_numpy_reference(laplacian, distances, reaction):
    result = run(laplacian, distances, reaction)
    model = build_reaction(reaction, learnable=False)
    pacing = Pacing(SITES, radius=RADIUS)
    expected = reference_simulate(
        laplacian, model.name, model.parameter_values(), pacing.region(distances),
        n_steps=800, step_size=STEP, record_every=20,
    )  # fmt: skip
    assert result.u.shape == expected.shape == (len(SITES), len(T40), laplacian.shape[0])
    assert torch.equal(result.t, torch.as_tensor(T40, dtype=torch.float32))
    assert np.abs(result.u.numpy() - expected).max() < 1e-5
    # the comparison is about a propagating wave, not a resting field
    assert (expected[:, -1] > 0.5).mean() > 0.05


def test_batch_equals_one_site_at_a_time(laplacian, distances, ap_euler):
    for b, site in enumerate(SITES):
        single = run(laplacian, distances[b : b + 1], sites=[site]).u.numpy()
        assert single.shape == (1, len(T40), laplacian.shape[0])
        assert np.abs(single[0] - ap_euler[b]).max() < 1e-6


def test_native_euler_matches_torchdiffeq_euler(laplacian, distances, ap_euler):
    generic = run(laplacian, distances, native_euler=False)
    assert np.abs(generic.u.numpy() - ap_euler).max() < 1e-5
    assert generic.evaluations == 800  # one evaluation per step, as the native loop


@pytest.mark.parametrize(
    ("method", "options", "tolerance"),
    [
        ("euler", {"step_size": STEP}, 0.02),
        ("rk4", {"step_size": 0.1}, 0.01),
        ("midpoint", {"step_size": STEP}, 0.01),
        ("dopri5", {"rtol": 1e-4, "atol": 1e-6}, 0.02),
    ],
)
def test_methods_agree_with_fine_euler(laplacian, distances, ap_fine, method, options, tolerance):
    result = run(laplacian, distances, method=method, **options)
    assert np.abs(result.u.numpy() - ap_fine).max() < tolerance
    assert result.evaluations > 0


def test_adaptive_method_ignores_step_size(laplacian, distances):
    result = run(laplacian, distances, method="bosh3", step_size=None, rtol=1e-3, atol=1e-5)
    assert np.isfinite(result.u.numpy()).all()


def test_unknown_method_is_refused(laplacian, distances):
    with pytest.raises(ValueError, match="unknown method 'leapfrog'"):
        run(laplacian, distances, method="leapfrog")


@pytest.mark.parametrize("step_size", [None, 0.0, -0.1])
@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_fixed_step_needs_a_step_size(laplacian, distances, method, step_size):
    with pytest.raises(ValueError, match="step_size"):
        run(laplacian, distances, method=method, step_size=step_size)


def test_graph_distances_shape_is_checked(laplacian, distances):
    with pytest.raises(ValueError, match="graph_distances"):
        run(laplacian, distances[:2])


# ---- stability guard -------------------------------------------------------------------------


def test_unstable_laplacian_raises_diverged(heart, distances):
    # sigma = 1e3 puts dt = 0.05 far beyond the explicit Euler limit 2 / |lambda_max|
    stiff = heart.laplacian(1e3)
    with pytest.raises(SimulationDiverged) as info:
        run(stiff, distances, guard_every=1)
    error = info.value
    assert 1 <= error.step <= 10  # caught within a few steps, not after 800
    assert 0.0 <= error.time < 0.5
    assert error.reason and error.reason in str(error)
    assert f"evaluation {error.step}" in str(error)


def test_guard_interval_bounds_the_wasted_evaluations(heart, distances):
    stiff = heart.laplacian(1e3)
    with pytest.raises(SimulationDiverged) as info:
        run(stiff, distances, guard_every=7)
    assert info.value.step % 7 == 0 and info.value.step <= 14


def test_nan_in_initial_state_trips_the_guard(laplacian, distances):
    model = build_reaction("ap", learnable=False)
    y0 = model.initial_state(laplacian.shape[0], len(SITES))
    y0[1, 17, 2] = float("nan")
    with pytest.raises(SimulationDiverged, match="non-finite") as info:
        run(laplacian, distances, initial_state=y0, guard_every=1)
    assert info.value.step == 1 and info.value.time == 0.0


def test_max_abs_bound_trips_the_guard(laplacian, distances):
    # the stimulus sets u = 1 in the pacing region, above a bound of 0.5
    with pytest.raises(SimulationDiverged, match=r"> 0\.5"):
        run(laplacian, distances, max_abs=0.5, guard_every=1)


def test_stability_guard_unit():
    with pytest.raises(ValueError):
        StabilityGuard(every=0)
    guard = StabilityGuard(every=2, max_abs=10.0)
    fine = torch.ones(3)
    guard.check(torch.tensor(0.0), torch.full((3,), float("inf")), fine)  # not checked: 1st
    assert guard.evaluations == 1
    with pytest.raises(SimulationDiverged, match="non-finite"):
        guard.check(torch.tensor(0.1), torch.full((3,), float("inf")), fine)
    guard.check(torch.tensor(0.2), 20 * fine, fine)  # 3rd: not checked
    guard.check(torch.tensor(0.3), 5 * fine, fine)  # 4th: checked, within the bound
    with pytest.raises(SimulationDiverged, match="reached 20") as info:
        guard.check(torch.tensor(0.5), 20 * fine, fine)
        guard.check(torch.tensor(0.6), 20 * fine, fine)
    assert info.value.step == 6 and info.value.time == pytest.approx(0.6)


# ---- pacing ----------------------------------------------------------------------------------


def test_current_injection_starts_a_wave(laplacian, distances):
    t = np.arange(0.0, 160.0 + 1e-9, 2.0)
    pacing = Pacing(SITES, mode="current", radius=RADIUS, amplitude=1.0, duration=2.0)
    u = run(laplacian, distances, t=t, pacing=pacing).u.numpy()
    assert np.abs(u[:, 0]).max() == 0.0  # starts at rest: the current does the work
    at = activation_times(u, t)
    far = distances > 30.0
    assert far.sum() > 100
    assert np.isfinite(at[far]).all()
    assert (at[far] > 20.0).all()  # reached by propagation, not by the stimulus


@pytest.mark.parametrize("mode", ["initial", "current"])
def test_no_stimulus_stays_at_rest(laplacian, distances, mode):
    pacing = Pacing(SITES, mode=mode, radius=RADIUS, amplitude=0.0)
    for reaction in ("ap", "ms"):
        result = run(laplacian, distances, reaction, pacing=pacing, return_states=True)
        rest = torch.tensor(build_reaction(reaction).resting_state).view(-1, 1, 1)
        assert float((result.states - rest).abs().max()) < 1e-6


def test_initial_pacing_sets_the_region(laplacian, distances, ap_euler):
    region = Pacing(SITES, radius=RADIUS).region(distances)
    assert region.shape == (laplacian.shape[0], len(SITES))
    assert np.array_equal(ap_euler[:, 0].T == 1.0, region)
    assert region[SITES, np.arange(len(SITES))].all()


def test_default_current_pacing_starts_a_wave(laplacian, distances):
    t = np.arange(0.0, 160.0 + 1e-9, 2.0)
    u = run(laplacian, distances, t=t, pacing=Pacing(SITES, mode="current")).u.numpy()
    assert np.isfinite(activation_times(u, t)).mean(axis=1).min() > 0.99


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sites": []},
        {"sites": [0], "mode": "pulse"},
        {"sites": [0], "radius": -1.0},
        {"sites": [0], "duration": 0.0},
    ],
)
def test_pacing_validation(kwargs):
    with pytest.raises(ValueError):
        Pacing(**kwargs)


# ---- physics on the mesh ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def apex_beat(heart, laplacian):
    """One Aliev-Panfilov beat from a mid-wall site and one from the apex, 160 ms."""
    sites = [500, 0]
    d = heart.graph_distances(sites)
    t = np.arange(0.0, 160.0 + 1e-9, 1.0)
    u = run(laplacian, d, t=t, sites=sites).u.numpy()
    return d, activation_times(u, t)


def test_activation_time_increases_with_distance(apex_beat):
    d, at = apex_beat
    assert np.isfinite(at).all()  # every node activates within 160 ms
    for b in range(len(d)):
        assert spearmanr(d[b], at[b]).statistic > 0.95


def test_conduction_velocity_matches_theory(apex_beat):
    model = build_reaction("ap", learnable=False)
    p = model.parameter_values()
    theory = np.sqrt(SIGMA * p["time_scale"] * p["k"] / 2) * (1 - 2 * p["a"])
    assert theory == pytest.approx(0.4774, abs=1e-3)
    d, at = apex_beat
    for b in range(len(d)):
        far = d[b] > 10.0
        velocity = np.polyfit(at[b][far], d[b][far], 1)[0]
        assert velocity == pytest.approx(theory, rel=0.15)


def test_continuation_from_the_last_state(laplacian, distances):
    t = np.arange(0.0, 80.0 + 1e-9, 1.0)
    whole = run(laplacian, distances, t=t)
    first = run(laplacian, distances, t=t[:41], return_states=True)
    second = run(laplacian, distances, t=t[40:], initial_state=first.states[-1])
    assert first.states.shape == (41, 2, laplacian.shape[0], len(SITES))
    joined = np.concatenate([first.u.numpy(), second.u.numpy()[:, 1:]], axis=1)
    assert np.abs(joined - whole.u.numpy()).max() < 1e-5
    assert np.abs(second.u.numpy()[:, 0] - first.u.numpy()[:, -1]).max() == 0.0


# ---- building blocks -------------------------------------------------------------------------


def test_to_torch_csr_and_sparse_laplacian(laplacian):
    operator = to_torch_csr(laplacian, dtype=torch.float64)
    assert operator.layout == torch.sparse_csr and operator.dtype == torch.float64
    assert torch.allclose(operator.to_dense(), torch.from_numpy(laplacian.toarray()))
    u = torch.randn(laplacian.shape[0], 3, dtype=torch.float64)
    rate = torch.randn_like(u)
    diffusion = SparseLaplacian(operator)
    expected = torch.from_numpy(laplacian @ u.numpy())
    assert torch.allclose(diffusion(u), expected)
    assert torch.allclose(diffusion(u, rate), expected + rate)
    assert torch.allclose(diffusion(torch.ones_like(u)), torch.zeros_like(u), atol=1e-10)


def test_steps_per_frame():
    assert steps_per_frame(torch.tensor([0.0, 1.0, 3.0]), 0.5) == [2, 4]
    assert steps_per_frame(torch.tensor([0.0, 1.0, 1.2]), 0.5) is None
    assert steps_per_frame(torch.tensor([0.0, 0.2]), 0.5) is None


def test_off_grid_frames_fall_back_to_torchdiffeq(laplacian, distances):
    t = np.array([0.0, 0.7, 1.3, 2.9])
    result = run(laplacian, distances, t=t)
    assert result.u.shape[1] == len(t)
    assert torch.allclose(result.t, torch.tensor(t, dtype=torch.float32))


def test_reaction_diffusion_field_adds_the_stimulus_in_its_window():
    model = build_reaction("ms", learnable=False)
    zero = lambda u, rate: rate  # noqa: E731 - no diffusion
    current = torch.full((4, 2), 0.25)
    field = ReactionDiffusionField(zero, model, stimulus_current=current, stimulus_window=(1, 3))
    y = model.initial_state(4, 2)
    assert float(field(torch.tensor(0.5), y).abs().max()) < 1e-7
    inside = field(torch.tensor(1.0), y)
    assert torch.allclose(inside[0], current) and float(inside[1:].abs().max()) < 1e-7
    assert float(field(torch.tensor(3.0), y).abs().max()) < 1e-7


def test_integrate_gradients_flow_to_reaction_parameters(laplacian, distances):
    model = build_reaction("ap")
    operator = to_torch_csr(laplacian)
    field = ReactionDiffusionField(SparseLaplacian(operator), model, StabilityGuard())
    y0 = model.initial_state(laplacian.shape[0], 1)
    y0[0, distances[0] <= RADIUS, 0] = 1.0
    states = integrate(field, y0, torch.tensor([0.0, 5.0]), step_size=0.1)
    states[-1, 0].sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g) for g in grads.values())
    assert float(grads["raw_k"]) != 0.0
