"""Hybrid residual reactions (``leads_engine.reactions.residual``): a catalog model plus a
zero-initialised MLP. Rest stays an equilibrium, the fused integrator's Jacobians and adjoint are
exact for it (against autograd and finite differences), the spec validates and identifies it,
and a fit penalises and reports the residual's share of the reaction."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from pydantic import ValidationError
from test_integrator import _layout, _plain_rollout

from leads_engine.graph import MeshGraph
from leads_engine.heart_mesh import make_lv_mesh
from leads_engine.hybrid import HybridModel
from leads_engine.integrator import FluxEulerSegment, SegmentPlan, reaction_transition
from leads_engine.reactions import ResidualReaction, build_reaction
from leads_engine.reactions.residual import RATE_SCALE, residual_penalty, residual_share
from leads_engine.spec import CandidateSpec, ResidualSpec
from leads_engine.training import TrainingConfig, evaluate, fit


def _randomised(reaction: ResidualReaction, scale: float = 0.5, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in reaction.mlp.parameters():
            weight.copy_(torch.randn(weight.shape, generator=generator) * scale)


@pytest.mark.parametrize("name", ["ap", "ms", "fk"])
def test_an_untrained_residual_is_the_catalog_model_and_rest_stays_an_equilibrium(name):
    base = build_reaction(name)
    hybrid = ResidualReaction(build_reaction(name), hidden=8, layers=2)
    generator = torch.Generator().manual_seed(1)
    u = torch.rand(50, 1, generator=generator)
    w = torch.rand(base.n_recovery, 50, 1, generator=generator)
    expected, got = base(u, w), hybrid(u, w)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)
    assert hybrid.state_names == base.state_names and hybrid.max_step_ms == base.max_step_ms
    assert hybrid.parameter_values() == base.parameter_values()
    _randomised(hybrid)
    rest = hybrid.initial_state(4, 1)
    with torch.no_grad():
        du, dw = hybrid(rest[0], rest[1:])
    assert float(du.abs().max()) < 1e-6 and float(dw.abs().max()) < 1e-6
    moved = (hybrid(u, w)[0] - base(u, w)[0]).detach()
    assert float(moved.abs().max()) > 1e-3  # the network does change the rates off rest


def test_latent_variables_extend_the_state_and_carry_memory_the_catalog_model_lacks():
    base = build_reaction("ms")
    hybrid = ResidualReaction(build_reaction("ms"), hidden=8, layers=2, latent=2)
    assert hybrid.state_names == (*base.state_names, "z1", "z2")
    assert hybrid.resting_state == (*base.resting_state, 0.0, 0.0)
    assert hybrid.n_recovery == base.n_recovery + 2
    assert hybrid.initial_state(5, 3).shape == (1 + base.n_recovery + 2, 5, 3)
    generator = torch.Generator().manual_seed(2)
    u = torch.rand(40, 1, generator=generator)
    w = torch.rand(hybrid.n_recovery, 40, 1, generator=generator)
    du, dw = hybrid(u, w)  # untrained: the catalog model, latent variables at rest
    base_du, base_dw = base(u, w[: base.n_recovery])
    torch.testing.assert_close(du, base_du, rtol=0, atol=0)
    torch.testing.assert_close(dw[: base.n_recovery], base_dw, rtol=0, atol=0)
    assert float(dw[base.n_recovery :].abs().max()) == 0.0
    _randomised(hybrid)
    rest = hybrid.initial_state(4, 1)
    with torch.no_grad():
        du, dw = hybrid(rest[0], rest[1:])
    assert float(du.abs().max()) < 1e-6 and float(dw.abs().max()) < 1e-6
    # the latent state changes the rate of u: memory beyond (u, w)
    shifted = w.clone()
    shifted[base.n_recovery :] += 0.5
    with torch.no_grad():
        assert float((hybrid(u, shifted)[0] - hybrid(u, w)[0]).abs().max()) > 1e-4
        share = residual_share(hybrid, [(u, w)])
    assert share["share"] > 0 and share["states"] == 40


def test_residual_options_are_checked():
    with pytest.raises(ValueError, match="layers"):
        ResidualReaction(build_reaction("ap"), hidden=8, layers=5)
    with pytest.raises(ValueError, match="latent"):
        ResidualReaction(build_reaction("ap"), latent=5)
    with pytest.raises(ValueError, match="not another residual"):
        ResidualReaction(ResidualReaction(build_reaction("ap")))


@pytest.mark.parametrize("name", ["ap", "fk"])
def test_reaction_transition_of_a_residual_is_the_sub_step_s_jacobian(name):
    reaction = ResidualReaction(build_reaction(name), hidden=8, layers=2).double()
    _randomised(reaction)
    p = {k: v.detach() for k, v in reaction.physical_parameters().items()}
    r = reaction.n_recovery
    generator = torch.Generator().manual_seed(0)
    u = torch.rand(7, 1, dtype=torch.float64, generator=generator)
    s = torch.rand(r, 7, 1, dtype=torch.float64, generator=generator)
    h = 0.1
    transition = reaction_transition(reaction, u, s, p, h)

    def step(y: torch.Tensor) -> torch.Tensor:
        du, ds = reaction(y[:1].reshape(1, 1), y[1:].reshape(r, 1, 1), p)
        return y + h * torch.cat((du.reshape(1), ds.reshape(r)))

    for node in range(7):
        y = torch.cat((u[node], s[:, node, 0]))
        jacobian = torch.autograd.functional.jacobian(step, y)
        torch.testing.assert_close(transition[:, :, node], jacobian.T)


def test_segment_adjoint_with_a_residual_passes_gradcheck():
    """The fused integrator's backward for the catalog parameters and the residual's weights
    (every layer) against central differences, in float64."""
    mesh = make_lv_mesh(24)
    graph = MeshGraph.from_mesh(mesh, 1, dtype=torch.float64)
    layout = _layout(graph)
    reaction = ResidualReaction(build_reaction("ap"), hidden=4, layers=1).double()
    _randomised(reaction, scale=0.3)
    plan = SegmentPlan(frames=2, steps_per_frame=2, dt=0.4, substeps=2)
    p = reaction.physical_parameters()
    names = tuple(p)
    params = [v.detach().clone().requires_grad_(True) for v in p.values()]
    own = list(reaction.mlp.parameters())
    n = mesh.n_nodes
    torch.manual_seed(0)
    u = torch.rand(n, 1, dtype=torch.float64, requires_grad=True)
    s = (0.5 * torch.rand(1, n, 1, dtype=torch.float64)).requires_grad_(True)
    values = layout.values(graph.edge_conductance(torch.full((n,), 0.3, dtype=torch.float64)))
    values = values.detach().requires_grad_(True)

    def run(u, s, values, *tensors):
        return FluxEulerSegment.apply(reaction, layout, plan, names, u, s, values, *tensors)

    assert torch.autograd.gradcheck(
        run, (u, s, values, *params, *own), eps=1e-6, atol=1e-6, rtol=1e-5
    )


@pytest.mark.parametrize(
    ("reaction", "diffusion", "latent"),
    [("ap", "laplacian_nodewise", 0), ("ms", "gcn", 0), ("ms", "laplacian_nodewise", 2)],
)
def test_fused_rollout_with_a_residual_matches_plain_autograd(tiny, reaction, diffusion, latent):
    graph = MeshGraph.from_mesh(tiny.mesh(), 2, dtype=torch.float64)
    u0 = torch.from_numpy(tiny.u[:2, 0]).double()
    target = torch.from_numpy(tiny.u[:2, 1:13]).double()
    residual = {"hidden": 8, "layers": 2, "penalty": 0.0, "latent": latent}
    results = []
    for fused in (False, True):
        spec = CandidateSpec(
            reaction=reaction, diffusion=diffusion, reaction_residual=residual, seed=3
        )
        model = HybridModel.from_spec(spec, tiny.n_nodes).double()
        _randomised(model.reaction, scale=0.2, seed=5)
        if fused:
            predicted = model.rollout(u0, graph, 12, 2.0, 5, checkpoint_frames=4)
        else:
            predicted = _plain_rollout(model, graph, u0, 12, 2.0, 5)
        loss = torch.mean((predicted - target) ** 2)
        loss.backward()
        grads = {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None}
        results.append((loss.detach(), grads))
    (plain_loss, plain_grads), (fused_loss, fused_grads) = results
    torch.testing.assert_close(fused_loss, plain_loss, rtol=1e-9, atol=0)
    assert any(key.startswith("reaction.mlp.") for key in plain_grads)
    assert any(key.startswith("reaction.base.raw_") for key in plain_grads)
    assert plain_grads.keys() == fused_grads.keys()
    for key, plain in plain_grads.items():
        scale = float(plain.abs().max())
        torch.testing.assert_close(fused_grads[key], plain, rtol=1e-9, atol=1e-9 * scale, msg=key)


def test_spec_validates_and_identifies_the_residual():
    spec = CandidateSpec(
        reaction="ap", diffusion="laplacian_global", reaction_residual={"hidden": 8}
    )
    assert spec.reaction_residual == ResidualSpec(hidden=8, layers=2, penalty=0.1)
    again = CandidateSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    plain = CandidateSpec(reaction="ap", diffusion="laplacian_global")
    assert plain.reaction_residual is None and plain != spec
    with pytest.raises(ValidationError, match="already a network"):
        CandidateSpec(reaction="neural", diffusion="laplacian_global", reaction_residual={})
    with pytest.raises(ValidationError, match="less than or equal to 128"):
        CandidateSpec(
            reaction="ap", diffusion="laplacian_global", reaction_residual={"hidden": 999}
        )
    with pytest.raises(ValidationError, match="penalty"):
        CandidateSpec(
            reaction="ap", diffusion="laplacian_global", reaction_residual={"penalty": -1}
        )
    with pytest.raises(ValidationError, match="extra"):
        CandidateSpec(reaction="ap", diffusion="laplacian_global", reaction_residual={"width": 3})
    # no latent variables: the dump (and the identity of archived specs) is as before
    assert "latent" not in spec.model_dump()["reaction_residual"]
    latent = CandidateSpec(
        reaction="ap", diffusion="laplacian_global", reaction_residual={"hidden": 8, "latent": 2}
    )
    assert latent.model_dump()["reaction_residual"]["latent"] == 2 and latent != spec
    assert CandidateSpec.model_validate_json(latent.model_dump_json()) == latent
    with pytest.raises(ValidationError, match="latent"):
        CandidateSpec(reaction="ap", diffusion="laplacian_global", reaction_residual={"latent": 9})
    assert "learning_rate" not in latent.model_dump()["reaction_residual"]
    faster = {"latent": 2, "learning_rate": 0.01}
    fast = CandidateSpec(reaction="ap", diffusion="laplacian_global", reaction_residual=faster)
    assert fast.model_dump()["reaction_residual"]["learning_rate"] == 0.01 and fast != latent
    with pytest.raises(ValidationError, match="learning_rate"):
        CandidateSpec(
            reaction="ap", diffusion="laplacian_global", reaction_residual={"learning_rate": 1}
        )


def test_penalty_and_share_on_visited_states(tiny):
    spec = CandidateSpec(reaction="ap", diffusion="laplacian_nodewise", reaction_residual={})
    model = HybridModel.from_spec(spec, tiny.n_nodes)
    graph = MeshGraph.from_mesh(tiny.mesh(), 2)
    visited: list = []
    with torch.no_grad():
        model.rollout(torch.from_numpy(tiny.u[:2, 0]), graph, 20, 2.0, 5, 10, visited=visited)
    assert len(visited) == 2 and visited[0][1].shape == (1, 2 * tiny.n_nodes, 1)
    share = residual_share(model.reaction, visited)
    assert share["share"] == 0.0 and share["rms"] == 0.0 and share["states"] == 4 * tiny.n_nodes
    assert float(residual_penalty(model.reaction, visited)) == 0.0
    _randomised(model.reaction, scale=0.3)
    share = residual_share(model.reaction, visited)
    assert 0.0 < share["share"] < 1.0 and share["rms"] > 0
    penalty = residual_penalty(model.reaction, visited)
    assert float(penalty) == pytest.approx((share["rms"] / RATE_SCALE) ** 2, rel=1e-4)
    penalty.backward()
    assert model.reaction.mlp[-1].weight.grad.abs().sum() > 0


def test_a_residual_fit_reports_its_share_and_reloads(tiny):
    config = TrainingConfig(epochs=2, compile=False, batch_size=3)
    spec = CandidateSpec(
        reaction="ap", diffusion="laplacian_nodewise", reaction_residual={"hidden": 8}
    )
    result = fit(spec, tiny, config)
    assert result.status == "ok"
    residual = result.summary()["residual"]
    assert residual["hidden"] == 8 and residual["penalty"] == 0.1 and residual["split"] == "val"
    assert 0.0 < residual["share"] < 0.5  # AP data: the catalog model does the work
    assert any(key.startswith("reaction.mlp.") for key in result.state_dict)
    # the stored weights rebuild the same model: evaluation twice gives the same numbers
    first = evaluate(spec, tiny, result.state_dict, "val", config)
    second = evaluate(spec, tiny, result.state_dict, "val", config)
    assert first.mse == second.mse
    assert first.mse == pytest.approx(result.best_val_loss, rel=1e-5)
    plain = fit(CandidateSpec(reaction="ap", diffusion="laplacian_nodewise"), tiny, config)
    assert plain.summary()["residual"] is None


def test_a_larger_penalty_keeps_the_residual_smaller(tiny):
    config = TrainingConfig(epochs=2, compile=False, batch_size=3, residual_learning_rate=3e-2)
    shares = []
    for penalty in (0.0, 10.0):
        spec = CandidateSpec(
            reaction="ap",
            diffusion="laplacian_nodewise",
            reaction_residual={"hidden": 8, "penalty": penalty},
        )
        shares.append(fit(spec, tiny, config).residual["rms"])
    assert shares[1] < shares[0]


def test_the_residual_s_own_learning_rate_drives_its_network(tiny):
    """A spec's ``learning_rate`` is the Adam step of the residual network: the same fit as the
    engine's setting of that value, and another fit than the default's."""
    config = TrainingConfig(epochs=1, compile=False, batch_size=3)

    def rms(residual: dict, **settings: float) -> float:
        spec = CandidateSpec(
            reaction="ap", diffusion="laplacian_global", reaction_residual=residual
        )
        return fit(spec, tiny, replace(config, **settings)).residual["rms"]

    from_spec = rms({"hidden": 8, "latent": 1, "learning_rate": 3e-2})
    from_config = rms({"hidden": 8, "latent": 1}, residual_learning_rate=3e-2)
    default = rms({"hidden": 8, "latent": 1})
    assert from_spec == pytest.approx(from_config, rel=1e-6)
    assert from_spec > 1.5 * default
