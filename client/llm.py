"""What the LLM providers share: the prompts, the tool schemas (from the server's
``list_tools``), the step dialogue, retries with backoff.

A provider (``anthropic_provider``, ``openai_provider``) only renders the
:class:`~leads_agent.conversation.Conversation` in its wire format, calls its endpoint and
parses the reply; :class:`LLMPolicy` runs the dialogue of a step: the model may observe
(``query_archive``, ``get_candidate``, ``list_catalogs``, template sources) and set up a
candidate (reaction + one diffusion operation), seeing each tool's answer (errors included, so it
can correct itself); the step ends when it answers without a tool call *and* a candidate is set
up. A reply that sets up nothing (empty, text only, only refused calls) gets a short correction
within the step, at most ``max_corrections`` times, instead of a wasted training.
"""

from __future__ import annotations

import asyncio
import copy
import email.utils
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

from .connection import ToolResult, ToolSpec
from .conversation import Conversation, RequestedCall, ToolOutcome
from .errors import ProviderError
from .policy import ACTION_TOOLS, OBSERVE_TOOLS, ToolEnv, Usage
from .prices import PRICES, price_usage
from .state import Decision, SearchState, ToolCall

__all__ = [
    "PRICES",
    "SYSTEM_PROMPT",
    "AssistantTurn",
    "ChatBackend",
    "LLMPolicy",
    "LoopCounts",
    "RequestedCall",
    "RetryPolicy",
    "TemporaryError",
    "agent_tools",
    "is_duplicate_refusal",
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

Each step you: (1) observe the archive (the first step message lists every candidate, each later
one the previous step's result and the best so far; use query_archive or get_candidate for
more, read_template_source for a template's code);
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
better. Do not repeat a structure already in the archive: training a duplicate is refused.

Beyond the catalog: real tissue need not follow any catalog model. When the best structure
plateaus well above the noise (its diagnosis explains clearly less than about 97% of the
variance), the catalog may lack the right model. Then try a hybrid reaction:
select_reaction(reaction, residual={"hidden": 16, "layers": 2, "penalty": 0.01, "latent": 2,
"learning_rate": 0.01}) adds a small neural residual r_phi(u, w, z) to the reaction's right-hand
side, kept as small as the data allows by the norm penalty, with two latent state variables z for
the memory a catalog model lacks (a two-variable model cannot hold a spike-and-dome plateau); the
result reports the residual's share of the reaction rate (near 0: the
catalog model suffices; large: the model is being replaced, so check it generalises). If the
catalog lists laplacian_anisotropic, it fits conduction along and across fibres. When the
diagnosis points at the reaction (the action potential's shape) and a residual did not close the
gap, edit the reaction's code: read it with read_reaction_source, then modify_reaction(source,
candidate_id=...) or modify_reaction(source, reaction=...) with the complete edited model. On
data a catalog model explains, these add parameters without gain.
The session_id is filled in for you.
"""

STEP_PROMPT = """\
Step {step} of {budget} ({left} left including this one).

Archive:
{archive}
{last}
Set up the next candidate now (select_reaction + one diffusion operation), then reply with your
reasoning and no tool call."""

#: A later step's prompt: what is new since the last one (the rest is in the conversation).
NEXT_STEP_PROMPT = """\
Step {step} of {budget} ({left} left including this one).
Result of step {previous}: {last}
Archive: {count} candidates trained; best so far: {best}
Set up the next candidate now (select_reaction + one diffusion operation), then reply with your
reasoning and no tool call."""

EMPTY_CORRECTION = (
    "Your last reply was empty. Set up this step's candidate now: call select_reaction and one "
    "diffusion operation (select_diffusion, refine_diffusion, simplify_diffusion or "
    "modify_diffusion), then reply with your reasoning."
)
NO_CANDIDATE_CORRECTION = (
    "No candidate is set up for this step yet{refused}. Call select_reaction and one diffusion "
    "operation now (the tools, not text); the candidate is trained when you then reply without "
    "a tool call."
)
DUPLICATE_CORRECTION = (
    "Training was refused: {message}. Set up a structure that is not in the archive yet "
    "(another reaction, template or hyper-parameters), then reply without a tool call."
)

#: The text of the server's refusal to train a structure the session already has.
DUPLICATE_MARK = "duplicate of candidate"


def is_duplicate_refusal(text: str) -> bool:
    """Whether a refused training's error says the structure duplicates an earlier candidate."""
    return DUPLICATE_MARK in (text or "")


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


REACTION_TOOL = ToolSpec(
    name="read_reaction_source",
    description="Python source of a catalog reaction model as this session names it (what "
    "modify_reaction edits): resource session://{session_id}/reaction/{reaction}.",
    input_schema={
        "type": "object",
        "properties": {
            "reaction": {"type": "string", "description": "reaction name from list_catalogs"}
        },
        "required": ["reaction"],
    },
    read_only=True,
)


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
    is filled in), plus ``read_template_source`` and ``read_reaction_source``; training stays
    with the loop."""
    tools = [
        ToolSpec(spec.name, spec.description, _strip_session(spec.input_schema), spec.read_only)
        for name in (*OBSERVE_TOOLS, *ACTION_TOOLS)
        if (spec := server_tools.get(name)) is not None
    ]
    return [*tools, TEMPLATE_TOOL, REACTION_TOOL]


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
class AssistantTurn:
    """One model reply as a provider parsed it: text and tool calls (calls whose arguments
    could not be used carry ``error``)."""

    text: str
    calls: list[RequestedCall]


class ChatBackend(Protocol):
    """A provider: renders a conversation in its wire format and asks the model."""

    model: str
    usage: Usage
    tools: list[ToolSpec]

    async def complete(self, conversation: Conversation) -> AssistantTurn: ...

    async def aclose(self) -> None: ...


@dataclass
class LoopCounts:
    """What the loop had to repair or refuse in a run (reported in the summary)."""

    empty_turns: int = 0
    text_only_turns: int = 0
    malformed_calls: int = 0
    unknown_tools: int = 0
    refused_actions: int = 0
    duplicates_refused: int = 0
    corrections: int = 0
    steps_without_candidate: int = 0

    def as_dict(self) -> dict[str, int]:
        """JSON form."""
        return asdict(self)


class LLMPolicy:
    """A policy whose thinking is an LLM's (any :class:`ChatBackend`)."""

    def __init__(self, backend: ChatBackend, max_rounds: int = 8, max_corrections: int = 2) -> None:
        self.backend = backend
        self.name = backend.model
        self.usage = backend.usage
        self.max_rounds = max_rounds
        self.max_corrections = max_corrections
        self.conversation = Conversation()
        self.counts = LoopCounts()
        self.last_observation = ""
        self.last_step = 0

    def _prompt(self, state: SearchState) -> str:
        if self.last_step and self.last_observation:
            best = state.best()
            return NEXT_STEP_PROMPT.format(
                step=state.step,
                budget=state.budget,
                left=state.steps_left,
                previous=self.last_step,
                last=self.last_observation,
                count=len(state.trained()),
                best=best.summary() if best else "none yet",
            )
        last = (
            f"\nResult of the previous step: {self.last_observation}\n"
            if self.last_observation
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
            if call.error.startswith("unknown tool"):
                self.counts.unknown_tools += 1
                return f"{call.error}; available: {', '.join(sorted(allowed))}", True, None
            self.counts.malformed_calls += 1
            return (
                f"your tool call could not be used: {call.error}; "
                "send it again with a JSON object of arguments",
                True,
                None,
            )
        if call.name not in allowed:
            self.counts.unknown_tools += 1
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
        if call.name == REACTION_TOOL.name:
            reaction = str(call.arguments.get("reaction", ""))
            try:
                source = await env.read_resource(
                    f"session://{state.session_id}/reaction/{reaction}"
                )
            except Exception as exc:  # report to the model, which can pick another name
                return f"cannot read reaction {reaction!r}: {exc}", True, None
            return source if isinstance(source, str) else source.decode(), False, None
        arguments = dict(call.arguments)
        if call.name in ACTION_TOOLS or call.name in ("list_catalogs", "query_archive"):
            arguments["session_id"] = state.session_id
        result: ToolResult = await env.call(call.name, arguments)
        record = ToolCall(call.name, arguments, ok=result.ok, result=result.for_model(800))
        if not result.ok and call.name in ACTION_TOOLS:
            self.counts.refused_actions += 1
        return result.for_model(), not result.ok, record

    async def _complete(self, step: int) -> tuple[str, list[RequestedCall], bool]:
        turn = await self.backend.complete(self.conversation)
        price_usage(self.usage)
        stored = self.conversation.add_model_turn(turn.text, turn.calls, step)
        if stored.empty:
            self.counts.empty_turns += 1
        return ("" if stored.empty else stored.text), stored.calls, stored.empty

    async def _dialogue(self, state: SearchState, env: ToolEnv) -> Decision:
        """Ask until the model stops calling tools with a candidate set up (or the round and
        correction limits are reached)."""
        allowed = {tool.name for tool in self.tools_for(env)}
        thoughts: list[str] = []
        calls: list[ToolCall] = []
        corrections = 0
        rounds = 0
        while True:
            text, requested, empty = await self._complete(state.step)
            if text:
                thoughts.append(text)
            if requested:
                outcomes = []
                for call in requested:
                    answer, is_error, record = await self._run_call(call, state, env, allowed)
                    if record is not None and record.name in ACTION_TOOLS:
                        calls.append(record)
                    outcomes.append(ToolOutcome(call.call_id, answer, is_error))
                self.conversation.add_tool_results(outcomes, state.step)
                rounds += 1
                if rounds >= self.max_rounds:
                    thoughts.append(f"(stopped after {self.max_rounds} tool rounds)")
                    break
                continue
            if any(c.ok for c in calls):
                break
            if not empty:
                self.counts.text_only_turns += 1
            if corrections >= self.max_corrections:
                self.counts.steps_without_candidate += 1
                thoughts.append(f"(no candidate set up after {corrections} corrections)")
                break
            corrections += 1
            self.counts.corrections += 1
            refused = " (your calls were refused: read their errors)" if calls else ""
            correction = EMPTY_CORRECTION if empty else NO_CANDIDATE_CORRECTION
            self.conversation.add_user(correction.format(refused=refused), state.step)
        thought = "\n".join(thoughts) or "(no reasoning given)"
        return Decision(thought=thought, calls=calls)

    async def next_action(self, state: SearchState, env: ToolEnv) -> Decision:
        """Run the step's dialogue until the model has set up a candidate."""
        self.conversation.compact(before_step=state.step)
        self.conversation.add_user(self._prompt(state), state.step, step_start=True)
        return await self._dialogue(state, env)

    async def revise(self, state: SearchState, env: ToolEnv, refusal: str) -> Decision:
        """The server refused to train the step's candidate as a duplicate: tell the model and
        let it set up another one within the same step."""
        self.counts.duplicates_refused += 1
        self.conversation.add_user(DUPLICATE_CORRECTION.format(message=refusal), state.step)
        return await self._dialogue(state, env)

    def tools_for(self, env: ToolEnv) -> list[ToolSpec]:
        """The tools offered to the model (the backend was built with the same list)."""
        return getattr(self.backend, "tools", [])

    def record_outcome(self, state: SearchState, decision: Decision, observation: str) -> None:
        """Remember the training result for the next step's prompt."""
        self.last_observation = observation
        self.last_step = state.step
