"""Refusals: :class:`DiscoveryError` and how a spec's validation error becomes one.

Every bad input raises :class:`DiscoveryError` with a message that says what to do instead; the
MCP layer turns it into an ``isError`` tool result. A :class:`~leads_engine.spec.CandidateSpec`
checks itself when it is built; :func:`checked_spec` is the one place where its validation error
is caught and reworded for the agent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from leads_engine.diffusion import DiffusionSpecError
from leads_engine.spec import CandidateSpec, resolve_diffusion

SANDBOX_MISSING = (
    "sandbox unavailable: edited diffusion code needs leads_engine.sandbox, which this "
    "installation lacks, so it is never executed; use select_diffusion, refine_diffusion or "
    "simplify_diffusion instead"
)


class DiscoveryError(Exception):
    """A refused action, with an actionable message for the agent."""


def _refusal(cause: Exception) -> str:
    """The agent-facing text of a spec rule's error."""
    if isinstance(cause, DiffusionSpecError):
        return f"{cause} (see list_catalogs for the ranges)"
    return str(cause)


def checked_spec(fields: Mapping[str, Any]) -> CandidateSpec:
    """``CandidateSpec(**fields)``, validated once; a broken rule becomes a DiscoveryError."""
    try:
        return CandidateSpec.model_validate(dict(fields))
    except ValidationError as exc:
        errors = exc.errors()
        cause = errors[0].get("ctx", {}).get("error") if len(errors) == 1 else None
        raise DiscoveryError(
            _refusal(cause) if isinstance(cause, ValueError) else str(exc)
        ) from exc


def checked_diffusion(template: str, hyperparameters: Mapping[str, Any] | None) -> dict:
    """A draft's diffusion part (template and hyper-parameters completed with the catalog
    defaults), checked by the spec's own rule before the whole spec exists."""
    try:
        return resolve_diffusion(template, dict(hyperparameters or {}))
    except DiffusionSpecError as exc:
        raise DiscoveryError(_refusal(exc)) from exc
