"""Archive reads (server/reads.py): the agent's SQL guard, the query's session scope, and an
anonymised session's rows written under its aliases."""

from __future__ import annotations

import json

import pytest
from leads_server.app import LeadsServer
from leads_server.archive.query_run import MAX_CELL_CHARS, MAX_RESULT_BYTES
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
        "WITH d AS (DELETE FROM sessions RETURNING *) SELECT * FROM d",
        "SELECT * FROM glob('/etc/*')",
        # names that would reach around the query's session scope
        "SELECT * FROM archive.main.candidates",
        "SELECT * FROM archive.candidates",
        "SELECT * FROM temp.main.candidates",
        "SELECT * FROM pragma_storage_info('candidates')",
    ],
)
async def test_query_archive_refuses_writes_and_files(client: Client, sql: str) -> None:
    text = await fails(client, "query_archive", sql=sql)
    assert "query_archive" in text or "disabled" in text
    still = await call(client, "query_archive", sql="SELECT count(*) FROM candidates")
    assert still["rows"] == [[0]]


async def test_anonymised_session_rows_hold_aliases_only(
    client: Client, server: LeadsServer
) -> None:
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
        session_id=session_id,
    )
    assert result["rows"][0][0] == alias and alias in result["rows"][0][1]
    assert "aliev" not in json.dumps(result).lower()
    record = await call(client, "get_candidate", candidate_id=trained["candidate_id"])
    assert "aliev" not in json.dumps(record).lower()
    # Without session_id a query covers the non-anonymised sessions only, and says so.
    hidden = await call(client, "query_archive", sql="SELECT count(*) FROM candidates")
    assert hidden["rows"] == [[0]] and "1 anonymised session" in hidden["notice"]
    # The archive file itself holds the alias; the real name and the map are in the truth file.
    row = server.service.archive.get_candidate(trained["candidate_id"])
    assert row.reaction == alias
    session_row = server.service.archive.get_session(session_id)
    assert "aliases" not in session_row.config and session_row.dataset_path is None
    truth = server.service.sessions.truth.read(session_id)
    assert truth.aliases["aliev_panfilov"] == alias and truth.true_reaction == "aliev_panfilov"


async def test_a_query_with_session_id_sees_that_session_only(client: Client) -> None:
    first = await start(client, anonymise=False)
    second = await start(client, anonymise=False)
    for session_id in (first, second):
        await call(client, "select_reaction", session_id=session_id, reaction="aliev_panfilov")
        await call(client, "select_diffusion", session_id=session_id, template="laplacian_global")
        await train(client, session_id, epochs=1)
    both = await call(client, "query_archive", sql="SELECT session_id FROM candidates")
    assert sorted(row[0] for row in both["rows"]) == sorted([first, second])
    own = await call(
        client, "query_archive", sql="SELECT session_id FROM candidates", session_id=first
    )
    assert own["rows"] == [[first]]
    for sql in (
        "SELECT session_id FROM sessions",
        "SELECT DISTINCT session_id FROM steps",
        "SELECT c.session_id FROM epochs e JOIN candidates c USING (candidate_id)",
        "SELECT session_id FROM main.candidates",
    ):
        answer = await client.call_tool("query_archive", {"sql": sql, "session_id": first})
        rows = [] if answer.is_error else answer.structured_content["rows"]
        assert all(row[0] == first for row in rows), sql
    unknown = await fails(client, "query_archive", sql="SELECT 1", session_id="s-000000000000")
    assert "unknown session" in unknown


async def query_sizes(client: Client, **arguments: object) -> tuple[dict, int, int]:
    """A query_archive result: its structured content, and the bytes of its structured and
    text content (the text content is the rows as a compact table, headed by the columns)."""
    result = await client.call_tool("query_archive", arguments)
    assert not result.is_error, result.content[0].text
    structured = result.structured_content
    assert len(result.content) == 1
    assert result.content[0].text.split("\n")[0] == "\t".join(structured["columns"])
    text_bytes = len(result.content[0].text.encode())
    return structured, len(json.dumps(structured, ensure_ascii=False).encode()), text_bytes


async def test_query_archive_results_are_capped_in_bytes(client: Client) -> None:
    huge, structured_bytes, text_bytes = await query_sizes(
        client, sql="SELECT repeat('x', 10000000) AS big"
    )
    assert huge["rows"][0][0].endswith("…[cut: 10000000 characters in all]")
    assert len(huge["rows"][0][0]) < MAX_CELL_CHARS + 100
    assert not huge["truncated"] and "substr(" in huge["notice"]
    assert structured_bytes < MAX_RESULT_BYTES and text_bytes < MAX_RESULT_BYTES

    many, structured_bytes, text_bytes = await query_sizes(
        client, sql="SELECT range AS n, repeat('y', 2000) AS s FROM range(1000)", max_rows=1000
    )
    assert many["truncated"] and many["truncated_reason"] == "max_bytes"
    assert 0 < many["row_count"] == len(many["rows"]) < 1000
    assert f"limit of {MAX_RESULT_BYTES} bytes" in many["notice"]
    assert structured_bytes <= MAX_RESULT_BYTES and text_bytes <= MAX_RESULT_BYTES

    rows, _, _ = await query_sizes(client, sql="SELECT * FROM range(10)", max_rows=3)
    assert rows["truncated_reason"] == "max_rows" and rows["rows"] == [[0], [1], [2]]
    assert "max_rows limit of 3" in rows["notice"]
