"""The prompts a host offers its user: discover (the whole loop, Observe-Think-Act),
explain_candidate and compare_candidates (archived records as the session shows them)."""

from __future__ import annotations

import re

import pytest
from leads_server.app import LeadsServer
from mcp import Client
from mcp.shared.exceptions import MCPError
from server_calls import call, start, train

pytest_plugins = ("server_fixtures",)
pytestmark = pytest.mark.anyio


def _text(result) -> str:
    return "\n".join(message.content.text for message in result.messages)


async def test_the_prompts_are_listed_with_their_arguments(client: Client) -> None:
    prompts = {p.name: p for p in (await client.list_prompts()).prompts}
    assert set(prompts) == {"discover", "explain_candidate", "compare_candidates"}
    assert {a.name for a in prompts["discover"].arguments} == {"dataset", "budget"}
    assert not any(a.required for a in prompts["discover"].arguments)
    assert [a.name for a in prompts["compare_candidates"].arguments] == ["first", "second"]
    assert all(p.title and p.description for p in prompts.values())


async def test_discover_walks_the_whole_loop(client: Client) -> None:
    text = _text(await client.get_prompt("discover", {"dataset": "rm", "budget": "6"}))
    assert "dataset='rm'" in text and "budget=6" in text
    for step in ("Observe", "Think", "Act", "record_step", "wait_candidate", "evaluate_candidate"):
        assert step in text
    tools = {tool.name for tool in (await client.list_tools()).tools}
    called = set(re.findall(r"\b([a-z_]+)\(", text))  # every call the prompt shows is a tool
    assert {"start_session", "list_catalogs", "train_candidate", "wait_candidate"} <= called
    assert called <= tools, called - tools
    with pytest.raises(MCPError):
        await client.get_prompt("discover", {"budget": "many"})
    with pytest.raises(MCPError):
        await client.get_prompt("discover", {"budget": "0"})


async def test_explain_and_compare_show_the_archived_records(
    client: Client, server: LeadsServer
) -> None:
    session_id = await start(client, anonymise=True)
    alias = (await call(client, "list_catalogs", session_id=session_id))["reactions"][0]["name"]
    await call(client, "select_reaction", session_id=session_id, reaction=alias)
    await call(client, "select_diffusion", session_id=session_id, template="laplacian_global")
    first, _ = await train(client, session_id, epochs=1)
    await call(client, "select_diffusion", session_id=session_id, template="laplacian_nodewise")
    second, _ = await train(client, session_id, epochs=1)
    explained = _text(
        await client.get_prompt("explain_candidate", {"candidate_id": first["candidate_id"]})
    )
    assert first["candidate_id"] in explained and alias in explained
    assert "laplacian_global" in explained and "aliev" not in explained.lower()
    compared = _text(
        await client.get_prompt(
            "compare_candidates",
            {"first": first["candidate_id"], "second": second["candidate_id"]},
        )
    )
    assert "laplacian_global" in compared and "laplacian_nodewise" in compared
    unknown = _text(await client.get_prompt("explain_candidate", {"candidate_id": "c-0"}))
    assert "unknown candidate" in unknown or "c-0" in unknown
