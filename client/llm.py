"""What the LLM providers share: the prompts, the tool schemas (from the server's
``list_tools``), the step dialogue, retries with backoff, and token/cost accounting.

A provider (``anthropic_provider``, ``openai_provider``) only converts messages and tool schemas
to its wire format and calls its endpoint; :class:`LLMPolicy` runs the dialogue of a step: the
model may observe (``query_archive``, ``get_candidate``, ``list_catalogs``, template sources)
and set up a candidate (reaction + one diffusion operation), seeing each tool's answer (errors
included, so it can correct itself); the step ends when it answers without a tool call.
"""

from __future__ import annotations

import asyncio
import copy
import email.utils
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .connection import ToolResult, ToolSpec
from .errors import ProviderError
from .policy import ACTION_TOOLS, OBSERVE_TOOLS, ToolEnv, Usage
from .state import Decision, SearchState, ToolCall

__all__ = [
    "PRICES",
    "SYSTEM_PROMPT",
    "AssistantTurn",
    "ChatBackend",
    "LLMPolicy",
    "RequestedCall",
    "RetryPolicy",
    "TemporaryError",
    "agent_tools",
    "price_usage",
]

SYSTEM_PROMPT = """\
You are LEADS, an agent that discovers the structure of a cardiac electrophysiology digital twin:
a reaction-diffusion model du/dt = D(u; mesh) + R_u(u, v), dv/dt = R_v(u, v) on a heart mesh.
R is a reaction (ionic) model chosen from a catalog (names may be anonymised as reaction_A, ...);
D is a graph diffusion operator chosen from a catalog of templates (physical finite-element
Laplacians, or graph networks that predict edge conductances). Each candidate structure is
fitted by gradient descent for a few epochs and archived with its training and validation
curves.

Each step you: (1) observe the archive (the step message lists every candidate; use
query_archive or get_candidate for more, read_template_source for a template's code);
(2) think: say in a few sentences what the curves tell you (which reaction fits best under the
same diffusion, over- or under-fitting, instability) and what to try next; (3) act: set up
exactly ONE new candidate with select_reaction plus one of select_diffusion, refine_diffusion,
simplify_diffusion or modify_diffusion (modify takes complete edited template source). When a
tool returns an error, read it and correct your call. When the candidate is set up, answer with
your reasoning and NO tool call: the candidate is then trained and you see the result next step.

Good practice: compare reactions under one cheap diffusion first (e.g. laplacian_global), keep
the reaction with the lowest validation loss, then explore diffusion structures (per-node
conductivity laplacian_nodewise, a graph network); refine (more capacity) when under-fitting,
simplify or regularise when over-fitting, soften an unstable operator. Lower validation loss is
better. Do not repeat a structure already in the archive. The session_id is filled in for you.
"""

STEP_PROMPT = """\
Step {step} of {budget} ({left} left including this one).

Archive:
{archive}
{last}
Set up the next candidate now (select_reaction + one diffusion operation), then reply with your
reasoning and no tool call."""

TEMPLATE_TOOL = ToolSpec(
    name="read_template_source",
    description="Python source of a diffusion template of the catalog (what modify_diffusion "
    "edits): resource catalog://diffusion/{template}.",
    input_schema={
        "type": "object",
        "properties": {"template": {"type": "string", "description": "template name"}},
        "required": ["template"],
    },
    read_only=True,
)

# USD per million tokens: input, output, cache write, cache read (list prices).
PRICES: dict[str, tuple[float, float, float, float]] = {
    "claude-sonnet-4-5": (3.0, 15.0, 3.75, 0.30),
    "claude-sonnet-4-0": (3.0, 15.0, 3.75, 0.30),
    "claude-haiku-4-5": (1.0, 5.0, 1.25, 0.10),
    "claude-opus-4-5": (5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-1": (15.0, 75.0, 18.75, 1.50),
    "gpt-4o": (2.5, 10.0, 2.5, 1.25),
    "gpt-4o-mini": (0.15, 0.6, 0.15, 0.075),
    "gpt-4.1": (2.0, 8.0, 2.0, 0.5),
    "gpt-4.1-mini": (0.4, 1.6, 0.4, 0.1),
}


def price_usage(usage: Usage) -> None:
    """Set ``usage.cost_usd`` from the price table (left ``None`` for an unknown model)."""
    price = PRICES.get(usage.model)
    if price is None:
        for name, value in PRICES.items():  # dated snapshots: claude-sonnet-4-5-20250929
            if usage.model.startswith(name + "-"):
                price = value
                break
    if price is None:
        usage.cost_usd = None
        return
    fresh_input = max(usage.input_tokens - usage.cache_read_tokens - usage.cache_creation_tokens, 0)
    usage.cost_usd = (
        fresh_input * price[0]
        + usage.output_tokens * price[1]
        + usage.cache_creation_tokens * price[2]
        + usage.cache_read_tokens * price[3]
    ) / 1e6


def _strip_session(schema: dict[str, Any]) -> dict[str, Any]:
    schema = copy.deepcopy(schema) if schema else {"type": "object", "properties": {}}
    schema.setdefault("type", "object")
    properties = schema.setdefault("properties", {})
    properties.pop("session_id", None)
    if "required" in schema:
        schema["required"] = [r for r in schema["required"] if r != "session_id"]
    return schema


def agent_tools(server_tools: dict[str, ToolSpec]) -> list[ToolSpec]:
    """The tools an LLM sees: the server's observe and act tools (``session_id`` removed, it
    is filled in), plus ``read_template_source``; training stays with the loop."""
    tools = [
        ToolSpec(spec.name, spec.description, _strip_session(spec.input_schema), spec.read_only)
        for name in (*OBSERVE_TOOLS, *ACTION_TOOLS)
        if (spec := server_tools.get(name)) is not None
    ]
    return [*tools, TEMPLATE_TOOL]


class TemporaryError(Exception):
    """A rate limit or server error worth retrying (``retry_after`` seconds when given)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


T = TypeVar("T")


@dataclass
class RetryPolicy:
    """Exponential backoff (``base * 2**attempt``, at most ``cap``), ``Retry-After`` first."""

    attempts: int = 5
    base: float = 1.0
    cap: float = 30.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def run(self, request: Callable[[], Awaitable[T]], usage: Usage, what: str) -> T:
        """Call ``request`` until it stops raising :class:`TemporaryError`."""
        for attempt in range(self.attempts):
            try:
                return await request()
            except TemporaryError as exc:
                if attempt == self.attempts - 1:
                    raise ProviderError(
                        f"{what}: giving up after {self.attempts} tries ({exc})"
                    ) from exc
                delay = exc.retry_after
                if delay is None:
                    delay = self.base * 2**attempt
                usage.retries += 1
                await self.sleep(min(delay, self.cap))
        raise AssertionError("unreachable")


@dataclass
class RequestedCall:
    """A tool call as the model wrote it (``error`` when its arguments did not parse)."""

    call_id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class AssistantTurn:
    """One model reply: text and tool calls."""

    text: str
    calls: list[RequestedCall]


class ChatBackend(Protocol):
    """A provider's conversation, in its own wire format."""

    model: str
    usage: Usage

    def add_user(self, text: str) -> None: ...

    async def complete(self) -> AssistantTurn: ...

    def add_tool_results(self, results: list[tuple[RequestedCall, str, bool]]) -> None: ...

    async def aclose(self) -> None: ...


class LLMPolicy:
    """A policy whose thinking is an LLM's (any :class:`ChatBackend`)."""

    def __init__(self, backend: ChatBackend, max_rounds: int = 8) -> None:
        self.backend = backend
        self.name = backend.model
        self.usage = backend.usage
        self.max_rounds = max_rounds
        self.last_observation = ""

    def _prompt(self, state: SearchState) -> str:
        last = (
            f"\nResult of the previous step: {self.last_observation}\n"
            if (self.last_observation)
            else ""
        )
        return STEP_PROMPT.format(
            step=state.step,
            budget=state.budget,
            left=state.steps_left,
            archive=state.describe(),
            last=last,
        )

    async def _run_call(
        self, call: RequestedCall, state: SearchState, env: ToolEnv, allowed: set[str]
    ) -> tuple[str, bool, ToolCall | None]:
        if call.error:
            return (
                (
                    f"your tool call could not be used: {call.error}; "
                    "send it again with valid JSON arguments"
                ),
                True,
                None,
            )
        if call.name not in allowed:
            return (
                f"unknown tool {call.name!r}; available: {', '.join(sorted(allowed))}",
                True,
                None,
            )
        if call.name == TEMPLATE_TOOL.name:
            template = str(call.arguments.get("template", ""))
            try:
                source = await env.read_resource(f"catalog://diffusion/{template}")
            except Exception as exc:  # report to the model, which can pick another name
                return f"cannot read template {template!r}: {exc}", True, None
            return source if isinstance(source, str) else source.decode(), False, None
        arguments = dict(call.arguments)
        if (
            call.name in ACTION_TOOLS
            or call.name == "list_catalogs"
            or (call.name == "query_archive")
        ):
            arguments["session_id"] = state.session_id
        result: ToolResult = await env.call(call.name, arguments)
        record = ToolCall(call.name, arguments, ok=result.ok, result=result.for_model(800))
        return result.for_model(), not result.ok, record

    async def next_action(self, state: SearchState, env: ToolEnv) -> Decision:
        """Run the step's dialogue until the model stops calling tools."""
        self.backend.add_user(self._prompt(state))
        allowed = {tool.name for tool in self.tools_for(env)}
        thoughts: list[str] = []
        calls: list[ToolCall] = []
        for _ in range(self.max_rounds):
            turn = await self.backend.complete()
            price_usage(self.usage)
            if turn.text.strip():
                thoughts.append(turn.text.strip())
            if not turn.calls:
                break
            results = []
            for call in turn.calls:
                text, is_error, record = await self._run_call(call, state, env, allowed)
                if record is not None and record.name in ACTION_TOOLS:
                    calls.append(record)
                results.append((call, text, is_error))
            self.backend.add_tool_results(results)
        else:
            thoughts.append(f"(stopped after {self.max_rounds} tool rounds)")
        thought = "\n".join(thoughts) or "(no reasoning given)"
        return Decision(thought=thought, calls=calls)

    def tools_for(self, env: ToolEnv) -> list[ToolSpec]:
        """The tools offered to the model (the backend was built with the same list)."""
        return getattr(self.backend, "tools", [])

    def record_outcome(self, state: SearchState, decision: Decision, observation: str) -> None:
        """Remember the training result for the next step's prompt."""
        self.last_observation = observation
