"""The candidate spec: everything needed to rebuild and retrain one hybrid model.

A spec is plain, serialisable data (a pydantic model): the reaction model and its initial
parameters, the diffusion template with its hyper-parameters and, for a ``modify`` step, the
edited source code, plus where it came from (parent and operation) and the seed. The same spec
and seed train to the same numbers on the same machine.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from .diffusion import resolve_hyperparameters, template_info
from .reactions import NeuralReaction, resolve_reaction_name
from .reactions.residual import ResidualReaction

# ---------------------------------------------------------------------------- validity
# The rules a spec obeys, checked once when it is built (CandidateSpec's validator); the server
# checks a draft's parts with the same two functions before the whole spec exists.

#: structural options of the 'neural' reaction; catalog reactions take none
NEURAL_HYPERPARAMETERS = ("hidden", "layers", "n_recovery")


class UnknownReactionError(ValueError):
    """A reaction name that is neither a catalog name, a short alias nor 'neural'."""


def resolve_reaction(
    name: str, hyperparameters: dict[str, int] | None = None
) -> tuple[str, dict[str, int]]:
    """The canonical name of reaction ``name`` (catalog name, short alias such as ``ap``, or
    ``neural``) and its checked hyper-parameters; ValueError says what is wrong."""
    values = dict(hyperparameters or {})
    if name == NeuralReaction.name:
        unknown = sorted(set(values) - set(NEURAL_HYPERPARAMETERS))
        if unknown:
            raise ValueError(
                f"unknown hyper-parameter(s) {unknown} for 'neural'; allowed: "
                f"{', '.join(NEURAL_HYPERPARAMETERS)}"
            )
        try:
            NeuralReaction(**values)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"invalid hyper-parameters for 'neural': {exc}") from exc
        return name, values
    try:
        canonical = resolve_reaction_name(name)
    except ValueError as exc:
        raise UnknownReactionError(f"{exc}, or 'neural'") from exc
    if values:
        raise ValueError(
            f"reaction {name!r} takes no hyper-parameters (only 'neural' does: "
            f"{', '.join(NEURAL_HYPERPARAMETERS)}); pass hyperparameters={{}}"
        )
    return canonical, values


def resolve_diffusion(template: str, hyperparameters: dict[str, object] | None = None) -> dict:
    """The hyper-parameters of catalog template ``template``, completed with the catalog
    defaults and checked (:class:`~leads_engine.diffusion.DiffusionSpecError` otherwise)."""
    return resolve_hyperparameters(template, dict(hyperparameters or {}))


class ResidualSpec(BaseModel):
    """The neural residual added to a catalog reaction (a hybrid reaction,
    :class:`~leads_engine.reactions.residual.ResidualReaction`): the MLP's width and depth and
    the weight of the norm penalty ``penalty * mean ||r_phi||^2`` added to the loss."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: int = Field(default=16, ge=4, le=128, description="hidden units per layer")
    layers: int = Field(default=2, ge=1, le=3, description="hidden layers")
    penalty: float = Field(
        default=0.1, ge=0.0, le=10.0, description="weight of the residual's norm penalty"
    )
    latent: int = Field(
        default=0,
        ge=0,
        le=4,
        description="extra state variables only the residual drives (memory the catalog "
        "model lacks, e.g. a slow current behind a plateau); 0: none",
    )
    learning_rate: float | None = Field(
        default=None,
        gt=0.0,
        le=0.1,
        description="Adam step of the residual network; None: the engine's default (3e-3, "
        "small so that the residual grows only where the data keeps asking for it)",
    )

    @model_serializer(mode="wrap")
    def _leave_out_no_latent(self, handler: SerializerFunctionWrapHandler) -> dict:
        """A residual without latent variables or its own learning rate dumps as before those
        fields existed (archived specs and their hashes stay unchanged)."""
        data = handler(self)
        if isinstance(data, dict):
            if data.get("latent") == 0:
                del data["latent"]
            if data.get("learning_rate", 0) is None:
                del data["learning_rate"]
        return data


Operation = Literal["select", "refine", "modify", "simplify", "baseline", "finetune"]
#: Every way a candidate can come about (the archive's ``candidates.operation`` values).
OPERATIONS: tuple[str, ...] = get_args(Operation)
#: The operations that spend a session's search budget (one trained candidate each).
SEARCH_OPERATIONS: tuple[str, ...] = ("select", "refine", "modify", "simplify")


class CandidateSpec(BaseModel):
    """A hybrid model structure: reaction + diffusion, and its provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reaction: str = Field(description="reaction catalog name or alias, or 'neural'")
    reaction_parameters: dict[str, float] = Field(
        default_factory=dict, description="initial values of the reaction's parameters"
    )
    reaction_learnable: bool = Field(
        default=True,
        description="False: the reaction parameters stay at their initial values (the physics "
        "oracle, which knows the true reaction model and its parameters)",
    )
    reaction_hyperparameters: dict[str, int] = Field(
        default_factory=dict, description="for 'neural': hidden, layers, n_recovery"
    )
    reaction_residual: ResidualSpec | None = Field(
        default=None,
        description="a neural residual added to the catalog reaction (hybrid reaction); None: "
        "the catalog model alone",
    )
    reaction_source: str | None = Field(
        default=None,
        description="edited source of the reaction model (modify_reaction); 'reaction' names the "
        "catalog model it was edited from; None = the catalog code",
    )
    diffusion: str = Field(description="diffusion template name from the catalog")
    diffusion_hyperparameters: dict[str, int | float | str] = Field(default_factory=dict)
    diffusion_source: str | None = Field(
        default=None, description="edited template source (modify); None = the catalog file"
    )
    parent_id: str | None = None
    operation: Operation = "select"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    @model_validator(mode="before")
    @classmethod
    def _check_and_complete(cls, data: object) -> object:
        """Resolve the reaction to its canonical name and check its hyper-parameters; check the
        diffusion template and complete its hyper-parameters with the catalog defaults.

        Edited code (``diffusion_source``) keeps its hyper-parameters as given: its own
        ``Diffusion`` may name them differently from the catalog entry, so only the template
        name is checked."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        reaction, reaction_hp = data.get("reaction"), data.get("reaction_hyperparameters")
        if isinstance(reaction, str) and isinstance(reaction_hp, dict | None):
            data["reaction"], data["reaction_hyperparameters"] = resolve_reaction(
                reaction, reaction_hp
            )
        if data.get("reaction_residual") is not None and data.get("reaction") in (
            NeuralReaction.name,
            ResidualReaction.name,
        ):
            raise ValueError(
                "a residual is added to a catalog reaction model; 'neural' is already a network"
            )
        if data.get("reaction_source") is not None and data.get("reaction") in (
            NeuralReaction.name,
            ResidualReaction.name,
        ):
            raise ValueError("edited reaction code replaces a catalog reaction model, not 'neural'")
        diffusion, diffusion_hp = data.get("diffusion"), data.get("diffusion_hyperparameters")
        if isinstance(diffusion, str) and isinstance(diffusion_hp, dict | None):
            if data.get("diffusion_source") is None:
                data["diffusion_hyperparameters"] = resolve_diffusion(diffusion, diffusion_hp)
            else:
                template_info(diffusion)
        return data

    @model_serializer(mode="wrap")
    def _leave_out_no_residual(self, handler: SerializerFunctionWrapHandler) -> dict:
        """A spec without a residual dumps exactly as before the field existed (archived specs
        and their hashes stay unchanged)."""
        data = handler(self)
        if isinstance(data, dict) and data.get("reaction_residual", 0) is None:
            del data["reaction_residual"]
        if isinstance(data, dict) and data.get("reaction_source", 0) is None:
            del data["reaction_source"]  # likewise without edited reaction code
        return data

    @property
    def has_edited_code(self) -> bool:
        """Whether the spec carries agent-edited code (diffusion or reaction source): it is
        built, trained and evaluated only in the locked-down worker, and never compiled."""
        return self.diffusion_source is not None or self.reaction_source is not None

    def code_hash(self) -> str | None:
        """SHA-256 of the edited code, or None for catalog code: of the diffusion source alone
        when only the diffusion is edited (as before reaction edits existed), else of both
        sources."""
        if self.reaction_source is None:
            if self.diffusion_source is None:
                return None
            return hashlib.sha256(self.diffusion_source.encode()).hexdigest()
        both = json.dumps({"diffusion": self.diffusion_source, "reaction": self.reaction_source})
        return hashlib.sha256(both.encode()).hexdigest()
