"""The archive's schema: operations from the spec, the session status the store keeps true, and
the version check (a version-1 archive migrated in place; newer, unknown or unversioned files
refused with a message that says what to do)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import get_args

import duckdb
import pytest
from leads_server.archive import (
    INTERRUPTED_ERROR,
    SCHEMA_VERSION,
    Archive,
    ArchiveError,
)

from leads_engine.spec import OPERATIONS, SEARCH_OPERATIONS, CandidateSpec, Operation

#: The tables as LEADS schema version 1 created them (sessions.status never updated).
VERSION_1_DDL = """
CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL);
CREATE TABLE sessions (
    session_id VARCHAR PRIMARY KEY, created_at TIMESTAMP NOT NULL, dataset VARCHAR NOT NULL,
    dataset_path VARCHAR, budget INTEGER, anonymise BOOLEAN NOT NULL, seed INTEGER, config JSON,
    status VARCHAR NOT NULL CHECK (status IN ('running', 'stopped', 'finished'))
);
CREATE TABLE candidates (
    candidate_id VARCHAR PRIMARY KEY, session_id VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL,
    operation VARCHAR NOT NULL CHECK (operation IN
        ('select', 'refine', 'modify', 'simplify', 'baseline', 'finetune')),
    parent_id VARCHAR, reaction VARCHAR, diffusion VARCHAR, spec JSON, code TEXT,
    code_hash VARCHAR,
    status VARCHAR NOT NULL CHECK (status IN
        ('pending', 'ok', 'unstable', 'failed', 'cancelled', 'refused')),
    train_loss DOUBLE, val_loss DOUBLE, best_epoch INTEGER, parameter_count INTEGER,
    wall_seconds DOUBLE, metrics JSON, diagnosis TEXT, error TEXT, weights BLOB
);
CREATE TABLE epochs (
    candidate_id VARCHAR NOT NULL, epoch INTEGER NOT NULL, train_loss DOUBLE, val_loss DOUBLE,
    wall_seconds DOUBLE, PRIMARY KEY (candidate_id, epoch)
);
CREATE TABLE steps (
    session_id VARCHAR NOT NULL, step INTEGER NOT NULL, thought TEXT, action JSON,
    observation TEXT, created_at TIMESTAMP NOT NULL, PRIMARY KEY (session_id, step)
);
CREATE TABLE evaluations (
    candidate_id VARCHAR NOT NULL, split VARCHAR NOT NULL, mse DOUBLE, at_mae DOUBLE,
    metrics JSON, created_at TIMESTAMP NOT NULL
);
"""

NOW = dt.datetime(2026, 1, 1)


@pytest.fixture
def archive_path(tmp_path: Path) -> Path:
    return tmp_path / "project" / "archive.duckdb"


def make_spec(operation: str = "select", parent: str | None = None, seed: int = 0):
    return CandidateSpec(
        reaction="aliev_panfilov",
        diffusion="gcn",
        diffusion_source="class X: ...\n" if operation == "modify" else None,
        parent_id=parent,
        operation=operation,
        seed=seed,
    )


def write_version_1(path: Path, version: int = 1) -> None:
    """A version-1 archive (recorded as ``version``) written with raw DDL: session s-full spent
    its budget of 2, s-open has 1 of 3 used, s-refused only a refused edit, s-crash a candidate
    left pending by a dead process. Every session is ``running``, as version 1 left them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(path)) as con:
        con.execute(VERSION_1_DDL)
        con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, NOW])
        for session, budget in [("s-full", 2), ("s-open", 3), ("s-refused", 1), ("s-crash", 1)]:
            con.execute(
                "INSERT INTO sessions VALUES (?, ?, 'tiny', NULL, ?, false, 0, '{}', 'running')",
                [session, NOW, budget],
            )
        for candidate, session, operation, status in [
            ("c-1", "s-full", "select", "ok"),
            ("c-2", "s-full", "refine", "unstable"),
            ("c-3", "s-full", "finetune", "ok"),
            ("c-4", "s-open", "select", "ok"),
            ("c-5", "s-refused", "modify", "refused"),
            ("c-6", "s-crash", "select", "pending"),
        ]:
            con.execute(
                "INSERT INTO candidates (candidate_id, session_id, created_at, operation, "
                "spec, status) VALUES (?, ?, ?, ?, '{}', ?)",
                [candidate, session, NOW, operation, status],
            )


def test_operations_are_the_specs():
    assert get_args(Operation) == OPERATIONS
    assert OPERATIONS == ("select", "refine", "modify", "simplify", "baseline", "finetune")
    assert SEARCH_OPERATIONS == OPERATIONS[:4]


def test_every_operation_is_accepted(tmp_path: Path):
    with Archive.open(tmp_path / "archive.duckdb") as archive:
        session = archive.create_session("tiny", None, 10, False, 0, None)
        for operation in OPERATIONS:
            archive.record_refusal(session, make_spec(operation), "refused")
        stored = [c.operation for c in archive.list_candidates(session)]
    assert stored == list(OPERATIONS)


def test_session_status_follows_budget_and_candidates(archive_path: Path):
    with Archive.open(archive_path) as archive:
        session = archive.create_session("tiny", None, 2, False, 0, None)
        status = lambda: archive.get_session(session).status  # noqa: E731
        assert status() == "running"
        first = archive.begin_candidate(session, make_spec())
        archive.finish_candidate(first, "failed", error="NaN")
        archive.record_refusal(session, make_spec("modify", first), "imports os")
        assert status() == "running"  # one of two spent; a refused edit spends no budget
        last = archive.begin_candidate(session, make_spec("refine", first))
        assert status() == "running"  # the last one is training
        archive.finish_candidate(last, "ok", val_loss=1.0)
        assert status() == "finished"
        tuned = archive.begin_candidate(session, make_spec("finetune", last))
        assert status() == "running"  # a fine-tune trains
        archive.finish_candidate(tuned, "cancelled")
        assert status() == "finished"
        crashed = archive.begin_candidate(session, make_spec("finetune", last, seed=1))
        nothing = archive.create_session("tiny", None, 0, False, 0, None)
        assert archive.get_session(nothing).status == "finished"
        assert archive.get_session(nothing).budget == 0
    with Archive.open(archive_path) as archive:  # the fine-tune's process died
        assert archive.recovered_candidates == [crashed]
        assert archive.get_session(session).status == "stopped"
        assert archive.get_session(nothing).status == "finished"
        again = archive.begin_candidate(session, make_spec("finetune", last, seed=2))
        archive.finish_candidate(again, "ok", val_loss=0.5)
        assert archive.get_session(session).status == "finished"


def test_a_version_1_archive_is_migrated_in_place(archive_path: Path):
    write_version_1(archive_path)
    with Archive.open(archive_path) as archive:
        statuses = {s.session_id: s.status for s in archive.list_sessions()}
        assert statuses == {
            "s-full": "finished",
            "s-open": "running",
            "s-refused": "running",
            "s-crash": "stopped",
        }
        assert archive.recovered_candidates == ["c-6"]
        assert archive.get_candidate("c-6").error == INTERRUPTED_ERROR
        versions = archive.query("SELECT version FROM schema_version ORDER BY version").rows
        assert versions == [[1], [2], [SCHEMA_VERSION]] and SCHEMA_VERSION == 3
        # and it takes new work like any archive
        more = archive.begin_candidate("s-open", make_spec(seed=5))
        archive.finish_candidate(more, "ok", val_loss=0.1)
        assert archive.best_candidate("s-open").candidate_id == more
    with Archive.open(archive_path) as archive:  # migrated once
        assert archive.query("SELECT count(*) FROM schema_version").rows == [[3]]


def test_a_newer_archive_is_refused(archive_path: Path):
    write_version_1(archive_path, version=SCHEMA_VERSION + 1)
    with pytest.raises(ArchiveError) as raised:
        Archive.open(archive_path)
    message = str(raised.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message and str(archive_path) in message
    assert f"reads version {SCHEMA_VERSION}" in message
    assert "upgrade LEADS" in message and "leads-server --archive" in message
    with duckdb.connect(str(archive_path)) as con:  # untouched, and the file was released
        assert con.execute(
            "SELECT status FROM sessions WHERE session_id = 's-full'"
        ).fetchone() == ("running",)


def test_an_archive_too_old_to_migrate_is_refused(archive_path: Path):
    write_version_1(archive_path, version=0)
    with pytest.raises(ArchiveError) as raised:
        Archive.open(archive_path)
    message = str(raised.value)
    assert "schema version 0" in message and f"needs version {SCHEMA_VERSION}" in message
    assert f"mv {archive_path} {archive_path}.v0" in message
    with duckdb.connect(str(archive_path)) as con:
        assert con.execute("SELECT max(version) FROM schema_version").fetchone() == (0,)


def test_tables_without_a_version_are_refused(archive_path: Path):
    archive_path.parent.mkdir(parents=True)
    with duckdb.connect(str(archive_path)) as con:
        con.execute("CREATE TABLE candidates (candidate_id VARCHAR)")
    with pytest.raises(ArchiveError, match="no schema version") as raised:
        Archive.open(archive_path)
    assert str(archive_path) in str(raised.value)
