"""What one step of the offline policy decides (:class:`Plan`), and the identity of a structure
that keeps the policy from repeating one: its reaction, template, hyper-parameters, code edits
(read from the code, :func:`detect_edits`) and residual."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .state import Candidate

__all__ = ["Plan", "c_edits", "detect_edits", "structure_key"]


def detect_edits(code: str | None) -> list[str]:
    """Which library edits a template source carries (from their signatures in the code)."""
    if not code:
        return []
    found = []
    if "mix_logit" in code:
        found.append("gated_residual")
    if "layer_norm" in code:
        found.append("layer_norm")
    if "torch.tanh" in code and "self.gain" in code:
        found.append("soft_gain")
    return found


@dataclass
class Plan:
    """What the rules decided: the reaction, the diffusion operation and its arguments."""

    reaction: str
    operation: str  # select | refine | simplify | modify
    template: str
    hyperparameters: dict[str, Any]
    thought: str
    parent: Candidate | None = None
    edit: str | None = None
    #: a neural residual on the reaction (select_reaction's ``residual``)
    residual: dict[str, Any] | None = None
    #: train for this many times the run's epochs per candidate (Decision.epochs_factor)
    epochs_factor: int = 1
    #: trained candidates whose shared parts start the candidate (train_candidate's warm_start)
    warm_start: tuple[str, ...] = ()
    #: the rule that decided it (:data:`RULES`); set by :func:`plan_step`
    rule: str = ""

    def reaction_residual(self) -> dict[str, Any] | None:
        """The residual the candidate will have: this plan's, else a derived candidate keeps its
        parent's (select_reaction is called again for every step)."""
        if self.residual is not None or self.operation == "select" or self.parent is None:
            return self.residual
        return self.parent.residual

    def key(self, edits: list[str]) -> str:
        """Structure identity used to avoid repeats."""
        return structure_key(
            self.reaction, self.template, self.hyperparameters, edits, self.reaction_residual()
        )

    def identity(self) -> str:
        """The action itself (operation, parent, edit, residual and warm start included): a
        refused one is not retried, and a guessed step is kept only when it is this action."""
        parent = self.parent.candidate_id if self.parent else None
        return json.dumps(
            [
                self.reaction,
                self.operation,
                self.template,
                self.hyperparameters,
                parent,
                self.edit,
                *([self.residual] if self.residual else []),
                # a guess decided before a parent trained lacks it: not the same action
                *([list(self.warm_start)] if self.warm_start else []),
            ],
            sort_keys=True,
            default=str,
        )


def structure_key(
    reaction: str,
    template: str,
    hyper: dict[str, Any],
    edits: list[str],
    residual: dict[str, Any] | None = None,
) -> str:
    """A structure's identity: two candidates with the same key are the same structure."""
    extra = [residual] if residual else []
    return json.dumps(
        [reaction, template, hyper, sorted(edits), *extra], sort_keys=True, default=str
    )


def c_edits(candidate: Candidate) -> list[str]:
    """The library edits a candidate's code carries."""
    return detect_edits(candidate.code)
