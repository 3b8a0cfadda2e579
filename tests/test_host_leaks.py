"""The host features leak nothing of an anonymised session's truth: listed resources, the data
set listing, completions, prompts, compact texts, background training and figures of a session on
the Aliev-Panfilov set under its telling name ``ap`` (the leak battery's check, applied to the
channels this layer adds)."""

from __future__ import annotations

from pathlib import Path

import mcp_types as types
import pytest
from leads_server.app import LeadsServer, build_server
from leads_server.archive.truth import TruthStore
from mcp import Client
from server_calls import call, save_tiny
from test_anonymity_leaks import leaks

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_host_channels_leak_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("LEADS_HOME", str(home))
    dataset_path = save_tiny(home, name="ap")
    archive = home / "archive.duckdb"
    server: LeadsServer = build_server(archive, compile_training=False)
    seen: list[tuple[str, str]] = []
    try:
        async with Client(server) as client:
            started = await call(client, "start_session", dataset="ap", budget=2, epochs=1)
            sid = started["session_id"]
            alias = TruthStore(archive).read(sid).aliases["aliev_panfilov"]
            await call(client, "select_reaction", session_id=sid, reaction=alias)
            await call(client, "select_diffusion", session_id=sid, template="laplacian_global")

            async def tool(name: str, **arguments: object) -> types.CallToolResult:
                result = await client.call_tool(name, arguments)
                assert not result.is_error, result.content[0].text
                # base64 pixels left out: random letters could spell "ap"
                pixels_out = {"content": {"__all__": {"data"}}}
                seen.append((name, result.model_dump_json(exclude=pixels_out)))
                return result

            started = await tool("train_candidate", session_id=sid, wait=False)
            cid = started.structured_content["candidate_id"]
            done = False
            while not done:
                waited = await tool("wait_candidate", candidate_id=cid, timeout_s=5)
                done = waited.structured_content["done"]
            await tool("get_candidate", candidate_id=cid)
            await tool("evaluate_candidate", session_id=sid, candidate_id=cid)
            await tool("list_datasets")
            seen.append(("resources/list", (await client.list_resources()).model_dump_json()))
            for ref, argument, context in (
                (types.PromptReference(name="discover"), "dataset", None),
                (types.PromptReference(name="discover"), "reaction", {"session_id": sid}),
                (types.PromptReference(name="explain_candidate"), "candidate_id", None),
                (types.ResourceTemplateReference(uri="session://{session_id}/summary"),
                 "session_id", None),
            ):  # fmt: skip
                values = await client.complete(ref, {"name": argument, "value": ""}, context)
                seen.append((f"complete {argument}", values.model_dump_json()))
            for name, arguments in (
                ("explain_candidate", {"candidate_id": cid}),
                ("compare_candidates", {"first": cid, "second": cid}),
            ):
                prompt = await client.get_prompt(name, arguments)
                seen.append((name, prompt.model_dump_json()))
    finally:
        server.close()
    found = {what: leaks(text, dataset_path) for what, text in seen}
    assert not {what: names for what, names in found.items() if names}
    assert any(alias in text for _, text in seen)  # the session's own names do show
