"""Archive reads (server/reads.py): the agent's SQL guard and reaction names masked with the
session's aliases."""

from __future__ import annotations

import json

import pytest
from leads_server.app import LeadsServer
from mcp import Client
from server_calls import call, fails, start, train

pytest_plugins = ("server_fixtures",)
pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "sql",
    [
        "DROP TABLE candidates",
        "INSERT INTO sessions VALUES ('x')",
        "COPY candidates TO '/tmp/leak.csv'",
        "ATTACH '/tmp/other.duckdb' AS other",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT 1; DROP TABLE candidates",
    ],
)
async def test_query_archive_refuses_writes_and_files(client: Client, sql: str) -> None:
    text = await fails(client, "query_archive", sql=sql)
    assert "query_archive" in text or "disabled" in text
    still = await call(client, "query_archive", sql="SELECT count(*) FROM candidates")
    assert still["rows"] == [[0]]


async def test_anonymised_names_in_archive_queries(client: Client, server: LeadsServer) -> None:
    session_id = await start(client, anonymise=True, seed=1)
    alias = server.service.store.get(session_id).aliases.show("aliev_panfilov")
    await call(client, "select_reaction", session_id=session_id, reaction=alias)
    await call(client, "select_diffusion", session_id=session_id, template="laplacian_global")
    trained, _ = await train(client, session_id, epochs=1)
    assert trained["reaction"] == alias
    result = await call(
        client,
        "query_archive",
        sql=f"SELECT reaction, spec FROM candidates WHERE reaction = '{alias}'",
    )
    assert result["rows"][0][0] == alias and alias in result["rows"][0][1]
    assert "aliev" not in json.dumps(result).lower()
    record = await call(client, "get_candidate", candidate_id=trained["candidate_id"])
    assert "aliev" not in json.dumps(record).lower()
    # The archive itself keeps the real name and the alias map.
    row = server.service.archive.get_candidate(trained["candidate_id"])
    assert row.reaction == "aliev_panfilov"
    config = server.service.archive.get_session(session_id).config
    assert config["aliases"]["aliev_panfilov"] == alias
