"""A whole discovery driven the way an MCP host drives it: the ``discover`` prompt's text and the
tool list only, a fresh client (new MCP session) for every call to a server over streamable HTTP
with a bearer token, a 60 s request timeout as the TypeScript SDK's, ending with an evaluated
twin. The host's "model" here is a script that does what the prompt says, in its order."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from http_server import http_server
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

pytest_plugins = ("server_fixtures",)
pytestmark = pytest.mark.anyio

HOST_TIMEOUT_S = 60.0  # the TypeScript SDK's default request timeout
TOKEN = "host-token"


class Host:
    """One fresh MCP client per request, as a one-call-per-process host does."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.longest = 0.0
        self.called: list[str] = []

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Client]:
        headers = {"authorization": f"Bearer {TOKEN}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=90) as http,
            Client(streamable_http_client(self.url, http_client=http)) as client,
        ):
            yield client

    async def tool(self, name: str, **arguments: Any) -> types.CallToolResult:
        started = time.monotonic()
        async with self.session() as client:
            with anyio.fail_after(HOST_TIMEOUT_S):
                result = await client.call_tool(name, arguments)
        self.longest = max(self.longest, time.monotonic() - started)
        self.called.append(name)
        assert not result.is_error, f"{name}: {result.content[0].text}"
        return result

    async def data(self, name: str, **arguments: Any) -> dict[str, Any]:
        return (await self.tool(name, **arguments)).structured_content

    async def prompt_and_tools(self, dataset: str, budget: int) -> tuple[str, set[str]]:
        async with self.session() as client:
            prompt = await client.get_prompt(
                "discover", {"dataset": dataset, "budget": str(budget)}
            )
            tools = {tool.name for tool in (await client.list_tools()).tools}
        return "\n".join(m.content.text for m in prompt.messages), tools


@pytest.fixture
def http_url(home: Path) -> Any:
    with http_server(home, TOKEN) as url:
        yield url


async def test_a_host_runs_a_whole_discovery_from_the_prompt(http_url: str) -> None:
    host = Host(http_url)
    text, tools = await host.prompt_and_tools("tiny", 3)
    # the set-up call exactly as the prompt writes it
    setup = re.search(r"start_session\(dataset='(\w+)', budget=(\d+), anonymise=true\)", text)
    assert setup is not None and "list_catalogs" in text and "wait_candidate" in text
    session = await host.data(
        "start_session",
        dataset=setup.group(1),
        budget=int(setup.group(2)),
        anonymise=True,
        epochs=1,
    )
    sid = session["session_id"]
    catalogs = await host.data("list_catalogs", session_id=sid)
    reactions = [r["name"] for r in catalogs["reactions"] if r["name"] != "neural"]
    budget_left = session["budget_left"]
    step = 0
    while budget_left > 0:  # Observe, Think, Act, one candidate per step
        ranking = await host.data(
            "query_archive",
            session_id=sid,
            sql="SELECT candidate_id, reaction, diffusion, val_loss, parameter_count, status "
            "FROM candidates ORDER BY val_loss",
        )
        reaction = reactions[step % len(reactions)]
        thought = f"{ranking['row_count']} candidates so far; try {reaction} under a Laplacian"
        await host.data(
            "record_step", session_id=sid, thought=thought, action={"tool": "select_reaction"}
        )
        await host.data("select_reaction", session_id=sid, reaction=reaction)
        await host.data("select_diffusion", session_id=sid, template="laplacian_global")
        started = await host.data("train_candidate", session_id=sid, wait=False)
        assert started["status"] == "training"
        while not (
            waited := await host.data(
                "wait_candidate", candidate_id=started["candidate_id"], timeout_s=45
            )
        )["done"]:
            assert waited["status"] == "training"
        assert waited["result"]["status"] == "ok"
        budget_left = waited["result"]["budget_left"]
        step += 1
    best = await host.data(
        "query_archive",
        session_id=sid,
        sql="SELECT candidate_id FROM candidates WHERE status = 'ok' ORDER BY val_loss LIMIT 1",
    )
    tuned = await host.data(
        "finetune_candidate", session_id=sid, candidate_id=best["rows"][0][0], epochs=1
    )
    evaluated = await host.tool(
        "evaluate_candidate", session_id=sid, candidate_id=tuned["candidate_id"]
    )
    assert evaluated.structured_content["mse"] > 0
    images = [b for b in evaluated.content if isinstance(b, types.ImageContent)]
    assert len(images) == 2  # the twin's activation map and curves reach the model
    assert set(host.called) <= tools and step == 3
    assert host.longest < HOST_TIMEOUT_S
