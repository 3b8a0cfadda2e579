"""The archive: round trips, append-only results, crash recovery, export, and read-only SQL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import pytest

from leads_engine.archive import (
    INTERRUPTED_ERROR,
    TABLES,
    Archive,
    ArchiveError,
    default_archive_path,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def archive_path(tmp_path: Path) -> Path:
    return tmp_path / "project" / "archive.duckdb"


@pytest.fixture
def archive(archive_path: Path):
    with Archive.open(archive_path) as opened:
        yield opened


def new_session(archive: Archive, dataset: str = "lv-small") -> str:
    return archive.create_session(dataset, "/data/lv.npz", 20, True, 7, {"epochs": 5})


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def table_counts(archive: Archive) -> dict[str, int]:
    sql = " UNION ALL ".join(f"SELECT '{table}', count(*) FROM {table}" for table in TABLES)
    return {name: count for name, count in archive.query(sql)["rows"]}


def test_default_path_follows_leads_home(monkeypatch, tmp_path):
    monkeypatch.setenv("LEADS_HOME", str(tmp_path))
    assert default_archive_path() == tmp_path / "archive.duckdb"


def test_round_trip(archive: Archive, archive_path: Path):
    assert archive_path.exists()
    session = new_session(archive)
    assert session.startswith("s-") and len(session) == 14
    other = new_session(archive, "atrium")

    stored = archive.get_session(session)
    assert stored["dataset"] == "lv-small" and stored["budget"] == 20 and stored["anonymise"]
    assert stored["config"] == {"epochs": 5} and stored["status"] == "running"
    assert [s["session_id"] for s in archive.list_sessions()] == [session, other]
    archive.set_session_status(session, "finished")
    assert archive.get_session(session)["status"] == "finished"
    with pytest.raises(ArchiveError, match="session status"):
        archive.set_session_status(session, "exploded")
    with pytest.raises(ArchiveError, match="unknown session"):
        archive.get_session("s-000000000000")

    spec = {"reaction": "aliev_panfilov", "diffusion": "gcn", "hidden": 32}
    base = archive.begin_candidate(session, spec, "baseline", None, "aliev_panfilov", "gcn")
    assert base.startswith("c-") and len(base) == 14
    for epoch, (train, val) in enumerate([(1.0, 1.2), (0.5, 0.6)]):
        archive.record_epoch(base, epoch, train, val, 0.1)
    archive.finish_candidate(
        base,
        "ok",
        train_loss=0.5,
        val_loss=0.6,
        best_epoch=1,
        parameter_count=1234,
        wall_seconds=0.2,
        metrics={"at_mae": 3.5, "bad": float("nan")},
        diagnosis="fits",
        weights=b"\x00weights",
    )
    code = "def forward(x):\n    return x\n"
    child = archive.begin_candidate(session, spec, "modify", base, "aliev_panfilov", "gcn", code)
    archive.finish_candidate(child, "unstable", train_loss=float("inf"), error="NaN at epoch 0")
    better = archive.begin_candidate(session, spec, "refine", base, "aliev_panfilov", "gcn")
    archive.finish_candidate(better, "ok", val_loss=0.3)
    refused = archive.record_refusal(
        session, spec, "modify", base, "aliev_panfilov", "gcn", "import os", "imports os"
    )

    got = archive.get_candidate(base)
    assert got["status"] == "ok" and got["spec"] == spec and got["val_loss"] == 0.6
    assert got["metrics"] == {"at_mae": 3.5, "bad": None}  # NaN is not JSON: stored as null
    assert got["has_weights"] and "weights" not in got
    assert [e["epoch"] for e in got["epochs"]] == [0, 1] and got["epochs"][1]["val_loss"] == 0.6
    assert archive.get_weights(base) == b"\x00weights"
    assert archive.get_weights(child) is None

    got_child = archive.get_candidate(child)
    assert got_child["parent_id"] == base and got_child["code"] == code
    assert len(got_child["code_hash"]) == 64 and got_child["train_loss"] == float("inf")
    assert archive.get_candidate(refused)["status"] == "refused"
    assert archive.get_candidate(refused)["error"] == "imports os"

    ids = [c["candidate_id"] for c in archive.list_candidates(session)]
    assert ids == [base, child, better, refused]
    assert [c["candidate_id"] for c in archive.list_candidates(session, order_by="val_loss")][
        :2
    ] == [better, base]
    assert [c["candidate_id"] for c in archive.list_candidates(session, status="ok")] == [
        base,
        better,
    ]
    assert len(archive.list_candidates(session, limit=2)) == 2
    assert archive.list_candidates(other) == []
    assert archive.best_candidate(session)["candidate_id"] == better
    assert archive.best_candidate(other) is None
    assert archive.count_candidates(session) == 4
    assert archive.count_candidates(session, ["modify"]) == 2
    assert archive.count_candidates(session, ["modify", "refine"]) == 3
    with pytest.raises(ArchiveError, match="operation"):
        archive.begin_candidate(session, spec, "mutate", None, None, None)

    assert archive.record_step(session, "try gcn", {"tool": "train", "k": 1}, "ok") == 1
    assert archive.record_step(session, "refine", {"tool": "refine"}, "better") == 2
    steps = archive.list_steps(session)
    assert [s["step"] for s in steps] == [1, 2] and steps[0]["action"] == {"tool": "train", "k": 1}
    assert archive.record_step(other, None, None, None) == 1

    archive.record_evaluation(base, "test", 0.7, 2.5, {"per_node": [1, 2]})
    archive.record_evaluation(base, "val", 0.6, 2.0, None)
    evaluations = archive.get_candidate(base)["evaluations"]
    assert [(e["split"], e["mse"]) for e in evaluations] == [("test", 0.7), ("val", 0.6)]
    assert evaluations[0]["metrics"] == {"per_node": [1, 2]}

    archive.close()
    with Archive.open(archive_path) as reopened:  # everything was committed
        assert reopened.get_candidate(base)["epochs"] == got["epochs"]
        assert reopened.count_candidates(session) == 4 and len(reopened.list_steps(session)) == 2
        assert reopened.recovered_candidates == []
    with pytest.raises(ArchiveError, match="closed"):
        archive.list_sessions()


def test_results_are_append_only(archive: Archive):
    session = new_session(archive)
    candidate = archive.begin_candidate(session, {}, "baseline", None, "fhn", "gcn")
    archive.record_epoch(candidate, 0, 1.0, 1.0, 0.1)
    with pytest.raises(ArchiveError, match="epoch 0"):
        archive.record_epoch(candidate, 0, 2.0, 2.0, 0.1)
    with pytest.raises(ArchiveError, match="final status"):
        archive.finish_candidate(candidate, "pending")
    archive.finish_candidate(candidate, "ok", val_loss=1.0)

    with pytest.raises(ArchiveError, match="already finished"):
        archive.finish_candidate(candidate, "failed", error="again")
    with pytest.raises(ArchiveError, match="not pending"):
        archive.record_epoch(candidate, 1, 0.5, 0.5, 0.1)
    refused = archive.record_refusal(session, {}, "modify", candidate, None, None, "x", "no")
    with pytest.raises(ArchiveError, match="already finished"):
        archive.finish_candidate(refused, "ok")
    with pytest.raises(ArchiveError, match="unknown candidate"):
        archive.finish_candidate("c-000000000000", "ok")
    got = archive.get_candidate(candidate)
    assert got["status"] == "ok" and got["val_loss"] == 1.0 and len(got["epochs"]) == 1
    # The API has no way to change or remove results.
    mutators = [n for n in dir(Archive) if n.startswith(("delete", "update", "remove", "set_"))]
    assert mutators == ["set_session_status"]


def test_parent_must_be_in_the_same_session(archive: Archive):
    first, second = new_session(archive), new_session(archive)
    parent = archive.begin_candidate(first, {}, "baseline", None, "fhn", "gcn")
    with pytest.raises(ArchiveError, match="belongs to session"):
        archive.begin_candidate(second, {}, "refine", parent, "fhn", "gcn")
    with pytest.raises(ArchiveError, match="belongs to session"):
        archive.record_refusal(second, {}, "modify", parent, "fhn", "gcn", "x", "refused")
    with pytest.raises(ArchiveError, match="unknown parent"):
        archive.begin_candidate(first, {}, "refine", "c-000000000000", "fhn", "gcn")
    with pytest.raises(ArchiveError, match="unknown session"):
        archive.begin_candidate("s-000000000000", {}, "baseline", None, "fhn", "gcn")
    assert archive.count_candidates(second) == 0
    archive.begin_candidate(first, {}, "refine", parent, "fhn", "gcn")


def test_open_fails_candidates_left_pending(archive_path: Path):
    with Archive.open(archive_path) as archive:
        session = new_session(archive)
        left = archive.begin_candidate(session, {}, "baseline", None, "fhn", "gcn")
        archive.record_epoch(left, 0, 1.0, 1.0, 0.1)
    with Archive.open(archive_path) as archive:
        assert archive.recovered_candidates == [left]
        got = archive.get_candidate(left)
        assert got["status"] == "failed" and got["error"] == INTERRUPTED_ERROR
        assert len(got["epochs"]) == 1


def test_a_killed_process_loses_only_the_candidate_in_flight(archive_path: Path):
    result = run_python(f"""
        import os, signal
        from leads_engine.archive import Archive
        archive = Archive.open({str(archive_path)!r})
        session = archive.create_session("lv", None, 5, False, 0, {{}})
        done = archive.begin_candidate(session, {{"n": 1}}, "baseline", None, "fhn", "gcn")
        for epoch in range(3):
            archive.record_epoch(done, epoch, 1.0 / (epoch + 1), 2.0 / (epoch + 1), 0.1)
        archive.finish_candidate(done, "ok", 0.33, 0.66, 2, 100, 0.3, {{"x": 1}}, weights=b"w")
        flight = archive.begin_candidate(session, {{"n": 2}}, "refine", done, "fhn", "gcn")
        archive.record_epoch(flight, 0, 5.0, 5.0, 0.1)
        print(session, done, flight, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert result.returncode == -9, result.stderr
    session, done, flight = result.stdout.split()

    with Archive.open(archive_path) as archive:
        assert archive.recovered_candidates == [flight]
        finished = archive.get_candidate(done)
        assert finished["status"] == "ok" and finished["val_loss"] == 0.66
        assert [e["epoch"] for e in finished["epochs"]] == [0, 1, 2]
        assert archive.get_weights(done) == b"w"
        interrupted = archive.get_candidate(flight)
        assert interrupted["status"] == "failed" and interrupted["error"] == INTERRUPTED_ERROR
        assert [e["train_loss"] for e in interrupted["epochs"]] == [5.0]
        again = archive.begin_candidate(session, {"n": 3}, "refine", done, "fhn", "gcn")
        archive.finish_candidate(again, "ok", val_loss=0.5)
        assert archive.best_candidate(session)["candidate_id"] == again


def test_the_file_is_held_by_one_process(archive: Archive, archive_path: Path):
    result = run_python(f"""
        from leads_engine.archive import Archive, ArchiveError
        try:
            Archive.open({str(archive_path)!r})
        except ArchiveError as exc:
            print("refused:", exc)
    """)
    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout and "in use by another process" in result.stdout
    assert str(archive_path) in result.stdout
    with pytest.raises(ArchiveError, match="already open in this process"):
        Archive.open(archive_path)
    new_session(archive)  # the first Archive is unaffected


@pytest.mark.parametrize("format", ["parquet", "csv"])
def test_export_is_readable(archive: Archive, tmp_path: Path, format: str):
    session = new_session(archive)
    candidate = archive.begin_candidate(session, {"k": 1}, "baseline", None, "fhn", "gcn")
    archive.record_epoch(candidate, 0, 1.0, 1.0, 0.1)
    archive.finish_candidate(candidate, "ok", val_loss=1.0, weights=b"secret")
    archive.record_step(session, "t", {"a": 1}, "o")
    archive.record_evaluation(candidate, "test", 1.0, 1.0, {})

    paths = archive.export(tmp_path / "out", format=format)
    assert sorted(p.name for p in paths) == sorted(f"{t}.{format}" for t in TABLES)
    reader = duckdb.connect()
    read = f"read_{format}"
    counts = {
        p.stem: reader.execute(f"SELECT count(*) FROM {read}('{p}')").fetchone()[0] for p in paths
    }
    assert counts == {
        "schema_version": 1,
        "sessions": 1,
        "candidates": 1,
        "epochs": 1,
        "steps": 1,
        "evaluations": 1,
    }
    columns = [
        c[0]
        for c in reader.execute(
            f"SELECT * FROM {read}('{tmp_path / 'out' / f'candidates.{format}'}')"
        ).description
    ]
    assert "weights" not in columns and "val_loss" in columns
    with pytest.raises(ArchiveError, match="export format"):
        archive.export(tmp_path / "out", format="xlsx")


def test_query_reads_and_truncates(archive: Archive):
    session = new_session(archive)
    for index in range(5):
        candidate = archive.begin_candidate(session, {"i": index}, "baseline", None, "f", "g")
        archive.finish_candidate(candidate, "ok", val_loss=float(index), weights=b"abc")
    result = archive.query(
        "SELECT candidate_id, val_loss, created_at, weights FROM candidates ORDER BY val_loss",
        max_rows=3,
    )
    assert result["columns"] == ["candidate_id", "val_loss", "created_at", "weights"]
    assert result["truncated"] and result["row_count"] == 3
    assert [row[1] for row in result["rows"]] == [0.0, 1.0, 2.0]
    assert isinstance(result["rows"][0][2], str) and result["rows"][0][3] == "<3 bytes>"
    full = archive.query("WITH v AS (SELECT val_loss FROM candidates) SELECT sum(val_loss) FROM v")
    assert full == {
        "columns": ["sum(val_loss)"],
        "rows": [[10.0]],
        "truncated": False,
        "row_count": 1,
    }
    assert archive.query("DESCRIBE candidates")["row_count"] == 20
    assert archive.query("EXPLAIN SELECT 1")["row_count"] >= 1


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


def test_query_refuses_anything_but_reading_the_archive(archive: Archive, tmp_path: Path):
    session = new_session(archive)
    candidate = archive.begin_candidate(session, {}, "baseline", None, "fhn", "gcn")
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
    assert archive.get_candidate(candidate)["status"] == "ok"
    # The writer still writes and exports after all that.
    archive.record_step(session, "t", {}, "o")
    assert len(archive.export(tmp_path / "after", format="csv")) == len(TABLES)


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
    assert archive.query("SELECT 42")["rows"] == [[42]]


def test_threads_share_one_archive(archive: Archive):
    session = new_session(archive)
    candidates = [
        archive.begin_candidate(session, {"i": i}, "baseline", None, "f", "g") for i in range(4)
    ]
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
    assert all(len(archive.get_candidate(c)["epochs"]) == 20 for c in candidates)
    assert len(archive.list_candidates(session, status="ok")) == 4
