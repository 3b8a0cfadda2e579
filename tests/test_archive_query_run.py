"""The second defence of the agent's SQL, on its own, and the limits of a query's result.

The execution layer (:func:`run_query`) is called directly, without the statement check: a
read-only transaction on a locked-down database instance must keep the archive unchanged
whatever it is handed. Then the row, byte, value and time limits of :meth:`Archive.query`.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from leads_server.archive import TABLES, Archive, ArchiveError
from leads_server.archive.query_run import (
    MAX_CELL_CHARS,
    MAX_RESULT_BYTES,
    QueryLimits,
    row_bytes,
    run_query,
)

from leads_engine.spec import CandidateSpec


@pytest.fixture
def archive(tmp_path: Path):
    with Archive.open(tmp_path / "project" / "archive.duckdb") as opened:
        yield opened


def make_spec(seed: int = 0) -> CandidateSpec:
    return CandidateSpec(
        reaction="fitzhugh_nagumo", diffusion="gcn", operation="baseline", seed=seed
    )


def new_session(archive: Archive) -> str:
    return archive.create_session("lv-small", "/data/lv.npz", 20, False, 7, {"epochs": 5})


def filled(archive: Archive) -> str:
    """A session with two finished candidates, epochs and a step; returns the session id."""
    session = new_session(archive)
    for index in range(2):
        candidate = archive.begin_candidate(session, make_spec(index))
        archive.record_epoch(candidate, 0, 1.0, 1.0, 0.1)
        archive.finish_candidate(candidate, "ok", val_loss=float(index), weights=b"abc")
    archive.record_step(session, "t", {"tool": "x"}, "o")
    return session


def snapshot(archive: Archive) -> dict[str, list]:
    """Every row of every table (through the archive's own reads, not the agent's query)."""
    return {table: archive._rows(f"SELECT * FROM {table} ORDER BY ALL") for table in TABLES}


def bypass(tmp_path: Path) -> dict[str, str]:
    """Statements the guard refuses, handed straight to the execution layer, and the words of
    DuckDB's refusal."""
    read_only = "read-only"
    no_files = "file and network access is disabled"
    locked = "configuration has been locked"
    return {
        "DELETE FROM candidates": read_only,
        "WITH d AS (DELETE FROM candidates RETURNING *) SELECT * FROM d": read_only,
        "INSERT INTO steps SELECT * FROM steps": read_only,
        "UPDATE candidates SET status = 'failed'": read_only,
        "DROP TABLE epochs": read_only,
        "ALTER TABLE sessions ADD COLUMN x INTEGER": read_only,
        "CREATE TABLE x AS SELECT 1": read_only,
        "TRUNCATE steps": read_only,
        "COMMIT; DELETE FROM candidates": "runs one statement, found 2",
        f"COPY candidates TO '{tmp_path / 'leak.csv'}'": no_files,
        f"EXPORT DATABASE '{tmp_path / 'export'}'": no_files,
        f"ATTACH '{tmp_path / 'other.duckdb'}' AS other": no_files,
        "SELECT * FROM read_csv('/etc/passwd')": no_files,
        "INSTALL httpfs": no_files,
        "LOAD httpfs": no_files,
        "SET enable_external_access = true": locked,
        "RESET lock_configuration": locked,
        "PRAGMA enable_profiling": locked,
    }


def test_the_execution_layer_alone_keeps_the_archive(archive: Archive, tmp_path: Path):
    filled(archive)
    before = snapshot(archive)
    for sql, reason in bypass(tmp_path).items():
        cursor = archive._connection().cursor()
        try:
            with pytest.raises(ArchiveError) as raised:
                run_query(cursor, sql)
        finally:
            cursor.close()
        assert reason in str(raised.value), (sql, str(raised.value))
        assert snapshot(archive) == before, sql
    assert not any(tmp_path.glob("leak*")) and not (tmp_path / "export").exists()
    assert not (tmp_path / "other.duckdb").exists()
    # The writer is unaffected.
    archive.record_step(archive.list_sessions()[0].session_id, "t2", None, None)
    assert len(snapshot(archive)["steps"]) == 2


def test_rows_past_max_rows_are_left_out_with_a_notice(archive: Archive):
    result = archive.query("SELECT range AS n FROM range(50)", max_rows=7)
    assert result.rows == [[n] for n in range(7)]
    assert result.truncated and result.truncated_reason == "max_rows"
    assert "max_rows limit of 7" in result.notice and "LIMIT/OFFSET" in result.notice
    whole = archive.query("SELECT range AS n FROM range(7)", max_rows=7)
    assert not whole.truncated and whole.truncated_reason is None and whole.notice is None


def result_bytes(rows: list) -> int:
    return sum(row_bytes(row) for row in rows)


def test_a_huge_value_is_cut_with_a_marker(archive: Archive):
    started = time.monotonic()
    result = archive.query("SELECT repeat('x', 10000000) AS big, 42 AS small")
    assert time.monotonic() - started < 30
    big, small = result.rows[0]
    assert small == 42 and not result.truncated
    assert big.startswith("x" * MAX_CELL_CHARS)
    assert big.endswith("…[cut: 10000000 characters in all]")
    assert len(big) < MAX_CELL_CHARS + 100
    assert "1 value(s) longer than" in result.notice and "substr(" in result.notice
    assert len(json.dumps(result.as_dict(), indent=2)) < MAX_RESULT_BYTES
    # Lists and maps are cut as well.
    listed = archive.query("SELECT range(1000000) AS l, map([1, 2], ['a', 'b']) AS m")
    values, mapped = listed.rows[0]
    assert values[-1] == "…[cut: 1000000 items in all]" and values[:3] == [0, 1, 2]
    assert len(json.dumps(values)) < 2 * MAX_CELL_CHARS and mapped == {"1": "a", "2": "b"}
    # Stored code up to the 50,000-character limit of an edited source comes back whole.
    code = archive.query("SELECT repeat('c', 50000) AS code").rows[0][0]
    assert code == "c" * 50000


def test_the_result_stops_at_the_byte_limit(archive: Archive):
    result = archive.query("SELECT range AS n, repeat('y', 2000) AS s FROM range(1000)")
    assert result.truncated and result.truncated_reason == "max_bytes"
    assert 0 < result.row_count < 1000 and result.rows[-1][0] == result.row_count - 1
    assert f"limit of {MAX_RESULT_BYTES} bytes" in result.notice
    assert "LIMIT/OFFSET" in result.notice
    assert len(json.dumps(result.as_dict(), indent=2).encode()) <= MAX_RESULT_BYTES
    assert result_bytes(result.rows) + row_bytes(result.rows[0]) > MAX_RESULT_BYTES - 2048
    # A caller may ask for a smaller cap; a first row over it leaves no row at all.
    small = archive.query("SELECT repeat('z', 60000) AS s FROM range(3)", max_bytes=16384)
    assert small.rows == [] and small.truncated_reason == "max_bytes"
    assert "only the first 0 rows" in small.notice
    with pytest.raises(ArchiveError, match="max_bytes must be"):
        archive.query("SELECT 1", max_bytes=10)


def test_limits_are_checked(archive: Archive):
    with pytest.raises(ArchiveError, match="max_rows"):
        archive.query("SELECT 1", max_rows=-1)
    with pytest.raises(ArchiveError, match="timeout_s"):
        archive.query("SELECT 1", timeout_s=0)
    assert QueryLimits().max_bytes == MAX_RESULT_BYTES == 256 * 1024


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
