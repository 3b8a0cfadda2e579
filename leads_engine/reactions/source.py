"""Reaction models as source code: a catalog model's source (what ``modify_reaction`` edits)
and the loader of an edited one.

A catalog module imports its base with a relative import (``from .base import ...``); the
source handed out names the module instead (``from leads_engine.reactions.base import ...``),
the one engine import edited reaction code may make (:mod:`leads_engine.sandbox.rules`).
Edited code is untrusted: :func:`load_reaction_class` runs only in trusted processes on catalog
code, or in a locked-down worker after the static rules passed.
"""

from __future__ import annotations

import hashlib
import inspect
import linecache
import sys
import types

from .base import ReactionModel

__all__ = ["ReactionSourceError", "build_edited_reaction", "catalog_source", "load_reaction_class"]

#: the import of the shared base as a catalog module writes it, and as edited code must
_RELATIVE_BASE = "from .base import"
_ABSOLUTE_BASE = "from leads_engine.reactions.base import"


class ReactionSourceError(ValueError):
    """Reaction source that cannot be compiled, executed or does not define one model."""


def catalog_source(name: str) -> str:
    """The Python source of catalog reaction ``name`` (catalog name or alias), with the
    absolute import of its base, ready to be edited and passed to ``modify_reaction``."""
    from . import REACTION_MODELS, resolve_reaction_name

    cls = REACTION_MODELS[resolve_reaction_name(name)]
    source = inspect.getsource(sys.modules[cls.__module__])
    return source.replace(_RELATIVE_BASE, _ABSOLUTE_BASE)


def load_reaction_class(source: str, filename: str = "<reaction>") -> type[ReactionModel]:
    """Execute reaction ``source`` in a fresh module and return its one class derived from
    :class:`ReactionModel`; :class:`ReactionSourceError` otherwise (the code's own exception
    as its ``__cause__``)."""
    try:
        code = compile(source, filename, "exec")
    except SyntaxError as exc:
        raise ReactionSourceError(
            f"{filename}: syntax error at line {exc.lineno}: {exc.msg}"
        ) from exc
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]
    module = types.ModuleType(f"leads_reaction_{digest}")
    module.__file__ = filename
    # tracebacks read the edited lines through linecache
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        exec(code, module.__dict__)  # trusted catalog code or sandbox-checked source
    except Exception as exc:
        raise ReactionSourceError(
            f"{filename}: executing the source failed: {type(exc).__name__}: {exc}"
        ) from exc
    models = [
        value
        for value in module.__dict__.values()
        if isinstance(value, type)
        and issubclass(value, ReactionModel)
        and value.__module__ == module.__name__
    ]
    if len(models) != 1:
        found = ", ".join(cls.__name__ for cls in models) or "none"
        raise ReactionSourceError(
            f"{filename}: the source must define exactly one class derived from ReactionModel "
            f"(found: {found})"
        )
    return models[0]


def build_edited_reaction(
    source: str, learnable: bool = True, filename: str = "<edited reaction>", **values: float
) -> ReactionModel:
    """The model defined by reaction ``source``, with optional initial parameter values."""
    cls = load_reaction_class(source, filename)
    try:
        return cls(learnable=learnable, **values)
    except (TypeError, ValueError) as exc:
        raise ReactionSourceError(f"{filename}: building the model failed: {exc}") from exc
