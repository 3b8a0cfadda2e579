"""The interface every decision maker implements (offline rules, Anthropic, OpenAI-compatible).

A policy gets the search state (the archive read back through ``query_archive``) and a tool
environment. It may *observe* with read-only tools at will (``query_archive``,
``get_candidate``, ``list_catalogs``, template sources) and returns a :class:`Decision`: its
reasoning (``thought``) and the calls that set up the next candidate (a reaction choice and one
of select/refine/modify/simplify on the diffusion). A call it already ran carries ``ok``; the
agent loop runs the others, then trains the candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .connection import ToolResult
from .state import Decision, SearchState

__all__ = ["ACTION_TOOLS", "OBSERVE_TOOLS", "Policy", "ToolEnv", "Usage"]

ACTION_TOOLS = (
    "select_reaction",
    "select_diffusion",
    "refine_diffusion",
    "modify_diffusion",
    "modify_reaction",
    "simplify_diffusion",
)
OBSERVE_TOOLS = ("list_catalogs", "query_archive", "get_candidate")


class ToolEnv(Protocol):
    """What a policy may use: MCP tools and resources (a :class:`ServerConnection`)."""

    async def call(self, name: str, arguments: dict[str, Any] | None = None) -> ToolResult: ...

    async def read_resource(self, uri: str) -> str | bytes: ...

    def has_tool(self, name: str) -> bool: ...


@dataclass
class Usage:
    """Tokens (and cost where the model's price is known) spent by a policy."""

    model: str = "offline"
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    requests: int = 0
    retries: int = 0
    cost_usd: float | None = None
    price_known: bool = field(default=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the summary and the report."""
        return {
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_tokens": self.cache_creation_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "requests": self.requests,
            "retries": self.retries,
            "cost_usd": round(self.cost_usd, 6) if self.cost_usd is not None else None,
        }


class Policy(Protocol):
    """Decides the next candidate of a search."""

    name: str
    usage: Usage

    async def next_action(self, state: SearchState, env: ToolEnv) -> Decision:
        """Observe (read-only tools), think, and return the step's decision."""
        ...

    def record_outcome(self, state: SearchState, decision: Decision, observation: str) -> None:
        """Learn what the training of the decided candidate gave (LLMs keep the dialogue)."""
        ...
