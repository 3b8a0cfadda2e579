"""Server session state (server/state.py): starting a session, unknown sessions and data
sets, and resuming a session from the archive after a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from leads_server.app import build_server
from leads_server.archive import Archive
from mcp import Client
from server_calls import call, fails, start, train

pytest_plugins = ("server_fixtures",)
pytestmark = pytest.mark.anyio


async def test_unknown_sessions_and_data_sets_are_refused_with_what_to_do(
    client: Client,
) -> None:
    assert "unknown session" in await fails(client, "select_reaction", session_id="s-nope",
                                            reaction="ap")  # fmt: skip
    assert "start_session" in await fails(client, "train_candidate", session_id="s-nope")
    missing = await fails(client, "start_session", dataset="no_such_set")
    assert "no_such_set" in missing and "leads-data generate" in missing


async def test_session_resumes_after_a_restart(home: Path) -> None:
    path = home / "archive.duckdb"
    server = build_server(path, compile_training=False)
    try:
        async with Client(server) as client:
            assert "batch_size" in await fails(
                client, "start_session", dataset="tiny", batch_size=0
            )
            session_id = await start(client, anonymise=True, budget=2, batch_size=1)
            assert server.service.store.get(session_id).batch_size == 1
            alias = server.service.store.get(session_id).aliases.show("aliev_panfilov")
            await call(client, "select_reaction", session_id=session_id, reaction=alias)
            await call(client, "select_diffusion", session_id=session_id, template="gcn")
            await train(client, session_id, epochs=1)
    finally:
        server.close()
    server = build_server(path, compile_training=False)
    try:
        async with Client(server) as client:
            await call(
                client, "select_diffusion", session_id=session_id, template="laplacian_global"
            )
            resumed, _ = await train(client, session_id, epochs=1)
            assert resumed["reaction"] == alias and resumed["budget_left"] == 0
            assert server.service.store.get(session_id).batch_size == 1  # kept on resume
            assert "budget exhausted" in await fails(
                client, "train_candidate", session_id=session_id
            )
    finally:
        server.close()
    with Archive.open(path) as archive:
        assert [c.status for c in archive.list_candidates(session_id)] == ["ok", "ok"]
        assert archive.get_session(session_id).status == "finished"  # its budget is spent


async def test_a_resumed_session_keeps_its_settings_and_counts_only_search_steps(
    home: Path,
) -> None:
    path = home / "archive.duckdb"
    server = build_server(path, compile_training=False)
    try:
        async with Client(server) as client:
            session_id = await start(client, anonymise=True, seed=5, budget=3, epochs=4)
            aliases = dict(server.service.store.get(session_id).aliases.mapping)
            refused = await fails(
                client, "modify_diffusion", session_id=session_id, template="gcn",
                source="import os\n",
            )  # fmt: skip
            assert "refused" in refused or "sandbox unavailable" in refused
            await call(client, "select_diffusion", session_id=session_id, template="gcn")
    finally:
        server.close()
    server = build_server(path, compile_training=False)
    try:
        async with Client(server) as client:
            summary = await client.read_resource(f"session://{session_id}/summary")
            summary = json.loads(summary.contents[0].text)
            assert summary["steps_used"] == 0 and summary["budget_left"] == 3  # refusals are free
            assert summary["epochs_per_candidate"] == 4 and summary["seed"] == 5
            assert summary["anonymised"] and summary["draft"]["diffusion"] == "gcn"  # kept
            session = server.service.store.get(session_id)
            assert session.aliases.mapping == aliases and session.last_candidate_id is None
            assert "unknown session" in await fails(
                client, "list_catalogs", session_id="s-000000000000"
            )
    finally:
        server.close()
