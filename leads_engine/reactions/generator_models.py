"""Reaction models the data generator can simulate: the search catalog plus models kept out of it.

The search catalog (:data:`~leads_engine.reactions.REACTION_MODELS`, what ``list_catalogs`` and
candidate specs accept) is what a structure search may choose. The generator may also simulate
models that are deliberately absent from it (:data:`OUT_OF_CATALOG`, e.g. Beeler-Reuter 1977),
so a benchmark can ask how LEADS does when no catalog structure holds the truth.
"""

from __future__ import annotations

from types import MappingProxyType

from . import ALIASES, REACTION_MODELS
from .base import ReactionModel
from .beeler_reuter import BeelerReuter

#: Generator-only models: never in the search catalog.
OUT_OF_CATALOG: MappingProxyType[str, type[ReactionModel]] = MappingProxyType(
    {BeelerReuter.name: BeelerReuter}
)
#: Every model the generator can simulate, by full name.
GENERATOR_MODELS: MappingProxyType[str, type[ReactionModel]] = MappingProxyType(
    {**REACTION_MODELS, **OUT_OF_CATALOG}
)
#: Short names on the generator's command line (the catalog's plus ``br``).
GENERATOR_ALIASES: MappingProxyType[str, str] = MappingProxyType(
    {**ALIASES, "br": BeelerReuter.name}
)


def resolve_generator_reaction(name: str) -> str:
    """Full name of a generator model from a name or alias; ValueError listing the choices."""
    key = GENERATOR_ALIASES.get(name.lower(), name.lower())
    if key not in GENERATOR_MODELS:
        choices = ", ".join(f"{a} ({n})" for a, n in GENERATOR_ALIASES.items())
        raise ValueError(f"unknown reaction model {name!r}; choose one of: {choices}")
    return key


def in_search_catalog(name: str) -> bool:
    """Whether a generator model (name or alias) is one the search catalog holds."""
    return resolve_generator_reaction(name) in REACTION_MODELS


def build_generator_reaction(
    name: str, step_size_ms: float | None = None, learnable: bool = False, **values: float
) -> ReactionModel:
    """A generator model by name or alias with optional parameter values.

    ``step_size_ms`` is the explicit integration step: models with stiff gates
    (:class:`BeelerReuter`) then use Rush-Larsen gate updates written for that step.
    """
    model = GENERATOR_MODELS[resolve_generator_reaction(name)](learnable=learnable, **values)
    if isinstance(model, BeelerReuter):
        model.rush_larsen_step_ms = step_size_ms
    return model


__all__ = [
    "GENERATOR_ALIASES",
    "GENERATOR_MODELS",
    "OUT_OF_CATALOG",
    "build_generator_reaction",
    "in_search_catalog",
    "resolve_generator_reaction",
]
