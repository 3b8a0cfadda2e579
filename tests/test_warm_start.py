"""Warm starts in the engine: which parts two specs share, the copy of a parent's tensors into a
new model (the catalog reaction moving under or out of a residual), refusals of weights that do
not fit, and a warm-started fit that starts where its parents left off."""

from __future__ import annotations

import pytest
import torch

from leads_engine.hybrid import HybridModel
from leads_engine.spec import CandidateSpec
from leads_engine.training import TrainingConfig, evaluate, fit
from leads_engine.warm_start import WarmStartError, part_sources, shared_parts, warm_state

RESIDUAL = {"hidden": 8, "layers": 1, "penalty": 0.01, "latent": 1}


def _spec(reaction: str = "ap", diffusion: str = "laplacian_global", **fields) -> CandidateSpec:
    return CandidateSpec(reaction=reaction, diffusion=diffusion, **fields)


def _trained_like(spec: CandidateSpec, n_nodes: int, seed: int) -> dict[str, torch.Tensor]:
    """A state dict of ``spec``'s model with every tensor moved away from its initial value."""
    state = HybridModel.from_spec(spec, n_nodes).state_dict()
    generator = torch.Generator().manual_seed(seed)
    return {k: v + torch.randn(v.shape, generator=generator) for k, v in state.items()}


def test_shared_parts_follow_the_structure() -> None:
    hybrid = _spec(reaction_residual=RESIDUAL)
    assert shared_parts(hybrid, _spec(reaction_residual=RESIDUAL, diffusion="gcn")) == (
        "reaction",
        "residual",
    )
    # the penalty and the learning rate are training options, not structure
    lighter = {**RESIDUAL, "penalty": 0.5, "learning_rate": 0.01}
    assert shared_parts(hybrid, _spec(reaction_residual=lighter)) == (
        "reaction",
        "residual",
        "diffusion",
    )
    assert shared_parts(hybrid, _spec()) == ("reaction", "diffusion")
    assert shared_parts(hybrid, _spec(reaction_residual={**RESIDUAL, "latent": 2})) == (
        "reaction",
        "diffusion",
    )
    assert shared_parts(hybrid, _spec(reaction="ms", diffusion="gcn")) == ()
    conductivity = _spec(diffusion_hyperparameters={"conductivity": 2.0})
    assert shared_parts(conductivity, _spec()) == ("reaction",)
    # the first parent that has a part gives it
    sources = part_sources(
        hybrid, [("c-a", _spec(reaction_residual=RESIDUAL, diffusion="gcn")), ("c-b", _spec())]
    )
    assert sources == {"reaction": "c-a", "residual": "c-a", "diffusion": "c-b"}


def test_warm_state_copies_each_part_from_its_parent_and_leaves_the_rest_fresh() -> None:
    n_nodes = 30
    child = _spec(diffusion="laplacian_nodewise", reaction_residual=RESIDUAL)
    hybrid = _spec(diffusion="laplacian_global", reaction_residual=RESIDUAL)
    operator = _spec(reaction="ms", diffusion="laplacian_nodewise")
    hybrid_state = _trained_like(hybrid, n_nodes, seed=1)
    operator_state = _trained_like(operator, n_nodes, seed=2)
    fresh = HybridModel.from_spec(child, n_nodes).state_dict()

    state, sources = warm_state(
        child, n_nodes, [(hybrid, hybrid_state), (operator, operator_state)]
    )

    assert sources == {"reaction": 0, "residual": 0, "diffusion": 1}
    assert state.keys() == fresh.keys()
    for key, value in state.items():
        if key.startswith("reaction."):
            assert torch.equal(value, hybrid_state[key]), key
        else:
            assert torch.equal(value, operator_state[key]), key
    HybridModel.from_spec(child, n_nodes).load_state_dict(state)  # a complete, loadable state

    # nothing shared: the fresh, seeded initialisation
    untouched, none = warm_state(child, n_nodes, [(_spec(reaction="ms", diffusion="gcn"), {})])
    assert none == {}
    assert all(torch.equal(untouched[k], fresh[k]) for k in fresh)


def test_the_catalog_reaction_moves_under_and_out_of_a_residual() -> None:
    n_nodes = 12
    plain, hybrid = _spec(), _spec(reaction_residual=RESIDUAL)
    plain_state = _trained_like(plain, n_nodes, seed=3)
    state, _ = warm_state(hybrid, n_nodes, [(plain, plain_state)])
    assert torch.equal(state["reaction.base.raw_k"], plain_state["reaction.raw_k"])
    fresh = HybridModel.from_spec(hybrid, n_nodes).state_dict()
    assert torch.equal(state["reaction.mlp.0.weight"], fresh["reaction.mlp.0.weight"])

    hybrid_state = _trained_like(hybrid, n_nodes, seed=4)
    back, sources = warm_state(plain, n_nodes, [(hybrid, hybrid_state)])
    assert sources == {"reaction": 0, "diffusion": 0}
    assert torch.equal(back["reaction.raw_k"], hybrid_state["reaction.base.raw_k"])
    assert not any(key.startswith("reaction.mlp.") for key in back)


def test_weights_that_do_not_fit_are_refused() -> None:
    nodewise = _spec(diffusion="laplacian_nodewise")
    other_mesh = _trained_like(nodewise, 40, seed=5)
    with pytest.raises(WarmStartError, match="shape .*another mesh"):
        warm_state(nodewise, 30, [(nodewise, other_mesh)])
    state = _trained_like(nodewise, 30, seed=6)
    del state["reaction.raw_k"]
    with pytest.raises(WarmStartError, match="'reaction.raw_k' is missing"):
        warm_state(_spec(diffusion="gcn"), 30, [(nodewise, state)])


def test_a_warm_started_fit_starts_where_its_parents_left_off(tiny) -> None:
    """A trained structure plus a residual: the residual's network starts at zero, so the warm
    model is its parent exactly (the same validation error before training), and one epoch
    from there beats one epoch from scratch."""
    config = TrainingConfig(epochs=3, compile=False)
    parent_spec = _spec(reaction="ms", diffusion="laplacian_global")
    parent = fit(parent_spec, tiny, config)
    assert parent.status == "ok" and parent.state_dict is not None
    child = _spec(reaction="ms", diffusion="laplacian_global", reaction_residual=RESIDUAL)
    start, sources = warm_state(child, tiny.n_nodes, [(parent_spec, parent.state_dict)])
    assert sources == {"reaction": 0, "diffusion": 0}
    before = evaluate(child, tiny, start, split="val", config=config).summary()["mse"]
    assert before == pytest.approx(parent.best_val_loss, rel=1e-4)

    one_epoch = TrainingConfig(epochs=1, compile=False)
    warm = fit(child, tiny, one_epoch, initial_state=start)
    cold = fit(child, tiny, one_epoch)
    assert warm.status == cold.status == "ok"
    assert warm.best_val_loss < 0.9 * cold.best_val_loss
