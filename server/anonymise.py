"""Reaction-name anonymisation: the agent sees ``reaction_A``, ``reaction_B``, ... instead of the
catalog names, so it has to choose a reaction from the data rather than from what it remembers
about a named ionic model. The archive stores the real names; the alias map is stored with the
session's configuration.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Iterable, Mapping
from typing import Any

from leads_engine.reactions import REACTION_MODELS


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
    def shuffled(cls, seed: int, names: Iterable[str] | None = None) -> ReactionAliases:
        """Aliases ``reaction_A``, ``reaction_B``, ... assigned in a seed-shuffled order."""
        real = sorted(names if names is not None else REACTION_MODELS)
        random.Random(seed).shuffle(real)
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

    def mask_text(self, text: str) -> str:
        """Replace every spelling of a real reaction name in ``text`` by its alias."""
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

    def unmask_sql(self, sql: str) -> str:
        """Replace aliases in an agent's SQL by the real names stored in the archive, so that
        ``WHERE reaction = 'reaction_A'`` finds the rows."""
        if self._unmask_re is None:
            return sql
        return self._unmask_re.sub(lambda m: self.reverse[m.group(0)], sql)
