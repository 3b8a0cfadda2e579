"""What an MCP host sees besides the tools' structured results: compact text next to them,
figures as images, one-line argument errors, the spec's code for an unknown resource, listed
resources, logging, resource subscriptions, progress per batch, and training without holding
the request open (wait=false, wait_candidate, cancel_candidate)."""

from __future__ import annotations

import base64
import json
import warnings
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from leads_server.app import RESOURCE_NOT_FOUND, LeadsServer
from mcp import Client
from mcp.shared.exceptions import MCPError
from server_calls import call, fails, start, train

pytest_plugins = ("server_fixtures",)
pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n"


async def _draft(client: Client, session_id: str, template: str = "laplacian_global") -> None:
    await call(client, "select_reaction", session_id=session_id, reaction="aliev_panfilov")
    await call(client, "select_diffusion", session_id=session_id, template=template)


def _images(result: types.CallToolResult) -> list[bytes]:
    return [
        base64.b64decode(block.data)
        for block in result.content
        if isinstance(block, types.ImageContent)
    ]


async def test_text_is_a_compact_summary_next_to_the_whole_structured_result(
    client: Client,
) -> None:
    catalogs = await client.call_tool("list_catalogs", {})
    text = catalogs.content[0].text
    whole = json.dumps(catalogs.structured_content)
    assert len(text) * 3 < len(whole)  # not the same 20 KB twice
    for template in catalogs.structured_content["diffusion_templates"]:
        assert template["name"] in text
    session_id = await start(client)
    await _draft(client, session_id)
    trained = await client.call_tool("train_candidate", {"session_id": session_id})
    summary = trained.content[0].text
    candidate_id = trained.structured_content["candidate_id"]
    assert candidate_id in summary and "Diagnosis" in summary and "Budget left 3" in summary
    rows = await client.call_tool(
        "query_archive", {"sql": "SELECT candidate_id, status FROM candidates"}
    )
    assert rows.content[0].text.splitlines()[:2] == ["candidate_id\tstatus", f"{candidate_id}\tok"]


async def test_argument_errors_are_one_line_without_links(client: Client) -> None:
    text = await fails(client, "train_candidate", session_id=5)
    assert "\n" not in text and "pydantic" not in text and "http" not in text
    assert "session_id" in text and "valid string" in text
    text = await fails(client, "start_session", budget=0, epochs="many")
    assert "\n" not in text and "budget" in text and "epochs" in text


async def test_an_unknown_resource_answers_resource_not_found(server: LeadsServer) -> None:
    async with Client(server, mode="legacy") as client:
        for uri in (
            "nothing://here",
            "session://s-000000000000/summary",
            "catalog://diffusion/no_such_template",
            "candidate://c-000000000000/activation_map.png",
        ):
            with pytest.raises(MCPError) as caught:
                await client.read_resource(uri)
            assert caught.value.code == RESOURCE_NOT_FOUND, uri


async def test_resources_list_the_template_sources_and_the_sessions(client: Client) -> None:
    session_id = await start(client)
    hidden = await start(client, anonymise=True)
    listed = {str(r.uri): r for r in (await client.list_resources()).resources}
    sources = [uri for uri in listed if uri.startswith("catalog://diffusion/")]
    assert len(sources) == 11
    source = await client.read_resource(sources[0])
    assert "class Diffusion" in source.contents[0].text
    assert f"session://{session_id}/summary" in listed
    anonymised = listed[f"session://{hidden}/summary"]
    assert "tiny" not in anonymised.model_dump_json()  # the data set's handle, not its name


async def test_logging_level_filters_the_log_messages_of_a_training(server: LeadsServer) -> None:
    messages: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        messages.append(params)

    async with Client(server, mode="legacy", logging_callback=on_log) as client:
        session_id = await start(client)
        await _draft(client, session_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await client.set_logging_level("info")
        await train(client, session_id)
        infos = [m for m in messages if m.level == "info"]
        assert len(infos) == 2 and all("epoch" in str(m.data) for m in infos)  # one per epoch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await client.set_logging_level("error")
        await _draft(client, session_id, "laplacian_nodewise")
        await train(client, session_id)
        assert len(messages) == 2


async def test_a_subscriber_learns_that_a_session_changed(server: LeadsServer) -> None:
    updated: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.append(str(message.params.uri))

    async with Client(server, mode="legacy", message_handler=on_message) as client:
        session_id = await start(client)
        uri = f"session://{session_id}/summary"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await client.subscribe_resource(uri)
        await call(client, "select_reaction", session_id=session_id, reaction="aliev_panfilov")
        await client.call_tool("query_archive", {"sql": "SELECT 1"})  # read-only: no notice
        assert updated == [uri]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await client.unsubscribe_resource(uri)
        await call(client, "select_diffusion", session_id=session_id, template="laplacian_global")
        assert updated == [uri]


async def test_progress_comes_after_every_batch_with_a_readable_message(client: Client) -> None:
    session_id = await start(client)
    await _draft(client, session_id)
    _, events = await train(client, session_id, epochs=2)
    batches = [e for e in events if "batch" in (e[2] or "")]
    assert len(batches) >= 2 and len(events) > 2  # more than one event per epoch
    values = [value for value, _, _ in events]
    assert values == sorted(values) and values[-1] == 2.0
    assert "train loss" in batches[0][2] and "epoch 1/2" in batches[0][2]


async def test_train_without_waiting_then_wait_for_the_result(client: Client) -> None:
    session_id = await start(client)
    await _draft(client, session_id)
    started = await call(client, "train_candidate", session_id=session_id, wait=False)
    assert started["status"] == "training" and started["budget_left"] == 3
    candidate_id = started["candidate_id"]
    assert "wait_candidate" in started["diagnosis"]
    for _ in range(60):
        waited = await call(client, "wait_candidate", candidate_id=candidate_id, timeout_s=5)
        if waited["done"]:
            break
    assert waited["status"] == "ok" and waited["result"]["best_val_loss"] is not None
    record = await call(client, "get_candidate", candidate_id=candidate_id)
    assert record["status"] == "ok" and len(record["epochs"]) == 2


async def test_a_cancelled_background_training_spends_no_budget(client: Client) -> None:
    session_id = await start(client, budget=1)
    await _draft(client, session_id)
    started = await call(client, "train_candidate", session_id=session_id, wait=False, epochs=50)
    assert started["budget_left"] == 0
    cancelled = await call(client, "cancel_candidate", candidate_id=started["candidate_id"])
    assert cancelled["status"] == "cancelled" and cancelled["done"]
    record = await call(client, "get_candidate", candidate_id=started["candidate_id"])
    assert record["status"] == "cancelled"
    summary = json.loads(
        (await client.read_resource(f"session://{session_id}/summary")).contents[0].text
    )
    assert summary["budget_left"] == 1 and summary["status"] == "running"  # not finished
    text = await fails(client, "cancel_candidate", candidate_id="c-000000000000")
    assert "not training" in text


async def test_a_restored_session_does_not_count_cancelled_candidates(home: Path) -> None:
    from leads_server.app import build_server

    server = build_server(home / "archive.duckdb", compile_training=False)
    async with Client(server) as client:
        session_id = await start(client)
        await _draft(client, session_id)
        started = await call(client, "train_candidate", session_id=session_id, wait=False)
        await call(client, "cancel_candidate", candidate_id=started["candidate_id"])
    server.close()
    again = build_server(home / "archive.duckdb", compile_training=False)
    try:
        async with Client(again) as client:
            summary = await client.read_resource(f"session://{session_id}/summary")
            assert json.loads(summary.contents[0].text)["budget_left"] == 4
    finally:
        again.close()


async def test_candidates_come_with_their_figures_as_images(client: Client, home: Path) -> None:
    session_id = await start(client)
    await _draft(client, session_id)
    trained, _ = await train(client, session_id)
    candidate_id = trained["candidate_id"]
    before = await client.call_tool("get_candidate", {"candidate_id": candidate_id})
    curves = _images(before)
    assert len(curves) == 1 and curves[0].startswith(PNG)  # drawn from the epochs
    # a final candidate's curves are drawn once and kept: asking again reads the file
    kept = home / "runs" / session_id / candidate_id / "training_curves.png"
    assert kept.read_bytes() == curves[0]
    again = _images(await client.call_tool("get_candidate", {"candidate_id": candidate_id}))
    assert again == curves
    evaluated = await client.call_tool(
        "evaluate_candidate", {"session_id": session_id, "candidate_id": candidate_id}
    )
    assert not evaluated.is_error and "MSE" in evaluated.content[0].text
    figures = _images(evaluated)
    assert len(figures) == 2 and all(f.startswith(PNG) for f in figures)
    after = _images(await client.call_tool("get_candidate", {"candidate_id": candidate_id}))
    assert after == figures  # activation map and curves, as evaluate_candidate wrote them


async def test_a_draft_survives_the_server_process(home: Path) -> None:
    """One server per call, as a host's CLI does it: select, select, then train elsewhere."""
    from leads_server.app import build_server

    def fresh() -> LeadsServer:
        return build_server(home / "archive.duckdb", compile_training=False)

    server = fresh()
    async with Client(server) as client:
        session_id = await start(client, anonymise=True)
        reactions = (await call(client, "list_catalogs", session_id=session_id))["reactions"]
        alias = reactions[0]["name"]
    server.close()
    for arguments in (
        {"tool": "select_reaction", "reaction": alias},
        {"tool": "select_diffusion", "template": "laplacian_global"},
    ):
        server = fresh()
        async with Client(server) as client:
            tool = arguments.pop("tool")
            await call(client, tool, session_id=session_id, **arguments)
        server.close()
    server = fresh()
    try:
        async with Client(server) as client:
            rows = await call(
                client, "query_archive", sql="SELECT draft FROM drafts", session_id=session_id
            )
            assert alias in rows["rows"][0][0] and "aliev" not in rows["rows"][0][0]
            trained, _ = await train(client, session_id)
            assert trained["status"] == "ok" and trained["reaction"] == alias
            assert trained["diffusion"] == "laplacian_global"
            left = await call(
                client, "query_archive", sql="SELECT count(*) FROM drafts", session_id=session_id
            )
            assert left["rows"] == [[0]]  # training took the draft
    finally:
        server.close()


async def test_a_second_server_on_a_busy_archive_tells_the_host_why(
    home: Path, server: LeadsServer
) -> None:
    """The ``server`` fixture holds the archive; a stdio server on it answers with the reason."""
    import sys

    from mcp import StdioServerParameters

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "leads_server.cli", "--no-compile"],
        env={"LEADS_HOME": str(home)},
    )
    async with Client(params) as client:
        tools = (await client.list_tools()).tools
        assert [tool.name for tool in tools] == ["archive_busy"]
        result = await client.call_tool("archive_busy", {})
        text = result.content[0].text
        assert result.is_error and "in use by process" in text
        assert "--archive" in text and "--transport http" in text
