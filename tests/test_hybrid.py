"""The hybrid model (``leads_engine.hybrid``): rollout, checkpointing, the conductances' refresh
interval, reaction sub-steps, the flux and the plain forms, and the true structure's physics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leads_engine.generator import BenchmarkConfig, generate_benchmark
from leads_engine.graph import MeshGraph
from leads_engine.hybrid import HybridModel
from leads_engine.metrics import activation_times
from leads_engine.simulator import SimulationDiverged
from leads_engine.spec import CandidateSpec
from leads_engine.training import TrainingConfig


def test_rollout_reports_the_frame_of_a_blow_up(tiny):
    model = HybridModel.from_spec(
        CandidateSpec(
            reaction="ap",
            diffusion="laplacian_global",
            diffusion_hyperparameters={"conductivity": 90.0},
        ),
        tiny.n_nodes,
    )
    graph = MeshGraph.from_mesh(tiny.mesh(), 1)
    with pytest.raises(SimulationDiverged) as caught, torch.no_grad():
        model.rollout(torch.from_numpy(tiny.u[:1, 0]), graph, 20, 2.0, 5)
    assert caught.value.step % 5 == 0 and caught.value.time > 0


def test_checkpointing_does_not_change_gradients(tiny):
    spec = CandidateSpec(reaction="ms", diffusion="gat", seed=0)
    graph = MeshGraph.from_mesh(tiny.mesh(), 2)
    u0 = torch.from_numpy(tiny.u[:2, 0])
    target = torch.from_numpy(tiny.u[:2, 1:])
    grads = []
    for chunk in (None, 4):
        model = HybridModel.from_spec(spec, tiny.n_nodes)
        predicted = model.rollout(u0, graph, tiny.n_frames - 1, 2.0, 5, checkpoint_frames=chunk)
        torch.mean((predicted - target) ** 2).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def _true_structure_mse(dataset, reaction_substeps=None) -> tuple[float, float]:
    """Trajectory MSE and AT MAE of the true reaction and conductivity at the training step."""
    spec = CandidateSpec(reaction=dataset.meta["reaction"], diffusion="laplacian_nodewise")
    model = HybridModel.from_spec(spec, dataset.n_nodes)
    with torch.no_grad():  # global level 1, per-node factor = sigma
        model.diffusion.raw_log_factor.copy_(torch.log(torch.tensor(dataset.conductivity)))
    graph = MeshGraph.from_mesh(dataset.mesh(), dataset.n_samples)
    with torch.no_grad():
        predicted = model.rollout(
            torch.from_numpy(dataset.u[:, 0]),
            graph,
            dataset.n_frames - 1,
            2.0,
            TrainingConfig.steps_per_frame,
            reaction_substeps=reaction_substeps,
        ).numpy()
    at_true = activation_times(dataset.u, dataset.t)
    at_pred = activation_times(np.concatenate([dataset.u[:, :1], predicted], 1), dataset.t)
    both = np.isfinite(at_true) & np.isfinite(at_pred)
    mse = float(np.mean((predicted - dataset.u[:, 1:]) ** 2))
    return mse, float(np.abs(at_true - at_pred)[both].mean())


def test_physics_rollout_reproduces_the_data_with_the_true_conductivity(tiny):
    """The hybrid integrator with the true structure tracks the generator's 0.05 ms simulation
    at the training step (0.4 ms, the reaction sub-stepped as Aliev-Panfilov asks)."""
    mse, at_error = _true_structure_mse(tiny)
    assert mse < 1e-4
    assert at_error < 0.3  # ms


def test_conductances_are_held_over_the_catalog_s_refresh_interval(tiny):
    """A network's conductances are evaluated every ``refresh_frames`` frames (chunks of the
    checkpointing start on a refresh); for a state-independent operator holding them longer
    changes nothing."""
    graph = MeshGraph.from_mesh(tiny.mesh(), 2)
    u0 = torch.from_numpy(tiny.u[:2, 0])
    model = HybridModel.from_spec(CandidateSpec(reaction="ap", diffusion="gcn"), tiny.n_nodes)
    assert model.refresh_frames == 2
    calls = []
    original = model.diffusion.edge_conductance
    model.diffusion.edge_conductance = lambda u, g: calls.append(1) or original(u, g)
    with torch.no_grad():
        model.rollout(u0, graph, 11, 2.0, 5, checkpoint_frames=5)
    assert len(calls) == 6  # chunks of 4 frames (5 rounded down to the interval): 0-3, 4-7, 8-10
    physical = HybridModel.from_spec(
        CandidateSpec(reaction="ap", diffusion="laplacian_nodewise"), tiny.n_nodes
    )
    with torch.no_grad():
        every_frame = physical.rollout(u0, graph, 11, 2.0, 5)
        physical.refresh_frames = 3
        held = physical.rollout(u0, graph, 11, 2.0, 5)
    torch.testing.assert_close(held, every_frame, rtol=0, atol=0)


def test_stiff_reaction_is_sub_stepped_to_track_the_data(small_mesh):
    """Mitchell-Schaeffer's 0.3 ms inward current is under-resolved by a plain 0.4 ms Euler
    step; the reaction's own sub-steps bring the true structure back onto the data."""
    config = BenchmarkConfig(
        reaction="ms", n_samples=3, split_sizes=(1, 1, 1), duration_ms=60.0, seed=1
    )
    dataset = generate_benchmark(config, mesh=small_mesh, name="tiny_ms")
    assert (
        HybridModel.from_spec(
            CandidateSpec(reaction="ms", diffusion="laplacian_global"), dataset.n_nodes
        ).reaction.reaction_substeps(0.4)
        == 4
    )
    plain, plain_at = _true_structure_mse(dataset, reaction_substeps=1)
    substepped, substepped_at = _true_structure_mse(dataset)
    assert substepped < plain / 10
    assert substepped < 5e-4
    assert substepped_at < plain_at


def test_a_module_without_edge_conductance_is_integrated_through_forward(tiny):
    """An edited template may drop the flux form: its rate is then used at every sub-step."""
    from leads_engine.diffusion import template_source

    source = (
        template_source("laplacian_global")
        .replace("def edge_conductance(", "def _unused_conductance(")
        .replace("self.edge_conductance(u, graph)", "self._unused_conductance(u, graph)")
    )
    spec = CandidateSpec(reaction="ap", diffusion="laplacian_global", diffusion_source=source)
    flux = HybridModel.from_spec(
        CandidateSpec(reaction="ap", diffusion="laplacian_global"), tiny.n_nodes
    )
    plain = HybridModel.from_spec(spec, tiny.n_nodes)
    assert flux.flux_form and not plain.flux_form
    graph = MeshGraph.from_mesh(tiny.mesh(), 1)
    u0 = torch.from_numpy(tiny.u[:1, 0])
    with torch.no_grad():
        a = flux.rollout(u0, graph, 10, 2.0, 5)
        b = plain.rollout(u0, graph, 10, 2.0, 5)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
