"""Recorded provider transcripts played against the LLM loop.

Each file under ``tests/transcripts/`` holds the answers an endpoint gave to a run of the loop
(empty turns, text-only turns, malformed arguments, unknown tools, refused calls, 429/5xx, a
15-step run), recorded from the scripted model of ``fake_llm_endpoints``, and what the loop
decided. A replay serves the same answers in order from a fake endpoint that validates every
request like the public API: the loop must send only valid requests, exactly as many as
recorded, and take the same decisions. Re-record after an intended change of the loop with

    cd tests && ../.venv/bin/python test_agent_llm_replay.py
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fake_llm_endpoints import FakeEndpoint, ScriptedModel
from leads_agent.connection import ToolResult, ToolSpec
from leads_agent.llm import LLMPolicy, RetryPolicy, agent_tools
from leads_agent.state import Candidate, SearchState

TRANSCRIPTS = Path(__file__).parent / "transcripts"
REACTIONS = ["reaction_A", "reaction_B", "reaction_C"]
TEMPLATES = ["laplacian_global", "mean_aggregation", "laplacian_nodewise", "gcn"]
SOURCE = "class Diffusion(torch.nn.Module):\n" + "    # the template's code\n" * 120

FAULTS = {
    (1, 0): "empty",
    (1, 1): "malformed",
    (1, 3): "empty",
    (2, 0): "text_only",
    (2, 1): "not_object",
    (2, 2): "unknown_tool",
    (3, 0): "out_of_range",
}

#: name -> (provider, model, budget, scripted model settings, HTTP faults by request number)
SCENARIOS: dict[str, tuple[str, str, int, dict[str, Any], dict[int, int]]] = {
    "anthropic_faults": ("anthropic", "claude-haiku-4-5", 4, {"faults": FAULTS}, {2: 429, 5: 529}),
    "openai_faults": ("openai", "gpt-4o-mini", 4, {"faults": FAULTS}, {3: 500, 4: 429}),
    "anthropic_long": ("anthropic", "claude-sonnet-4-6", 15, {"observe": True}, {}),
    "openai_long": ("openai", "gpt-4o-mini", 15, {"observe": True}, {}),
}


def server_tools() -> dict[str, ToolSpec]:
    def spec(name: str, properties: dict[str, Any], required: list[str]) -> ToolSpec:
        schema = {"type": "object", "properties": properties, "required": required}
        return ToolSpec(name, f"The {name} tool.", schema)

    text = {"type": "string"}
    return {
        "select_reaction": spec("select_reaction", {"reaction": text}, ["reaction"]),
        "select_diffusion": spec(
            "select_diffusion",
            {"template": text, "hyperparameters": {"type": "object"}},
            ["template"],
        ),
        "query_archive": spec("query_archive", {"sql": text}, ["sql"]),
    }


class ReplayEnv:
    """The server's answers: a width above 64 is refused, everything else accepted."""

    async def call(self, name: str, arguments: dict | None = None) -> ToolResult:
        hidden = ((arguments or {}).get("hyperparameters") or {}).get("hidden", 16)
        if name == "select_diffusion" and hidden > 64:
            return ToolResult(ok=False, text=f"hidden={hidden} is out of range [4, 64]")
        return ToolResult(ok=True, data={"message": f"{name} done"})

    async def read_resource(self, uri: str) -> str:
        return SOURCE

    def has_tool(self, name: str) -> bool:
        return True


async def no_sleep(_: float) -> None:
    return None


def play(endpoint: FakeEndpoint, provider: str, model: str, budget: int) -> dict[str, Any]:
    """Run ``budget`` steps of the loop against the endpoint; what it decided and counted."""
    tools = agent_tools(server_tools())
    retry = RetryPolicy(sleep=no_sleep)
    if provider == "anthropic":
        from leads_agent.anthropic_provider import AnthropicBackend

        backend: Any = AnthropicBackend(
            tools, model=model, api_key="test-key", base_url=endpoint.base_url, retry=retry
        )
    else:
        from leads_agent.openai_provider import OpenAIBackend

        backend = OpenAIBackend(
            tools, model=model, api_key="test-key", base_url=endpoint.base_url + "/v1", retry=retry
        )
    policy = LLMPolicy(backend)
    env = ReplayEnv()
    decisions: list[list[list[Any]]] = []

    async def run() -> None:
        candidates: list[Candidate] = []
        for step in range(1, budget + 1):
            state = SearchState("s-1", REACTIONS, TEMPLATES, budget, step, list(candidates))
            decision = await policy.next_action(state, env)
            calls = [
                [c.name, c.arguments.get("reaction") or c.arguments.get("template"), c.ok]
                for c in decision.calls
            ]
            decisions.append(calls)
            reaction = next(
                (c[1] for c in reversed(calls) if c[0] == "select_reaction" and c[2]), "?"
            )
            template = next(
                (c[1] for c in reversed(calls) if c[0] == "select_diffusion" and c[2]), "?"
            )
            candidate = Candidate(
                f"c-{step}", "select", reaction, template, "ok", val_loss=1.0 / step
            )
            candidates.append(candidate)
            policy.record_outcome(state, decision, f"candidate c-{step}: {candidate.summary()}")
        await backend.aclose()

    asyncio.run(run())
    return {
        "decisions": decisions,
        "counts": policy.counts.as_dict(),
        "requests": policy.usage.requests,
        "retries": policy.usage.retries,
    }


def record(name: str) -> None:
    """Run a scenario with the scripted model and write its transcript."""
    provider, model, budget, settings, http = SCENARIOS[name]
    with FakeEndpoint(ScriptedModel(**settings), http=http) as endpoint:
        outcome = play(endpoint, provider, model, budget)
        assert not endpoint.refused(), endpoint.refused()[0].response
        answers = [[e.status, e.headers, e.response] for e in endpoint.completion_exchanges()]
    transcript = {"provider": provider, "model": model, "budget": budget, "answers": answers}
    TRANSCRIPTS.mkdir(exist_ok=True)
    (TRANSCRIPTS / f"{name}.json").write_text(json.dumps({**transcript, **outcome}, indent=1))


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_recorded_transcript_replays_with_valid_requests(name: str):
    transcript = json.loads((TRANSCRIPTS / f"{name}.json").read_text())
    answers = [tuple(answer) for answer in transcript["answers"]]
    with FakeEndpoint(replay=answers) as endpoint:
        outcome = play(endpoint, transcript["provider"], transcript["model"], transcript["budget"])
        refused = endpoint.refused()
        left = endpoint.replay
    assert refused == []  # every request valid for the public API
    assert left == []  # exactly as many requests as recorded
    assert outcome["decisions"] == transcript["decisions"]
    assert outcome["counts"] == transcript["counts"]
    assert (outcome["requests"], outcome["retries"]) == (
        transcript["requests"],
        transcript["retries"],
    )
    # every step ends with a candidate set up (its last select_* calls accepted)
    for calls in outcome["decisions"]:
        assert [c for c in calls if c[0] == "select_reaction" and c[2]]
        assert [c for c in calls if c[0] == "select_diffusion" and c[2]]


def test_the_transcripts_cover_what_real_models_send():
    counts = {
        name: json.loads((TRANSCRIPTS / f"{name}.json").read_text())["counts"] for name in SCENARIOS
    }
    for name in ("anthropic_faults", "openai_faults"):
        faults = counts[name]
        assert faults["empty_turns"] == 2 and faults["text_only_turns"] == 1
        assert faults["malformed_calls"] == 2 and faults["unknown_tools"] == 1
        assert faults["refused_actions"] == 1
    statuses = {
        status
        for name in SCENARIOS
        for status, *_ in json.loads((TRANSCRIPTS / f"{name}.json").read_text())["answers"]
    }
    assert {200, 429, 500, 529} <= statuses


if __name__ == "__main__":
    for scenario in SCENARIOS:
        record(scenario)
        print(f"recorded {scenario}")
