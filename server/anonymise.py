"""Anonymisation: in an anonymised session the agent sees ``reaction_A``, ``reaction_B``, ...
instead of the catalog names, and a neutral handle instead of the data set's name, so it has to
choose a reaction from the data rather than from what it remembers about a named ionic model or
reads in a file name.

It holds by construction, not by filtering output: everything the agent can read about the
session (its archive rows, tool results, resources) is *written* under the aliases, and the real
names, the alias map and the data set's ground truth live in the archive's truth files
(:mod:`leads_server.archive.truth`), which no tool reads back. The aliases are drawn from the
operating system's random source, not from the session's seed, so knowing the seed and this
code does not give the map. Nothing the agent writes (a thought, SQL, a reaction name) is ever
rewritten with the map: a rewrite would answer which alias a real name has.
"""

from __future__ import annotations

import random
import re
import secrets
import string
from collections.abc import Iterable, Mapping
from typing import Any

from leads_engine.reactions import REACTION_MODELS
from leads_engine.spec import CandidateSpec

#: Fields of a data set's summary an anonymised session shows: its shape and sampling, nothing of
#: how it was generated (reaction, generator seed, noise level) nor its name.
PUBLIC_SUMMARY_FIELDS = (
    "samples",
    "split",
    "frames",
    "t_end_ms",
    "frame_interval_ms",
    "nodes",
    "cells",
    "conductivity_range",
    # whether the mesh carries a fibre field ("per node"/"per cell"): an input of the twin, like
    # the mesh itself; the anisotropy ratio it was generated with is truth and stays hidden
    "fibers",
)


def dataset_handle(session_id: str) -> str:
    """The neutral name an anonymised session shows for its data set."""
    return f"data-{session_id.removeprefix('s-')[:6]}"


def public_summary(summary: Mapping[str, Any], handle: str) -> dict[str, Any]:
    """A data set's summary as an anonymised session shows it: shape and sampling only."""
    shown = {key: summary[key] for key in PUBLIC_SUMMARY_FIELDS if key in summary}
    return {"name": handle, **shown}


def _spellings(name: str, class_name: str) -> list[str]:
    """Ways a reaction's name appears in text: ``aliev_panfilov``, ``Aliev-Panfilov``,
    ``Aliev Panfilov``, ``AlievPanfilov``."""
    words = name.split("_")
    return [
        name,
        "-".join(words),
        " ".join(words),
        class_name,
    ]


class ReactionAliases:
    """A bijection between catalog reaction names and anonymous aliases.

    ``mapping`` is real name -> alias; an empty mapping disables anonymisation (every method
    then returns its input unchanged)."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self.mapping = dict(mapping)
        self.reverse = {alias: real for real, alias in self.mapping.items()}
        patterns: list[tuple[str, str]] = []
        for real, alias in self.mapping.items():
            cls = REACTION_MODELS.get(real)
            for spelling in _spellings(real, cls.__name__ if cls else real):
                patterns.append((spelling, alias))
        patterns.sort(key=lambda item: -len(item[0]))
        self._by_spelling = {spelling.lower(): alias for spelling, alias in patterns}
        self._mask_re = (
            re.compile(
                "|".join(rf"(?<![A-Za-z0-9]){re.escape(s)}(?![A-Za-z0-9])" for s, _ in patterns),
                re.IGNORECASE,
            )
            if patterns
            else None
        )
        self._unmask_re = (
            re.compile("|".join(rf"\b{re.escape(alias)}\b" for alias in self.reverse))
            if self.reverse
            else None
        )

    @classmethod
    def shuffled(
        cls, rng: random.Random | None = None, names: Iterable[str] | None = None
    ) -> ReactionAliases:
        """Aliases ``reaction_A``, ``reaction_B``, ... assigned in an order drawn from ``rng``
        (default: the operating system's random source, which no seed reproduces)."""
        real = sorted(names if names is not None else REACTION_MODELS)
        (rng or secrets.SystemRandom()).shuffle(real)
        letters = string.ascii_uppercase
        return cls({name: f"reaction_{letters[i]}" for i, name in enumerate(real)})

    @classmethod
    def disabled(cls) -> ReactionAliases:
        return cls({})

    @property
    def enabled(self) -> bool:
        return bool(self.mapping)

    def show(self, real_name: str) -> str:
        """The name the agent sees for a catalog reaction."""
        return self.mapping.get(real_name, real_name)

    def real(self, shown_name: str) -> str:
        """The catalog name behind an alias (other names pass through)."""
        return self.reverse.get(shown_name, shown_name)

    def shown_spec(self, spec: CandidateSpec) -> CandidateSpec:
        """``spec`` as the session shows and archives it: its reaction under the alias (an
        unvalidated copy: the alias is not a catalog name)."""
        return spec.model_copy(update={"reaction": self.show(spec.reaction)})

    def real_fields(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """An archived spec's fields with the real reaction name behind the alias."""
        out = dict(fields)
        if isinstance(out.get("reaction"), str):
            out["reaction"] = self.real(out["reaction"])
        return out

    def mask_text(self, text: str) -> str:
        """Replace every spelling of a real reaction name in ``text`` by its alias (for text the
        server or an older archive wrote, never for the agent's own words)."""
        if self._mask_re is None:
            return text
        return self._mask_re.sub(lambda m: self._by_spelling[m.group(0).lower()], text)

    def mask(self, value: Any) -> Any:
        """``mask_text`` applied to every string inside lists, tuples and dicts (keys too)."""
        if not self.enabled:
            return value
        if isinstance(value, str):
            return self.mask_text(value)
        if isinstance(value, Mapping):
            return {self.mask(key): self.mask(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.mask(item) for item in value]
        return value
