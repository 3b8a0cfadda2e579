"""The first defence of the agent's SQL, on its own: the statement check refuses anything but one
read-only query over the database's tables, even on a writable connection with file access on;
and the archive's query answers reads."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from leads_server.archive import TABLES, Archive, ArchiveError, QueryRows
from leads_server.archive.query_guard import QUERY_REFUSAL, check_read_only

from leads_engine.spec import CandidateSpec


@pytest.fixture
def archive(tmp_path: Path):
    with Archive.open(tmp_path / "project" / "archive.duckdb") as opened:
        yield opened


def new_session(archive: Archive) -> str:
    return archive.create_session("lv-small", "/data/lv.npz", 20, False, 7, {"epochs": 5})


def make_spec(seed: int = 0) -> CandidateSpec:
    return CandidateSpec(
        reaction="fitzhugh_nagumo", diffusion="gcn", operation="baseline", seed=seed
    )


def table_counts(archive: Archive) -> dict[str, int]:
    sql = " UNION ALL ".join(f"SELECT '{table}', count(*) FROM {table}" for table in TABLES)
    return {name: count for name, count in archive.query(sql).rows}


def test_query_reads_and_truncates(archive: Archive):
    session = new_session(archive)
    for index in range(5):
        candidate = archive.begin_candidate(session, make_spec(index))
        archive.finish_candidate(candidate, "ok", val_loss=float(index), weights=b"abc")
    result = archive.query(
        "SELECT candidate_id, val_loss, created_at, weights FROM candidates ORDER BY val_loss",
        max_rows=3,
    )
    assert result.columns == ["candidate_id", "val_loss", "created_at", "weights"]
    assert result.truncated and result.row_count == 3
    assert [row[1] for row in result.rows] == [0.0, 1.0, 2.0]
    assert isinstance(result.rows[0][2], str) and result.rows[0][3] == "<3 bytes>"
    full = archive.query("WITH v AS (SELECT val_loss FROM candidates) SELECT sum(val_loss) FROM v")
    assert full == QueryRows(columns=["sum(val_loss)"], rows=[[10.0]], truncated=False, row_count=1)
    assert full.as_dict() == {
        "columns": ["sum(val_loss)"],
        "rows": [[10.0]],
        "truncated": False,
        "row_count": 1,
        "truncated_reason": None,
        "notice": None,
    }
    assert archive.query("DESCRIBE candidates").row_count == 20
    assert archive.query("EXPLAIN SELECT 1").row_count >= 1
    with pytest.raises(ArchiveError, match="max_rows"):
        archive.query("SELECT 1", max_rows=-1)
    with pytest.raises(ArchiveError, match="timeout_s"):
        archive.query("SELECT 1", timeout_s=0)


def not_allowed(function: str) -> str:
    return f"table function {function}() is not allowed"


MODIFYING_CTES = {
    "WITH d AS (DELETE FROM candidates RETURNING *) SELECT * FROM d": "data-modifying DELETE",
    "WITH x AS (INSERT INTO steps SELECT * FROM steps RETURNING *) FROM x": "data-modifying INSERT",
    "WITH u AS MATERIALIZED (UPDATE candidates SET status = 'ok' RETURNING *) FROM u": (
        "data-modifying UPDATE"
    ),
    "SELECT * FROM (WITH d AS (DELETE FROM candidates RETURNING *) SELECT * FROM d)": (
        "data-modifying DELETE"
    ),
}
REFUSED_QUERIES = {
    "DROP TABLE candidates": "DROP statements are not allowed",
    "INSERT INTO sessions (session_id) VALUES ('x')": "INSERT statements are not allowed",
    "DELETE FROM candidates": "DELETE statements are not allowed",
    "UPDATE candidates SET status = 'ok'": "UPDATE statements are not allowed",
    "COPY candidates TO '/tmp/x.csv'": "COPY statements are not allowed",
    "ATTACH '/tmp/x.db'": "ATTACH statements are not allowed",
    "INSTALL httpfs": "LOAD statements are not allowed",
    "LOAD httpfs": "LOAD statements are not allowed",
    "SET enable_external_access = true": "SET statements are not allowed",
    "PRAGMA database_list": "PRAGMA statements are not allowed",
    "CALL pragma_version()": "CALL statements are not allowed",
    "CHECKPOINT": "CALL statements are not allowed",
    "EXPORT DATABASE '/tmp/x'": "EXPORT statements are not allowed",
    "CREATE TABLE x AS SELECT 1": "CREATE statements are not allowed",
    "PIVOT candidates ON status": "MULTI statements are not allowed",
    "EXPLAIN ANALYZE DELETE FROM candidates": "EXPLAIN is allowed only directly before a SELECT",
    "SELECT 1; DROP TABLE candidates": "found 2 statements",
    "COMMIT; DELETE FROM candidates": "found 2 statements",
    "": "found 0 statements",
    "SELEKT 1": "does not parse",
    **MODIFYING_CTES,
    "SELECT * FROM read_csv('/etc/passwd')": not_allowed("read_csv"),
    "SELECT * FROM read_csv_auto('/etc/passwd')": not_allowed("read_csv_auto"),
    "SELECT * FROM read_text('/etc/passwd')": not_allowed("read_text"),
    "SELECT * FROM read_blob('/etc/passwd')": not_allowed("read_blob"),
    "SELECT * FROM read_json('/etc/x.json')": not_allowed("read_json"),
    "SELECT * FROM glob('/etc/*')": not_allowed("glob"),
    "SELECT * FROM read_parquet('http://example.com/x.parquet')": not_allowed("read_parquet"),
    "SELECT * FROM sqlite_scan('x.db', 't')": not_allowed("sqlite_scan"),
    "SELECT * FROM query('DROP TABLE candidates')": not_allowed("query"),
    "SELECT * FROM query_table('candidates')": not_allowed("query_table"),
    "SELECT * FROM duckdb_secrets()": not_allowed("duckdb_secrets"),
    "SELECT (SELECT count(*) FROM glob('/etc/*'))": not_allowed("glob"),
    "EXPLAIN SELECT * FROM read_csv('/etc/passwd')": not_allowed("read_csv"),
    "SELECT * FROM '/etc/passwd'": "names a file, not a table",
    "SELECT * FROM 'candidates.csv'": "names a file, not a table",
    'SELECT * FROM "https://example.com/x.parquet"': "names a file, not a table",
}


def test_query_refuses_anything_but_reading_the_archive(archive: Archive):
    session = new_session(archive)
    candidate = archive.begin_candidate(session, make_spec())
    archive.finish_candidate(candidate, "ok", val_loss=1.0)
    before = table_counts(archive)
    for sql, reason in REFUSED_QUERIES.items():
        with pytest.raises(ArchiveError) as raised:
            archive.query(sql)
        message = str(raised.value)
        assert reason in message, (sql, message)
        assert message.startswith(QUERY_REFUSAL), message
    assert table_counts(archive) == before
    assert archive.get_candidate(candidate).status == "ok"
    # The writer still writes after all that.
    archive.record_step(session, "t", {}, "o")
    other = archive.begin_candidate(session, make_spec(1))
    archive.finish_candidate(other, "ok", val_loss=0.5)
    after = table_counts(archive)
    assert after == {**before, "steps": before["steps"] + 1, "candidates": 2}


@pytest.fixture
def open_database(tmp_path: Path):
    """A writable in-memory database with file access on (no second defence) and a CSV file."""
    (tmp_path / "secret.csv").write_text("key,value\napi,hunter2\n")
    connection = duckdb.connect(":memory:")
    connection.execute("CREATE TABLE candidates AS SELECT range AS id FROM range(5)")
    connection.execute("CREATE TABLE steps AS SELECT range AS step FROM range(3)")
    yield connection, tmp_path
    connection.close()


def test_the_guard_alone_refuses_on_an_open_database(open_database):
    connection, folder = open_database
    secret = str(folder / "secret.csv")
    hostile = {
        **{sql: reason for sql, reason in REFUSED_QUERIES.items() if "/tmp/" not in sql},
        f"SELECT * FROM read_csv('{secret}')": not_allowed("read_csv"),
        f"SELECT * FROM '{secret}'": "names a file, not a table",
        f"COPY candidates TO '{folder / 'leak.csv'}'": "COPY statements are not allowed",
    }
    for sql, reason in hostile.items():
        with pytest.raises(ArchiveError, match="query_archive accepts one read-only") as raised:
            check_read_only(connection.cursor(), sql)
        assert reason in str(raised.value), (sql, str(raised.value))
    assert connection.execute("SELECT count(*) FROM candidates").fetchone() == (5,)
    assert connection.execute("SELECT count(*) FROM steps").fetchone() == (3,)
    assert not (folder / "leak.csv").exists()
    # Here nothing else stands in the way: unchecked, the same statements do harm.
    cte = next(iter(MODIFYING_CTES))
    assert len(connection.execute(cte).fetchall()) == 5
    assert connection.execute("SELECT count(*) FROM candidates").fetchone() == (0,)
    assert connection.execute(f"SELECT * FROM '{secret}'").fetchall() == [("api", "hunter2")]


READS = [
    "SELECT id FROM candidates ORDER BY id DESC",
    "SELECT id FROM candidates; -- a trailing comment",
    "FROM candidates WHERE id > 2",
    "VALUES (1, 'a'), (2, 'b')",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 4) FROM r",
    "SELECT id FROM candidates UNION ALL SELECT step FROM steps ORDER BY 1",
    "SELECT id, row_number() OVER (ORDER BY id DESC) AS rn FROM candidates QUALIFY rn < 3",
    "SELECT 'it''s' AS \"odd name\", [1, 2] AS l, {'k': 1} AS s",
    "SELECT * FROM range(3)",
    "SELECT count(*) FROM unnest([1, 2, 3])",
    "SELECT table_name FROM duckdb_tables() ORDER BY 1",
    "SELECT table_name FROM information_schema.tables ORDER BY 1",
    "DESCRIBE candidates",
    "SHOW TABLES",
    "SUMMARIZE candidates",
]


@pytest.mark.parametrize("sql", READS)
def test_the_guard_runs_reads_as_written(open_database, sql: str):
    connection, _ = open_database
    checked = check_read_only(connection.cursor(), sql)
    assert checked.explain is None
    expected = connection.execute(sql).fetchall()
    assert connection.execute(checked.statement(1000)).fetchall() == expected
    assert connection.execute(checked.statement(1)).fetchall() == expected[:2]


def test_the_guard_keeps_explain(open_database):
    connection, _ = open_database
    checked = check_read_only(connection.cursor(), "explain analyze SELECT count(*) FROM steps")
    assert checked.explain == "EXPLAIN ANALYZE"
    rows = connection.execute(checked.statement(5)).fetchall()
    assert rows and "analyzed_plan" in rows[0][0]
