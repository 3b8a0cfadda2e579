"""A search run's conversation with an LLM, kept valid for any provider at every request.

Real models send turns a provider refuses to take back: an empty reply, a tool call whose
arguments are not a JSON object, an id or a tool name outside the API's pattern. The
conversation stores turns in a provider-neutral form and *repairs them when they arrive*, so
what a provider renders (``anthropic_provider``, ``openai_provider``) always passes the public
APIs' checks:

- an empty model turn is stored as the text ``(empty reply)`` (the model is told next);
- tool-call arguments are always a JSON object (``{}`` when the model's did not parse; the
  call carries the error the model will read in its tool result);
- call ids match ``[A-Za-z0-9_-]+`` and are unique; tool names match ``[A-Za-z0-9_-]{1,64}``;
- every tool call of a model turn is answered by exactly one tool result in the next turn;
- a user turn is never empty and consecutive user texts are merged.

It also keeps the cost down: :meth:`Conversation.compact` replaces the long tool results of
finished steps by a one-line note (the step prompts carry the archive's summary), so a request
grows by a bounded amount per step, and the renderers place cache breakpoints on the latest
turns (:meth:`Conversation.cache_breakpoints`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EMPTY_REPLY",
    "Conversation",
    "ModelTurn",
    "RequestedCall",
    "ToolOutcome",
    "UserTurn",
]

EMPTY_REPLY = "(empty reply)"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
INVALID_NAME = "invalid_tool_name"


@dataclass
class RequestedCall:
    """A tool call as the model wrote it (``error`` when it cannot be run as written)."""

    call_id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class ToolOutcome:
    """The answer to one tool call."""

    call_id: str
    text: str
    is_error: bool = False


@dataclass
class ModelTurn:
    """A model reply as stored (repaired): non-empty text or at least one call."""

    text: str
    calls: list[RequestedCall] = field(default_factory=list)
    step: int = 0
    empty: bool = False  # the model sent nothing usable; ``text`` is EMPTY_REPLY


@dataclass
class UserTurn:
    """What the loop says: tool results first, then text (either may be absent, not both)."""

    text: str = ""
    results: list[ToolOutcome] = field(default_factory=list)
    step: int = 0
    step_start: bool = False  # this turn opens a step (carries the step prompt)


Turn = UserTurn | ModelTurn


@dataclass
class Conversation:
    """The turns of one search run (system prompt and tools live with the provider)."""

    turns: list[Turn] = field(default_factory=list)
    compact_above: int = 600  # tool results longer than this are compacted once their step ends
    _ids: set[str] = field(default_factory=set)

    # ------------------------------------------------------------------ adding turns

    def add_user(self, text: str, step: int, step_start: bool = False) -> None:
        """A user text (a step prompt or a correction); merged into a trailing user turn."""
        text = text.strip()
        if not text:
            raise ValueError("a user message needs text")
        last = self.turns[-1] if self.turns else None
        if isinstance(last, UserTurn):
            last.text = f"{last.text}\n\n{text}" if last.text else text
            last.step_start = last.step_start or step_start
            return
        self.turns.append(UserTurn(text=text, step=step, step_start=step_start))

    def add_model_turn(self, text: str, calls: list[RequestedCall], step: int) -> ModelTurn:
        """Store a model reply, repaired (see the module docstring); returns what was stored.

        ``calls`` are repaired in place: the caller answers them by their (new) ids."""
        text = (text or "").strip()
        for index, call in enumerate(calls):
            self._repair_call(call, index)
        empty = not text and not calls
        turn = ModelTurn(text=EMPTY_REPLY if empty else text, calls=calls, step=step, empty=empty)
        self.turns.append(turn)
        return turn

    def _repair_call(self, call: RequestedCall, index: int) -> None:
        if not isinstance(call.arguments, dict):
            call.error = call.error or (
                f"arguments must be a JSON object, got {type(call.arguments).__name__}"
            )
            call.arguments = {}
        if call.error:
            call.arguments = {}
        if not _NAME.match(call.name or ""):
            call.error = call.error or f"unknown tool {call.name!r}"
            call.name = INVALID_NAME
        call_id = call.call_id if _ID.match(call.call_id or "") else ""
        serial = len(self._ids)
        while not call_id or call_id in self._ids:
            call_id = f"call_repaired_{serial}_{index}"
            serial += 1
        call.call_id = call_id
        self._ids.add(call_id)

    def add_tool_results(self, outcomes: list[ToolOutcome], step: int) -> None:
        """Answer the last model turn's calls: one result each, in its order; a call left
        unanswered gets an error result, a result for no call is dropped."""
        last = self.turns[-1] if self.turns else None
        if not isinstance(last, ModelTurn) or not last.calls:
            raise ValueError("tool results must follow a model turn with tool calls")
        by_id = {o.call_id: o for o in outcomes}
        results = [
            by_id.get(call.call_id)
            or ToolOutcome(call.call_id, "ERROR: this call was not run", is_error=True)
            for call in last.calls
        ]
        for result in results:
            if not result.text.strip():
                result.text = "(no output)"
        self.turns.append(UserTurn(results=results, step=step))

    # ------------------------------------------------------------------ cost

    def compact(self, before_step: int) -> int:
        """Replace long tool results of steps before ``before_step`` by a one-line note;
        returns how many were compacted."""
        count = 0
        for turn in self.turns:
            if not isinstance(turn, UserTurn) or turn.step >= before_step:
                continue
            for result in turn.results:
                if len(result.text) > self.compact_above and not result.text.startswith("[step"):
                    result.text = (
                        f"[step {turn.step} tool result of {len(result.text)} characters, "
                        "removed to save tokens; call the tool again if you need it]"
                    )
                    count += 1
        return count

    def cache_breakpoints(self, limit: int = 3) -> list[int]:
        """Indices of the user turns whose last block carries a cache breakpoint: the latest
        turn (written now), the previous user turn (where the last request's breakpoint was,
        so it is read back) and the latest step prompt before them (stable across the
        compaction of the step that just ended)."""
        users = [i for i, t in enumerate(self.turns) if isinstance(t, UserTurn)]
        chosen: list[int] = []
        if users:
            chosen.append(users[-1])
        if len(users) > 1:
            chosen.append(users[-2])
        starts = [i for i in users[:-1] if self.turns[i].step_start]  # type: ignore[union-attr]
        if starts and starts[-1] not in chosen:
            chosen.append(starts[-1])
        return sorted(chosen[:limit])
