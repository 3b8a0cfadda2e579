"""The LLM providers end to end against a fake HTTP transport that plays back a multi-step
tool-use conversation: a tool call, a tool error the model recovers from, a 429 answered by a
retry, a malformed reply reported back to the model; plus missing-key and unreachable-endpoint
errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import pytest
from leads_agent.anthropic_provider import AnthropicBackend
from leads_agent.cli import main
from leads_agent.connection import ToolResult, ToolSpec
from leads_agent.conversation import Conversation
from leads_agent.errors import ConfigurationError, ProviderError
from leads_agent.llm import LLMPolicy, RetryPolicy, agent_tools, price_usage
from leads_agent.openai_provider import OpenAIBackend
from leads_agent.state import SearchState

SERVER_TOOLS = {
    "select_reaction": ToolSpec(
        "select_reaction",
        "Set the reaction.",
        {
            "type": "object",
            "required": ["session_id", "reaction"],
            "properties": {"session_id": {"type": "string"}, "reaction": {"type": "string"}},
        },
    ),
    "select_diffusion": ToolSpec(
        "select_diffusion",
        "Set the diffusion.",
        {
            "type": "object",
            "required": ["session_id", "template"],
            "properties": {
                "session_id": {"type": "string"},
                "template": {"type": "string"},
                "hyperparameters": {"type": "object"},
            },
        },
    ),
    "query_archive": ToolSpec(
        "query_archive",
        "SQL.",
        {"type": "object", "required": ["sql"], "properties": {"sql": {"type": "string"}}},
        read_only=True,
    ),
    "train_candidate": ToolSpec("train_candidate", "Train.", {"type": "object"}),
}


class FakeEnv:
    """A server stand-in: select_diffusion refuses an out-of-range width."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call(self, name: str, arguments: dict | None = None) -> ToolResult:
        arguments = arguments or {}
        self.calls.append((name, arguments))
        if name == "select_diffusion":
            hidden = (arguments.get("hyperparameters") or {}).get("hidden", 16)
            if hidden > 64:
                return ToolResult(ok=False, text=f"hidden={hidden} is out of range [4, 64]")
        return ToolResult(ok=True, data={"message": f"{name} done"})

    async def read_resource(self, uri: str) -> str:
        return "class Diffusion: ..."

    def has_tool(self, name: str) -> bool:
        return name in SERVER_TOOLS


def search_state() -> SearchState:
    return SearchState(
        session_id="s-1",
        reactions=["reaction_A", "reaction_B"],
        templates=["laplacian_global", "gcn"],
        budget=3,
        step=1,
    )


async def no_sleep(_: float) -> None:
    return None


def hello() -> Conversation:
    conversation = Conversation()
    conversation.add_user("hello", step=1, step_start=True)
    return conversation


def tools() -> list[ToolSpec]:
    return agent_tools(SERVER_TOOLS)


def test_agent_tools_hide_session_id_and_training():
    names = [t.name for t in tools()]
    assert "train_candidate" not in names and "read_template_source" in names
    select = next(t for t in tools() if t.name == "select_diffusion")
    assert "session_id" not in select.input_schema["properties"]
    assert select.input_schema["required"] == ["template"]


# ---------------------------------------------------------------------------- Anthropic


def anthropic_message(content: list[dict], usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": "msg",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": content,
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": usage,
    }


def test_anthropic_tool_use_dialogue():
    requests: list[dict[str, Any]] = []
    usage = {
        "input_tokens": 100,
        "output_tokens": 20,
        "cache_creation_input_tokens": 1000,
        "cache_read_input_tokens": 0,
    }
    cached = {**usage, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1000}
    replies = [
        httpx2.Response(
            429,
            headers={"retry-after": "0"},
            json={"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
        ),
        httpx2.Response(
            200,
            json=anthropic_message(
                [
                    {"type": "text", "text": "Screen reaction_A with a wide gcn."},
                    {
                        "type": "tool_use",
                        "id": "t1",
                        "name": "select_reaction",
                        "input": {"reaction": "reaction_A"},
                    },
                    {
                        "type": "tool_use",
                        "id": "t2",
                        "name": "select_diffusion",
                        "input": {"template": "gcn", "hyperparameters": {"hidden": 1000}},
                    },
                ],
                usage,
            ),
        ),
        httpx2.Response(
            200,
            json=anthropic_message(
                [
                    {"type": "text", "text": "hidden is capped at 64; use 32."},
                    {
                        "type": "tool_use",
                        "id": "t3",
                        "name": "select_diffusion",
                        "input": {"template": "gcn", "hyperparameters": {"hidden": 32}},
                    },
                    {"type": "tool_use", "id": "t4", "name": "train_now", "input": {}},
                    {"type": "tool_use", "id": "t5", "name": "query_archive", "input": "not json"},
                ],
                cached,
            ),
        ),
        httpx2.Response(
            200,
            json=anthropic_message([{"type": "text", "text": "The candidate is set up."}], cached),
        ),
    ]

    def handler(request: httpx2.Request) -> httpx2.Response:
        requests.append(json.loads(request.content))
        return replies[len(requests) - 1]

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    backend = AnthropicBackend(
        tools(),
        model="claude-haiku-4-5",
        api_key="k",
        http_client=client,
        retry=RetryPolicy(sleep=no_sleep),
    )
    policy = LLMPolicy(backend)
    env = FakeEnv()
    decision = asyncio.run(policy.next_action(search_state(), env))

    assert len(requests) == 4
    first = requests[0]
    # the system prompt's breakpoint caches the tools before it; the latest turn carries one
    assert first["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert all("cache_control" not in t for t in first["tools"])
    assert first["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    for request in requests:
        marks = [
            block
            for message in request["messages"]
            for block in message["content"]
            if "cache_control" in block
        ]
        assert 1 <= len(marks) <= 3  # with the system prompt's: at most 4, the API's limit
    # the refusal went back as an error tool result, and the model corrected itself
    results = requests[2]["messages"][-1]["content"]
    refused = next(r for r in results if r["tool_use_id"] == "t2")
    assert refused["is_error"] is True and "out of range" in refused["content"]
    results = requests[3]["messages"][-1]["content"]
    unknown = next(r for r in results if r["tool_use_id"] == "t4")
    malformed = next(r for r in results if r["tool_use_id"] == "t5")
    assert unknown["is_error"] and "unknown tool" in unknown["content"]
    assert malformed["is_error"] and "JSON object" in malformed["content"]
    # session id filled in; the actions the step made
    assert env.calls[1] == (
        "select_diffusion",
        {"template": "gcn", "session_id": "s-1", "hyperparameters": {"hidden": 1000}},
    )
    assert [(c.name, c.ok) for c in decision.calls] == [
        ("select_reaction", True),
        ("select_diffusion", False),
        ("select_diffusion", True),
    ]
    assert "capped at 64" in decision.thought and "set up" in decision.thought
    # tokens summed over the three answered requests, the retry counted, cost priced
    assert policy.usage.requests == 3 and policy.usage.retries == 1
    assert policy.usage.output_tokens == 60
    assert policy.usage.cache_creation_tokens == 1000
    assert policy.usage.cache_read_tokens == 2000
    assert policy.usage.input_tokens == 3 * 100 + 3000
    assert policy.usage.cost_usd == pytest.approx(
        (300 * 1 + 60 * 5 + 1000 * 1.25 + 2000 * 0.1) / 1e6
    )


def test_anthropic_missing_key_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        AnthropicBackend(tools())
    assert main(["discover", "--llm", "anthropic", "--dataset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "ANTHROPIC_API_KEY" in err and "Traceback" not in err


def test_anthropic_rejected_key_is_reported():
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            401,
            json={
                "type": "error",
                "error": {"type": "authentication_error", "message": "invalid x-api-key"},
            },
        )

    backend = AnthropicBackend(
        tools(),
        api_key="bad",
        retry=RetryPolicy(sleep=no_sleep),
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    )
    with pytest.raises(ConfigurationError, match="rejected the API key"):
        asyncio.run(backend.complete(hello()))


# ---------------------------------------------------------------------------- OpenAI


def chat(message: dict[str, Any], prompt: int = 200, completion: int = 30) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": 50},
        },
    }


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_openai_compatible_tool_dialogue(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    requests: list[httpx2.Request] = []
    replies = [
        httpx2.Response(503, headers={"retry-after": "0"}, text="overloaded"),
        httpx2.Response(
            200,
            json=chat(
                {
                    "content": "Try gcn, wide.",
                    "tool_calls": [
                        tool_call("a", "select_reaction", '{"reaction": "reaction_B"}'),
                        tool_call(
                            "b",
                            "select_diffusion",
                            '{"template": "gcn", "hyperparameters": {"hidden": 500}}',
                        ),
                    ],
                }
            ),
        ),
        httpx2.Response(
            200,
            json=chat(
                {
                    "content": None,
                    "tool_calls": [
                        tool_call(
                            "c", "select_diffusion", '{"template": "gcn", "hyperparameters": {'
                        ),
                        tool_call("d", "drop_tables", "{}"),
                    ],
                }
            ),
        ),
        httpx2.Response(
            200,
            json=chat(
                {
                    "content": "Fixed JSON.",
                    "tool_calls": [
                        tool_call(
                            "e",
                            "select_diffusion",
                            '{"template": "gcn", "hyperparameters": {"hidden": 48}}',
                        ),
                    ],
                }
            ),
        ),
        httpx2.Response(200, json=chat({"content": "Ready to train gcn(48)."})),
    ]

    def handler(request: httpx2.Request) -> httpx2.Response:
        requests.append(request)
        return replies[len(requests) - 1]

    backend = OpenAIBackend(
        tools(),
        model="local-model",
        base_url="http://llm.local/v1",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
        retry=RetryPolicy(sleep=no_sleep),
    )
    policy = LLMPolicy(backend)
    env = FakeEnv()
    decision = asyncio.run(policy.next_action(search_state(), env))

    assert len(requests) == 5
    assert str(requests[0].url) == "http://llm.local/v1/chat/completions"
    assert "authorization" not in requests[0].headers  # no key needed for a local server
    last = json.loads(requests[-1].content)
    assert last["tools"][0]["type"] == "function"
    tool_messages = {
        m["tool_call_id"]: m["content"] for m in last["messages"] if m["role"] == "tool"
    }
    assert "out of range" in tool_messages["b"] and tool_messages["b"].startswith("ERROR")
    assert "not valid JSON" in tool_messages["c"]
    assert "unknown tool 'drop_tables'" in tool_messages["d"]
    assert [(c.name, c.ok) for c in decision.calls][-1] == ("select_diffusion", True)
    assert env.calls[-1][1]["hyperparameters"] == {"hidden": 48}
    assert "Ready to train" in decision.thought
    assert policy.usage.requests == 4 and policy.usage.retries == 1
    assert policy.usage.input_tokens == 800 and policy.usage.output_tokens == 120
    assert policy.usage.cache_read_tokens == 200
    assert policy.usage.cost_usd is None  # unknown model: tokens only


def test_openai_unreachable_endpoint_is_a_clear_error():
    backend = OpenAIBackend(
        tools(),
        model="m",
        base_url="http://127.0.0.1:9/v1",
        api_key="",
        retry=RetryPolicy(attempts=2, sleep=no_sleep),
    )
    with pytest.raises(
        ProviderError, match="cannot reach the LLM endpoint at http://127.0.0.1:9/v1"
    ):
        asyncio.run(backend.complete(hello()))
    assert backend.usage.retries == 1


def test_openai_needs_a_model_and_a_key_for_the_public_api(monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert main(["discover", "--llm", "openai"]) == 2
    assert "OPENAI_MODEL" in capsys.readouterr().err
    assert main(["discover", "--llm", "openai", "--model", "gpt-4o"]) == 2
    assert "OPENAI_API_KEY" in capsys.readouterr().err


#: The models the README lists, with their list prices (USD per million input/output tokens).
README_MODELS = {
    "claude-opus-4-6": (5.0, 25.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4-0": (15.0, 75.0),
    "claude-sonnet-4-6": (3.0, 15.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4-0": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "claude-3-haiku": (0.25, 1.25),
    "gpt-5": (1.25, 10.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.4),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4.1-nano": (0.1, 0.4),
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
    "o3": (2.0, 8.0),
    "o4-mini": (1.1, 4.4),
}


def cost_of(model: str, **tokens: int) -> float | None:
    from leads_agent.policy import Usage

    usage = Usage(model=model, **tokens)
    price_usage(usage)
    return usage.cost_usd


@pytest.mark.parametrize("model", sorted(README_MODELS))
def test_every_listed_model_is_priced(model: str):
    price_in, price_out = README_MODELS[model]
    cost = cost_of(model, input_tokens=1_000_000, output_tokens=1_000_000)
    assert cost == pytest.approx(price_in + price_out)


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4-0"),
        ("claude-opus-4-20250514", "claude-opus-4-0"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-3-7-sonnet-20250219", "claude-3-7-sonnet"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
    ],
)
def test_dated_names_are_priced_exactly_as_their_family(model: str, family: str):
    from leads_agent.prices import resolve_model

    assert resolve_model(model) == family
    tokens = {"input_tokens": 2_000_000, "output_tokens": 300_000, "cache_read_tokens": 500_000}
    assert cost_of(model, **tokens) == pytest.approx(cost_of(family, **tokens))


def test_a_mini_snapshot_is_never_priced_as_its_larger_sibling():
    """The bug that priced ``gpt-4o-mini-2024-07-18`` as ``gpt-4o`` (16.7x too high)."""
    mini = cost_of("gpt-4o-mini-2024-07-18", input_tokens=1_000_000, output_tokens=1_000_000)
    assert mini == pytest.approx(0.15 + 0.6)
    # a snapshot priced differently from its family keeps its own price
    assert cost_of("gpt-4o-2024-05-13", input_tokens=1_000_000) == pytest.approx(5.0)


@pytest.mark.parametrize(
    "model",
    ["gpt-4o-turbo", "claude-sonnet-4-7", "gpt-4", "claude-sonnet", "local-model", "gpt-4o-mini-x"],
)
def test_unknown_models_have_no_price(model: str):
    from leads_agent.prices import resolve_model

    assert resolve_model(model) is None
    assert cost_of(model, input_tokens=1000, output_tokens=1000) is None


def test_cache_tokens_are_priced_at_their_rates():
    # Anthropic: writes 1.25x, reads 0.1x the input price; fresh input is the rest
    cost = cost_of(
        "claude-sonnet-4-6",
        input_tokens=1_000_000,
        cache_creation_tokens=200_000,
        cache_read_tokens=700_000,
        output_tokens=10_000,
    )
    assert cost == pytest.approx((100_000 * 3 + 200_000 * 3.75 + 700_000 * 0.3 + 10_000 * 15) / 1e6)


def test_an_unknown_price_is_reported_as_unknown(tmp_path):
    from leads_agent.agent import RunResult
    from leads_agent.policy import Usage
    from leads_agent.report import _markdown

    usage = Usage(model="my-local-model", input_tokens=1000, output_tokens=10, requests=1)
    price_usage(usage)
    result = RunResult("s-1", {}, True, [], [], None, None, None, {}, usage, 1.0, True)
    text = _markdown(result, {}, None, None)
    assert "- cost: unknown (no list price for my-local-model)" in text
    assert result.summary()["usage"]["cost_usd"] is None
