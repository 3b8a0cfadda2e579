"""The candidate spec: everything needed to rebuild and retrain one hybrid model.

A spec is plain, serialisable data (a pydantic model): the reaction model and its initial
parameters, the diffusion template with its hyper-parameters and, for a ``modify`` step, the
edited source code, plus where it came from (parent and operation) and the seed. The same spec
and seed train to the same numbers on the same machine.
"""

from __future__ import annotations

import hashlib
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

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
    diffusion: str = Field(description="diffusion template name from the catalog")
    diffusion_hyperparameters: dict[str, int | float | str] = Field(default_factory=dict)
    diffusion_source: str | None = Field(
        default=None, description="edited template source (modify); None = the catalog file"
    )
    parent_id: str | None = None
    operation: Operation = "select"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    def code_hash(self) -> str | None:
        """SHA-256 of the edited diffusion source, or None for catalog code."""
        if self.diffusion_source is None:
            return None
        return hashlib.sha256(self.diffusion_source.encode()).hexdigest()
