"""The agent's read-only SQL on the archive: results, limits, refusals and threads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from leads_server.archive import TABLES, Archive, ArchiveError, QueryRows

from leads_engine.spec import CandidateSpec


@pytest.fixture
def archive(tmp_path: Path):
    with Archive.open(tmp_path / "project" / "archive.duckdb") as opened:
        yield opened


def new_session(archive: Archive) -> str:
    return archive.create_session("lv-small", "/data/lv.npz", 20, True, 7, {"epochs": 5})


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
    }
    assert archive.query("DESCRIBE candidates").row_count == 20
    assert archive.query("EXPLAIN SELECT 1").row_count >= 1
    with pytest.raises(ArchiveError, match="max_rows"):
        archive.query("SELECT 1", max_rows=-1)
    with pytest.raises(ArchiveError, match="timeout_s"):
        archive.query("SELECT 1", timeout_s=0)


NO_FILES = "file and network access is disabled in query_archive"
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
    "EXPLAIN ANALYZE DELETE FROM candidates": "EXPLAIN is allowed only directly before a SELECT",
    "SELECT 1; DROP TABLE candidates": "found 2 statements",
    "": "found 0 statements",
    "SELEKT 1": "does not parse",
    "SELECT * FROM read_csv('/etc/passwd')": NO_FILES,
    "SELECT * FROM read_text('/etc/passwd')": NO_FILES,
    "SELECT * FROM glob('/etc/*')": NO_FILES,
    "SELECT * FROM read_parquet('http://example.com/x.parquet')": NO_FILES,
    "SELECT * FROM query('DROP TABLE candidates')": "query failed",
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
        if "statements" in reason or "parse" in reason or "EXPLAIN" in reason:
            assert message.startswith("query_archive accepts one read-only SELECT"), message
    assert table_counts(archive) == before
    assert archive.get_candidate(candidate).status == "ok"
    # The writer still writes after all that.
    archive.record_step(session, "t", {}, "o")
    other = archive.begin_candidate(session, make_spec(1))
    archive.finish_candidate(other, "ok", val_loss=0.5)
    after = table_counts(archive)
    assert after == {**before, "steps": before["steps"] + 1, "candidates": 2}


def test_a_long_query_is_stopped(archive: Archive):
    started = time.monotonic()
    with pytest.raises(ArchiveError, match="query stopped after 1 s"):
        archive.query("SELECT count(*) FROM range(1000000000) a, range(1000) b", timeout_s=1)
    with pytest.raises(ArchiveError, match="query stopped after 0.5 s"):
        archive.query(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
            "SELECT count(*) FROM r",
            timeout_s=0.5,
        )
    assert time.monotonic() - started < 15
    assert archive.query("SELECT 42").rows == [[42]]


def test_threads_share_one_archive(archive: Archive):
    session = new_session(archive)
    candidates = [archive.begin_candidate(session, make_spec(i)) for i in range(4)]
    errors: list[BaseException] = []

    def train(candidate: str) -> None:
        try:
            for epoch in range(20):
                archive.record_epoch(candidate, epoch, 1.0, 1.0, 0.01)
                archive.query("SELECT count(*) FROM epochs")
            archive.finish_candidate(candidate, "ok", val_loss=1.0)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def slow_query() -> None:
        with pytest.raises(ArchiveError, match="stopped"):
            archive.query("SELECT count(*) FROM range(1000000000) a, range(1000) b", timeout_s=1)

    threads = [threading.Thread(target=train, args=(c,)) for c in candidates]
    threads.append(threading.Thread(target=slow_query))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(len(archive.get_candidate(c).epochs) == 20 for c in candidates)
    assert len(archive.list_candidates(session, status="ok")) == 4
