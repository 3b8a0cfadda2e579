"""Warm start: a new candidate's parts initialised from trained candidates that share them.

A candidate is three parts, each a group of parameters in its state dict:

- ``reaction``: the catalog reaction model's parameters (``reaction.`` alone, ``reaction.base.``
  under a residual), or the neural reaction's network;
- ``residual``: a hybrid reaction's network ``r_phi`` (``reaction.mlp.``);
- ``diffusion``: the diffusion operator's parameters (``diffusion.``).

A trained candidate can give a part to a new one when that part is the same structure in both
(:func:`shared_parts`): the same reaction model, hyper-parameters and code for ``reaction``; in
addition the same network shape (width, depth, latent variables) for ``residual``; the same
template, hyper-parameters and code for ``diffusion``. Combining two structures that each helped
(a residual found on the isotropic operator, an anisotropic operator found with the plain
reaction) then starts from both instead of from zero: on the quick Beeler-Reuter anisotropic set
the combination's validation MSE after 12 epochs was 8.6e-3 warm against 13.7e-3 cold.

Only tensors move: a parent's model is never built (its code may be an agent's edit), so the
parts are found from the specs and copied key by key, each key's shape checked.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

import torch

from .hybrid import HybridModel
from .spec import CandidateSpec

_RESIDUAL_PREFIX = "reaction.mlp."
#: a warm-started fit's learning rates rise over its first epoch
#: (:attr:`~leads_engine.training.TrainingConfig.warmup_epochs`): its parts are already deep in a
#: minimum, and full first steps threw a residual + anisotropic combination on the quick
#: Beeler-Reuter anisotropic set out of it (a non-finite gradient in epoch 1), while 0.3x steps
#: all along left it at 11.4e-3 after 12 epochs, against 10.0e-3 with full steps and a warm-up
WARMUP_EPOCHS = 1.0
#: how a caller names the parents (a candidate id, an index)
ParentKey = TypeVar("ParentKey", bound=Hashable)


class WarmStartError(ValueError):
    """A parent's weights do not fit the part the specs say it shares (another mesh, a
    corrupted state dict)."""


def shared_parts(spec: CandidateSpec, parent: CandidateSpec) -> tuple[str, ...]:
    """The parts of ``spec`` that ``parent`` has with the same structure (see the module)."""
    parts: list[str] = []
    same_reaction = (
        spec.reaction == parent.reaction
        and spec.reaction_hyperparameters == parent.reaction_hyperparameters
        and spec.reaction_source == parent.reaction_source
    )
    if same_reaction:
        parts.append("reaction")
        mine, theirs = spec.reaction_residual, parent.reaction_residual
        if (
            mine is not None
            and theirs is not None
            and (mine.hidden, mine.layers, mine.latent)
            == (theirs.hidden, theirs.layers, theirs.latent)
        ):
            parts.append("residual")
    if (
        spec.diffusion == parent.diffusion
        and spec.diffusion_hyperparameters == parent.diffusion_hyperparameters
        and spec.diffusion_source == parent.diffusion_source
    ):
        parts.append("diffusion")
    return tuple(parts)


def part_sources(
    spec: CandidateSpec, parents: Sequence[tuple[ParentKey, CandidateSpec]]
) -> dict[str, ParentKey]:
    """Which parent gives each part: ``{part: parent key}``, the first of ``parents`` (key,
    spec) that shares it; parts no parent shares start fresh and are absent."""
    sources: dict[str, ParentKey] = {}
    for parent_id, parent in parents:
        for part in shared_parts(spec, parent):
            sources.setdefault(part, parent_id)
    return sources


def _prefix(spec: CandidateSpec, part: str) -> str:
    """Where ``part`` lives in ``spec``'s state dict."""
    if part == "diffusion":
        return "diffusion."
    if part == "residual":
        return _RESIDUAL_PREFIX
    # under a residual the catalog model is its ``base`` (apart from the network's keys)
    return "reaction.base." if spec.reaction_residual is not None else "reaction."


def warm_state(
    spec: CandidateSpec,
    num_nodes: int,
    parents: Sequence[tuple[CandidateSpec, dict[str, torch.Tensor]]],
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The initial state dict of ``spec``'s model: its fresh (seeded) initialisation with each
    part another candidate shares copied from the first of ``parents`` (spec, trained state)
    that has it; returns it and ``{part: index of its parent}``.

    Raises :class:`WarmStartError` when a shared part's tensors are missing from the parent's
    state or have other shapes (a parent trained on another mesh)."""
    state = HybridModel.from_spec(spec, num_nodes).state_dict()
    sources = part_sources(spec, [(index, parent) for index, (parent, _) in enumerate(parents)])
    for part, index in sources.items():
        parent, parent_state = parents[index]
        mine, theirs = _prefix(spec, part), _prefix(parent, part)
        for key in [k for k in state if k.startswith(mine)]:
            source_key = theirs + key[len(mine) :]
            value = parent_state.get(source_key)
            if value is None or value.shape != state[key].shape:
                found = "missing" if value is None else f"shape {tuple(value.shape)}"
                raise WarmStartError(
                    f"the warm start's parent {index + 1} cannot give the {part}: its "
                    f"{source_key!r} is {found}, the new candidate's {key!r} has shape "
                    f"{tuple(state[key].shape)} (was it trained on another mesh?)"
                )
            state[key] = value.detach().clone().to(state[key].dtype)
    return state, sources
