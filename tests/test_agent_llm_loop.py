"""``leads-agent discover --llm anthropic|openai`` against standards-following fake endpoints on
127.0.0.1 (``fake_llm_endpoints``): a run completes despite the turns real models send (empty,
text only, malformed arguments, rate limits); the pre-flight check fails fast with one line; a
training refused as a duplicate goes back to the model; a lost step keeps the archive's step
numbers; on a 15-step run the input grows linearly and most of it is read from the cache."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from fake_llm_endpoints import FakeEndpoint, ScriptedModel
from leads_agent.cli import main
from server_calls import save_tiny

PROVIDERS = {
    "anthropic": ("claude-sonnet-4-6", "ANTHROPIC_API_KEY", ""),
    "openai": ("gpt-4o-mini", "OPENAI_API_KEY", "/v1"),
}

#: What real models send, by (step, reply index within the step).
FAULTS = {
    (1, 0): "text_only",  # a step answered with text only
    (1, 1): "malformed",  # then arguments that do not parse
    (1, 3): "empty",  # an empty turn after the tool results
    (2, 0): "empty",  # an empty first turn
    (2, 1): "not_object",  # arguments that are not an object
}


@pytest.fixture
def tiny_home(leads_home: Path) -> Path:
    save_tiny(leads_home)
    return leads_home


def discover(
    provider: str, endpoint: FakeEndpoint, monkeypatch: pytest.MonkeyPatch, *extra: str
) -> list[str]:
    model, key, suffix = PROVIDERS[provider]
    monkeypatch.setenv(key, "test-key")
    return [
        "discover",
        "--llm",
        provider,
        "--model",
        model,
        "--base-url",
        endpoint.base_url + suffix,
        "--dataset",
        "tiny",
        "--epochs",
        "1",
        "--finetune",
        "1",
        "--json",
        *extra,
    ]


def last_json(text: str) -> dict[str, Any]:
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_a_run_completes_despite_what_real_models_send(
    provider: str, tiny_home: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    with FakeEndpoint(ScriptedModel(FAULTS), http={2: 429, 6: 503}) as endpoint:
        code = main(discover(provider, endpoint, monkeypatch, "--budget", "2"))
        refused = endpoint.refused()
        requests = endpoint.completion_exchanges()
    summary = last_json(capsys.readouterr().out)
    assert code == 0
    assert refused == []  # no request the real API would refuse
    assert summary["completed"] is True
    assert math.isfinite(summary["test"]["mse"]) and summary["test"]["mse"] > 0
    searched = [c for c in summary["candidates"] if c["operation"] != "finetune"]
    assert [c["step"] for c in searched] == [1, 2]
    assert len({(c["reaction"], c["diffusion"]) for c in searched}) == 2
    repairs = summary["repairs"]
    assert repairs["empty_turns"] == 2 and repairs["text_only_turns"] == 1
    assert repairs["malformed_calls"] == 2 and repairs["corrections"] == 2
    assert repairs["steps_lost"] == 0
    usage = summary["usage"]
    assert usage["retries"] == 2 and usage["requests"] == len(requests) - 2
    assert usage["cost_usd"] is not None and usage["cost_usd"] > 0
    # the model read why its calls failed and what the step lacked
    texts = json.dumps([e.request for e in requests])
    assert "No candidate is set up for this step yet" in texts
    assert "Your last reply was empty" in texts
    assert "not valid JSON" in texts or "JSON object" in texts


def test_a_step_without_candidate_is_lost_and_keeps_the_step_numbers(leads_home: Path):
    """The model never sets up step 1's candidate (three text-only turns: the two corrections
    are spent): the step is lost without training, step 2 trains, the run completes, and the
    report's candidate table says step 2."""
    from scripted_search import scripted_search

    save_tiny(leads_home, duration_ms=20.0)
    faults = {(1, 0): "text_only", (1, 1): "text_only", (1, 2): "text_only"}
    report = leads_home / "report"
    result, _, endpoint = scripted_search(
        leads_home, budget=2, model=ScriptedModel(faults), report=report
    )
    assert endpoint.refused() == []
    summary = result.summary()
    assert summary["completed"] is True and summary["test"] is not None
    searched = [c for c in summary["candidates"] if c["operation"] != "finetune"]
    assert [c["step"] for c in searched] == [2]
    assert summary["repairs"]["steps_lost"] == 1
    assert summary["repairs"]["steps_without_candidate"] == 1
    assert summary["repairs"]["text_only_turns"] == 3
    table = (report / "report.md").read_text().split("## Candidates")[1]
    assert f"| 2 | `{searched[0]['candidate_id']}` |" in table
    assert "no candidate was set up" in result.steps[0].observation


# ---------------------------------------------------------------------------- pre-flight


def test_preflight_finds_an_unreachable_endpoint_before_any_session(
    tiny_home: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    started = time.perf_counter()
    code = main(
        ["discover", "--llm", "openai", "--model", "m", "--base-url", "http://127.0.0.1:9/v1"]
    )
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 1
    assert "cannot reach the LLM endpoint at http://127.0.0.1:9/v1" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tiny_home / "archive.duckdb").exists()  # no server, no session
    assert elapsed < 10.0  # no back-off


@pytest.mark.parametrize(
    ("provider", "argv", "message", "code"),
    [
        ("openai", ["--base-url", "{url}"], "did you mean --base-url {url}/v1", 2),
        ("openai", ["--model", "gpt-9"], "does not serve model 'gpt-9'", 2),
        ("anthropic", ["--model", "claude-nope"], "has no model 'claude-nope'", 2),
        ("anthropic", ["--base-url", "{url}/v1"], "drop the trailing /v1", 2),
    ],
)
def test_preflight_says_what_is_wrong_in_one_line(
    provider, argv, message, code, tiny_home: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    with FakeEndpoint() as endpoint:
        base = discover(provider, endpoint, monkeypatch)
        extra = [a.format(url=endpoint.base_url) for a in argv]
        for option, value in zip(extra[::2], extra[1::2], strict=True):
            base[base.index(option) + 1] = value
        assert main(base) == code
        posted = endpoint.completion_exchanges()
    err = capsys.readouterr().err
    assert message.format(url=endpoint.base_url) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tiny_home / "archive.duckdb").exists()
    assert all(e.request["max_tokens"] == 1 for e in posted)  # only one-token probes


def test_preflight_reports_a_rejected_key(tiny_home: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    with FakeEndpoint(api_key="the-right-key") as endpoint:
        assert main(discover("anthropic", endpoint, monkeypatch)) == 2
    err = capsys.readouterr().err
    assert "rejected the API key" in err and "ANTHROPIC_API_KEY" in err


# ---------------------------------------------------------------------------- duplicates


class DuplicateRefusingConnection:
    """A connection whose server refuses to train a structure the session already trained,
    with the error text the server gives (``duplicate of candidate <id>``)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.tools = conn.tools
        self.draft: dict[str, Any] = {}
        self.trained: dict[tuple[str, str], str] = {}
        self.refusals = 0

    def has_tool(self, name: str) -> bool:
        return self.conn.has_tool(name)

    async def read_resource(self, uri: str) -> Any:
        return await self.conn.read_resource(uri)

    async def has_resource_template(self, suffix: str) -> bool:
        return await self.conn.has_resource_template(suffix)

    async def call(self, name: str, arguments: dict | None = None, **kwargs: Any) -> Any:
        from leads_agent.connection import ToolResult

        arguments = arguments or {}
        if name == "select_reaction":
            self.draft["reaction"] = arguments.get("reaction")
        elif name == "select_diffusion":
            self.draft["template"] = arguments.get("template")
        elif name == "train_candidate":
            key = (self.draft.get("reaction"), self.draft.get("template"))
            if key in self.trained:
                self.refusals += 1
                return ToolResult(
                    ok=False,
                    text=f"refused: the draft is a duplicate of candidate {self.trained[key]}",
                )
            result = await self.conn.call(name, arguments, **kwargs)
            if result.ok:
                self.trained[key] = str(result.as_dict().get("candidate_id"))
            return result
        return await self.conn.call(name, arguments, **kwargs)


def test_a_duplicate_refused_by_the_server_goes_back_to_the_model(tiny_home: Path):
    from leads_agent.agent import RunConfig, run_search
    from leads_agent.anthropic_provider import AnthropicBackend
    from leads_agent.connection import connect
    from leads_agent.llm import LLMPolicy, RetryPolicy, agent_tools
    from leads_agent.ui import QuietView
    from leads_server.app import build_server

    async def search(endpoint: FakeEndpoint) -> tuple[Any, DuplicateRefusingConnection]:
        server = build_server(tiny_home / "archive.duckdb", compile_training=False)
        try:
            async with connect(server=server) as conn:
                wrapped = DuplicateRefusingConnection(conn)
                backend = AnthropicBackend(
                    agent_tools(conn.tools),
                    api_key="test-key",
                    base_url=endpoint.base_url,
                    retry=RetryPolicy(sleep=lambda _: asyncio.sleep(0)),
                )
                config = RunConfig(dataset="tiny", budget=2, epochs=1, finetune=0)
                result = await run_search(wrapped, LLMPolicy(backend), config, QuietView())
                await backend.aclose()
                return result, wrapped
        finally:
            server.close()

    with FakeEndpoint(ScriptedModel(duplicate_at=(2,))) as endpoint:
        result, wrapped = asyncio.run(search(endpoint))
        assert endpoint.refused() == []
        texts = json.dumps([e.request for e in endpoint.completion_exchanges()])
    assert wrapped.refusals == 1
    assert "Training was refused" in texts and "duplicate of candidate" in texts
    assert result.completed and result.repairs["duplicates_refused"] == 1
    assert result.repairs["steps_lost"] == 0
    searched = [c for c in result.candidates if c.operation != "finetune"]
    assert [c.step for c in searched] == [1, 2]
    assert len({(c.reaction, c.diffusion) for c in searched}) == 2


# ---------------------------------------------------------------------------- tokens


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_fifteen_steps_grow_linearly_and_read_mostly_from_the_cache(
    provider: str, leads_home: Path
):
    """The scripted model reads a template's source every step (a long tool result) and sets
    up one candidate: the input of a step grows by about the same amount each step (compact
    observations, old tool results compacted), and at least 60% of all input tokens are cache
    reads, as the fake endpoint computes them from the breakpoints the client sends."""
    from scripted_search import scripted_search

    save_tiny(leads_home, duration_ms=20.0)
    # real names: the same fits (and tool results) every run; aliases are drawn at random
    result, steps, endpoint = scripted_search(
        leads_home, provider, budget=15, model=ScriptedModel(observe=True), anonymise=False
    )
    assert endpoint.refused() == []
    assert result.completed and len(steps) == 15
    inputs = [row.input_tokens for row in steps]
    growth = [b - a for a, b in zip(inputs, inputs[1:], strict=False)]
    assert all(g > 0 for g in growth)
    assert max(growth[-5:]) <= 1.25 * max(growth[:5])  # linear, not quadratic
    usage = result.usage
    assert usage.requests == sum(row.requests for row in steps) == 45
    assert usage.cache_read_tokens >= 0.6 * usage.input_tokens
    if provider == "anthropic":  # a request never reads less than the previous one wrote
        assert all(row.cache_read_share > 0.5 for row in steps[1:])
        # compaction: the 15th step's source read is the only one still in full
        last = endpoint.completion_exchanges()[-1].request
        sources = json.dumps(last["messages"]).count("class Diffusion")
        assert sources == 1
