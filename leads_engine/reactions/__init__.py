"""Catalog of ionic reaction models.

Each model is one module; :data:`REACTION_MODELS` maps catalog names to classes and
:data:`ALIASES` the short names used on the command line (``ap``, ``rm``, ``ms``, ...).
"""

from __future__ import annotations

from types import MappingProxyType

from .aliev_panfilov import AlievPanfilov
from .base import ParameterRange, ReactionModel, smooth_step
from .fenton_karma import FentonKarma
from .fitzhugh_nagumo import FitzHughNagumo
from .mitchell_schaeffer import MitchellSchaeffer
from .neural import NeuralReaction
from .residual import ResidualReaction
from .rogers_mcculloch import RogersMcCulloch
from .source import ReactionSourceError, build_edited_reaction, catalog_source, load_reaction_class

REACTION_MODELS: MappingProxyType[str, type[ReactionModel]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (AlievPanfilov, RogersMcCulloch, MitchellSchaeffer, FitzHughNagumo, FentonKarma)
    }
)
ALIASES: MappingProxyType[str, str] = MappingProxyType(
    {
        "ap": "aliev_panfilov",
        "rm": "rogers_mcculloch",
        "ms": "mitchell_schaeffer",
        "fhn": "fitzhugh_nagumo",
        "fk": "fenton_karma",
    }
)


def resolve_reaction_name(name: str) -> str:
    """Catalog name for a catalog name or alias; ValueError listing the choices otherwise."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in REACTION_MODELS:
        choices = ", ".join(f"{a} ({n})" for a, n in ALIASES.items())
        raise ValueError(f"unknown reaction model {name!r}; choose one of: {choices}")
    return key


def build_reaction(name: str, learnable: bool = True, **values: float) -> ReactionModel:
    """Instantiate a catalog reaction model by name or alias, with optional parameter values.

    ``neural`` builds the :class:`NeuralReaction` (keyword arguments: ``hidden``, ``layers``,
    ``n_recovery``, ``time_scale``).
    """
    if name == NeuralReaction.name:
        return NeuralReaction(learnable=learnable, **values)
    return REACTION_MODELS[resolve_reaction_name(name)](learnable=learnable, **values)


__all__ = [
    "ALIASES",
    "REACTION_MODELS",
    "AlievPanfilov",
    "FentonKarma",
    "FitzHughNagumo",
    "MitchellSchaeffer",
    "NeuralReaction",
    "ParameterRange",
    "ReactionModel",
    "ReactionSourceError",
    "ResidualReaction",
    "RogersMcCulloch",
    "build_edited_reaction",
    "build_reaction",
    "catalog_source",
    "load_reaction_class",
    "resolve_reaction_name",
    "smooth_step",
]
