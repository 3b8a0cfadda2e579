"""The fused integrator (``leads_engine.integrator``): the CSR flux operator, the segment's
hand-written adjoint against finite differences (gradcheck, float64), and the fused rollout
against the plain autograd rollout it replaces (losses and gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leads_engine.graph import MeshGraph
from leads_engine.heart_mesh import make_lv_mesh
from leads_engine.hybrid import HybridModel
from leads_engine.integrator import (
    FluxEulerSegment,
    FluxOperatorLayout,
    SegmentPlan,
    reaction_transition,
)
from leads_engine.reactions import build_reaction
from leads_engine.spec import CandidateSpec


@pytest.fixture(scope="module")
def little_mesh():
    return make_lv_mesh(24)


def _layout(graph: MeshGraph) -> FluxOperatorLayout:
    return FluxOperatorLayout.from_edges(
        graph.edge_index, graph.inverse_mass, graph.num_nodes * graph.batch_size
    )


def test_the_operator_is_the_mesh_laplacian_and_its_transpose(small_mesh):
    graph = MeshGraph.from_mesh(small_mesh, 2, dtype=torch.float64)
    layout = _layout(graph)
    sigma = torch.linspace(0.5, 2.0, small_mesh.n_nodes, dtype=torch.float64)
    values = layout.values(graph.edge_conductance(sigma))
    u = torch.rand(2 * small_mesh.n_nodes, 1, dtype=torch.float64)
    dense = layout.matrix(values).to_dense()
    torch.testing.assert_close(dense @ u, graph.flux_divergence(graph.edge_conductance(sigma), u))
    laplacian = small_mesh.laplacian(sigma.numpy()).toarray()
    np.testing.assert_allclose(dense[: small_mesh.n_nodes, : small_mesh.n_nodes], laplacian)
    torch.testing.assert_close(layout.transpose(values).to_dense(), dense.T)
    torch.testing.assert_close(dense.sum(1), torch.zeros_like(dense[:, 0]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["ap", "fk", "ms", "neural"])
def test_reaction_transition_is_the_sub_step_s_jacobian(name):
    reaction = build_reaction(name).double()
    p = {k: v.detach() for k, v in reaction.physical_parameters().items()}
    r = reaction.n_recovery
    generator = torch.Generator().manual_seed(0)
    u = torch.rand(7, 1, dtype=torch.float64, generator=generator)
    s = torch.rand(r, 7, 1, dtype=torch.float64, generator=generator)
    h = 0.1
    transition = reaction_transition(reaction, u, s, p, h)  # [i, o, nodes]

    def step(y: torch.Tensor) -> torch.Tensor:
        du, ds = reaction(y[:1].reshape(1, 1), y[1:].reshape(r, 1, 1), p)
        return y + h * torch.cat((du.reshape(1), ds.reshape(r)))

    for node in range(7):
        y = torch.cat((u[node], s[:, node, 0]))
        jacobian = torch.autograd.functional.jacobian(step, y)  # [o, i]
        torch.testing.assert_close(transition[:, :, node], jacobian.T)


@pytest.mark.parametrize(
    ("name", "plan"),
    [
        ("ap", SegmentPlan(frames=2, steps_per_frame=2, dt=0.4, substeps=2)),
        ("fk", SegmentPlan(frames=2, steps_per_frame=2, dt=0.4, substeps=1)),
        ("ms", SegmentPlan(frames=1, steps_per_frame=3, dt=0.3, substeps=3)),
        ("neural", SegmentPlan(frames=2, steps_per_frame=2, dt=0.4, substeps=1)),
    ],
)
def test_segment_adjoint_passes_gradcheck(little_mesh, name, plan):
    """The hand-written backward against central differences, in float64, for the state,
    the operator's values, the reaction's parameters and a neural reaction's weights."""
    graph = MeshGraph.from_mesh(little_mesh, 1, dtype=torch.float64)
    layout = _layout(graph)
    reaction = build_reaction(name).double()
    torch.manual_seed(0)
    own = []
    if name == "neural":
        with torch.no_grad():
            for weight in reaction.mlp.parameters():
                weight.normal_(0.0, 0.5)
        own = [w for w in reaction.mlp.parameters()][-2:]  # the output layer, kept small
    p = reaction.physical_parameters()
    names = tuple(p)
    params = [v.detach().clone().requires_grad_(True) for v in p.values()]
    n = little_mesh.n_nodes
    u = torch.rand(n, 1, dtype=torch.float64, requires_grad=True)
    s = (0.5 * torch.rand(reaction.n_recovery, n, 1, dtype=torch.float64)).requires_grad_(True)
    sigma = torch.full((n,), 0.3, dtype=torch.float64)
    values = layout.values(graph.edge_conductance(sigma)).detach().requires_grad_(True)

    def run(u, s, values, *tensors):
        frames, s_end = FluxEulerSegment.apply(
            reaction, layout, plan, names, u, s, values, *tensors
        )
        return frames, s_end

    assert torch.autograd.gradcheck(
        run, (u, s, values, *params, *own), eps=1e-6, atol=1e-6, rtol=1e-5
    )


def _plain_rollout(model, graph, u0, n_frames, frame_interval, steps_per_frame):
    """The integrator as autograd records it, sub-step by sub-step (the path the fused one
    replaces): per-edge flux, conductances refreshed every ``refresh_frames`` frames."""
    batch, nodes = u0.shape
    u = u0.reshape(-1, 1)
    w = model.reaction.initial_state(batch * nodes, 1, dtype=u.dtype)[1:]
    p = model.reaction.physical_parameters()
    dt = frame_interval / steps_per_frame
    substeps = model.reaction.reaction_substeps(dt)
    h = dt / substeps
    frames = []
    for frame in range(n_frames):
        if frame % model.refresh_frames == 0:
            conductance = model.diffusion.edge_conductance(u, graph)
        for _ in range(steps_per_frame):
            rate = graph.flux_divergence(conductance, u)
            for _ in range(substeps):
                du, dw = model.reaction(u, w, p)
                u, w = u + h * (rate + du), w + h * dw
        frames.append(u)
    return torch.stack(frames).reshape(n_frames, batch, nodes).transpose(0, 1)


@pytest.mark.parametrize(
    ("reaction", "diffusion", "dtype", "rtol"),
    [
        ("ap", "laplacian_nodewise", torch.float32, 1e-5),
        ("ms", "gcn", torch.float32, 1e-5),
        ("neural", "laplacian_global", torch.float32, 1e-5),
        ("ap", "laplacian_nodewise", torch.float64, 1e-9),
        ("fk", "gcn", torch.float64, 1e-9),
    ],
)
def test_fused_rollout_matches_the_plain_autograd_rollout(tiny, reaction, diffusion, dtype, rtol):
    """Same spec, same seed: the same loss and the same gradient of every parameter."""
    graph = MeshGraph.from_mesh(tiny.mesh(), 2, dtype=dtype)
    u0 = torch.from_numpy(tiny.u[:2, 0]).to(dtype)
    target = torch.from_numpy(tiny.u[:2, 1:13]).to(dtype)
    results = []
    for fused in (False, True):
        model = HybridModel.from_spec(
            CandidateSpec(reaction=reaction, diffusion=diffusion, seed=3), tiny.n_nodes
        ).to(dtype)
        if reaction == "neural":
            with torch.no_grad():
                for weight in model.reaction.mlp.parameters():
                    weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(5))
        if fused:
            predicted = model.rollout(u0, graph, 12, 2.0, 5, checkpoint_frames=4)
        else:
            predicted = _plain_rollout(model, graph, u0, 12, 2.0, 5)
        loss = torch.mean((predicted - target) ** 2)
        loss.backward()
        grads = {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None}
        results.append((loss.detach(), grads))
    (plain_loss, plain_grads), (fused_loss, fused_grads) = results
    torch.testing.assert_close(fused_loss, plain_loss, rtol=rtol, atol=0)
    assert plain_grads.keys() == fused_grads.keys() and plain_grads
    for key, plain in plain_grads.items():
        scale = float(plain.abs().max())
        torch.testing.assert_close(fused_grads[key], plain, rtol=rtol, atol=rtol * scale, msg=key)


def test_segments_store_states_not_a_tape(tiny):
    """The fused rollout's backward needs only the states: its saved tensors for a 1000-step
    rollout of a physical template stay a few MB per trajectory."""
    model = HybridModel.from_spec(
        CandidateSpec(reaction="ap", diffusion="laplacian_nodewise"), tiny.n_nodes
    )
    graph = MeshGraph.from_mesh(tiny.mesh(), 2)
    saved = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    u0 = torch.from_numpy(tiny.u[:2, 0])
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        predicted = model.rollout(u0, graph, 200, 2.0, 5)
    predicted.square().mean().backward()
    states = 200 * 5 * 2 * 2 * 2 * tiny.n_nodes * 4  # steps x sub-steps x (u, v) x batch x bytes
    assert sum(saved) < 1.5 * states
    assert model.diffusion.raw_log_factor.grad.abs().sum() > 0
