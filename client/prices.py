"""The price table of the LLMs the agent knows, and the cost of a run's tokens.

Prices are list prices in USD per million tokens (input, output, cache write, cache read), as
published by Anthropic (platform.claude.com/docs/en/about-claude/pricing: 5-minute cache
writes cost 1.25x the input price, cache reads 0.1x) and OpenAI (platform.openai.com/pricing:
no charge for cache writes, cached input at the listed discount). Prices for prompts above
200k tokens (Sonnet 4/4.5 long context) are not modelled: a search's requests stay far below.

A model name is resolved *exactly*: the name itself, else the name with a trailing snapshot date
removed (``claude-sonnet-4-5-20250929``, ``gpt-4o-mini-2024-07-18``) or a ``-latest`` suffix,
then a family alias (``claude-sonnet-4`` is ``claude-sonnet-4-0``). Never by a shorter prefix of
another family: ``gpt-4o-mini-...`` is never priced as ``gpt-4o``. An unknown model has no
price (``None``) and the report says "unknown".

    cost = (fresh_input * p_in + output * p_out + cache_write * p_write + cache_read * p_read) / 1e6
    fresh_input = input - cache_write - cache_read   (input counts every prompt token)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .policy import Usage

__all__ = ["PRICES", "Price", "price_of", "price_usage", "resolve_model"]


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_write: float
    cache_read: float


def _anthropic(input_price: float, output_price: float) -> Price:
    return Price(input_price, output_price, input_price * 1.25, input_price * 0.1)


def _openai(input_price: float, output_price: float, cached: float) -> Price:
    return Price(input_price, output_price, input_price, cached)


#: Model families (and the snapshots priced differently from their family), by exact name.
PRICES: dict[str, Price] = {
    # Anthropic
    "claude-opus-4-6": _anthropic(5.0, 25.0),
    "claude-opus-4-5": _anthropic(5.0, 25.0),
    "claude-opus-4-1": _anthropic(15.0, 75.0),
    "claude-opus-4-0": _anthropic(15.0, 75.0),
    "claude-sonnet-4-6": _anthropic(3.0, 15.0),
    "claude-sonnet-4-5": _anthropic(3.0, 15.0),
    "claude-sonnet-4-0": _anthropic(3.0, 15.0),
    "claude-3-7-sonnet": _anthropic(3.0, 15.0),
    "claude-haiku-4-5": _anthropic(1.0, 5.0),
    "claude-3-5-haiku": _anthropic(0.8, 4.0),
    "claude-3-haiku": Price(0.25, 1.25, 0.30, 0.03),
    # OpenAI
    "gpt-5": _openai(1.25, 10.0, 0.125),
    "gpt-5-mini": _openai(0.25, 2.0, 0.025),
    "gpt-5-nano": _openai(0.05, 0.40, 0.005),
    "gpt-4.1": _openai(2.0, 8.0, 0.5),
    "gpt-4.1-mini": _openai(0.4, 1.6, 0.1),
    "gpt-4.1-nano": _openai(0.1, 0.4, 0.025),
    "gpt-4o": _openai(2.5, 10.0, 1.25),
    "gpt-4o-2024-05-13": _openai(5.0, 15.0, 5.0),  # the first snapshot: no cache discount
    "gpt-4o-mini": _openai(0.15, 0.6, 0.075),
    "o3": _openai(2.0, 8.0, 0.5),
    "o4-mini": _openai(1.1, 4.4, 0.275),
}

#: Other names of a family (the API's aliases without a minor version).
ALIASES: dict[str, str] = {
    "claude-opus-4": "claude-opus-4-0",
    "claude-sonnet-4": "claude-sonnet-4-0",
}

_SNAPSHOT = re.compile(r"-(?:\d{8}|\d{4}-\d{2}-\d{2}|latest)$")


def resolve_model(model: str) -> str | None:
    """The price table's entry for a model name, or ``None`` when unknown (never a guess)."""
    name = model.strip().lower()
    for candidate in (name, _SNAPSHOT.sub("", name)):
        candidate = ALIASES.get(candidate, candidate)
        if candidate in PRICES:
            return candidate
    return None


def price_of(model: str) -> Price | None:
    """The model's list price, or ``None`` for a model the table does not know."""
    entry = resolve_model(model)
    return None if entry is None else PRICES[entry]


def price_usage(usage: Usage) -> None:
    """Set ``usage.cost_usd`` (and ``price_known``) from the price table; ``None`` when the
    model is unknown."""
    price = price_of(usage.model)
    usage.price_known = price is not None
    if price is None:
        usage.cost_usd = None
        return
    fresh_input = max(usage.input_tokens - usage.cache_read_tokens - usage.cache_creation_tokens, 0)
    usage.cost_usd = (
        fresh_input * price.input
        + usage.output_tokens * price.output
        + usage.cache_creation_tokens * price.cache_write
        + usage.cache_read_tokens * price.cache_read
    ) / 1e6
