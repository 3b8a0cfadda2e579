"""The archive's tables, statuses and schema version, and how an existing file is brought to the
version this LEADS writes.

Tables: ``schema_version`` (one row per version the file was created or migrated at),
``sessions``, ``candidates``, ``epochs``, ``steps`` and ``evaluations``. The operations a
candidate may record are :data:`leads_engine.spec.OPERATIONS`, the ones that spend the session's
budget :data:`leads_engine.spec.SEARCH_OPERATIONS` (one list for the engine, the server and the
archive).

Session status (``sessions.status``), kept true by the store after every write that can change
it (new session, new candidate, finished candidate, crash recovery):

* ``running``: the session can still spend budget (fewer budget candidates than ``budget``;
  refused edits spend none), or one of its candidates is ``pending`` (training now);
* ``finished``: its budget is spent and none of its candidates is pending (a later fine-tune
  makes it ``running`` while it trains, then ``finished`` again);
* ``stopped``: a process died while one of its candidates was training; :meth:`Archive.open`
  marked that candidate ``failed`` (:data:`INTERRUPTED_ERROR`). The next candidate of the
  session (a resumed search) makes it ``running`` or ``finished`` again.

Versions: 1 wrote ``status = 'running'`` and never changed it; 2 keeps it as above; 3 (this
one) writes an anonymised session's rows under its aliases and keeps its truth (real names, alias
map, the data set's identity and ground truth) out of the file (:mod:`.truth`). Opening an older
file migrates it in place, one transaction (1 -> 2: statuses recomputed; 2 -> 3: anonymised
sessions sealed, :mod:`.sealing`), each version recorded; a file of a newer version, of an unknown
older version or without a version is refused with an :class:`ArchiveError` that names the file,
the version found and what to do.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb

from leads_engine.spec import OPERATIONS, SEARCH_OPERATIONS

from .errors import ArchiveError

SCHEMA_VERSION = 3

FINAL_STATUSES = ("ok", "unstable", "failed", "cancelled")
CANDIDATE_STATUSES = ("pending", *FINAL_STATUSES, "refused")
SESSION_STATUSES = ("running", "stopped", "finished")
INTERRUPTED_ERROR = "interrupted: the process stopped before training finished"
TABLES = ("schema_version", "sessions", "candidates", "epochs", "steps", "evaluations")


def _in_list(values: Sequence[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


DDL = f"""
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL,
    applied_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMP NOT NULL,
    dataset VARCHAR NOT NULL,
    dataset_path VARCHAR,
    budget INTEGER,
    anonymise BOOLEAN NOT NULL,
    seed INTEGER,
    config JSON,
    status VARCHAR NOT NULL CHECK (status IN ({_in_list(SESSION_STATUSES)}))
);
CREATE TABLE IF NOT EXISTS candidates (
    candidate_id VARCHAR PRIMARY KEY,
    session_id VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    operation VARCHAR NOT NULL CHECK (operation IN ({_in_list(OPERATIONS)})),
    parent_id VARCHAR,
    reaction VARCHAR,
    diffusion VARCHAR,
    spec JSON,
    code TEXT,
    code_hash VARCHAR,
    status VARCHAR NOT NULL CHECK (status IN ({_in_list(CANDIDATE_STATUSES)})),
    train_loss DOUBLE,
    val_loss DOUBLE,
    best_epoch INTEGER,
    parameter_count INTEGER,
    wall_seconds DOUBLE,
    metrics JSON,
    diagnosis TEXT,
    error TEXT,
    weights BLOB
);
CREATE TABLE IF NOT EXISTS epochs (
    candidate_id VARCHAR NOT NULL,
    epoch INTEGER NOT NULL,
    train_loss DOUBLE,
    val_loss DOUBLE,
    wall_seconds DOUBLE,
    PRIMARY KEY (candidate_id, epoch)
);
CREATE TABLE IF NOT EXISTS steps (
    session_id VARCHAR NOT NULL,
    step INTEGER NOT NULL,
    thought TEXT,
    action JSON,
    observation TEXT,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (session_id, step)
);
CREATE TABLE IF NOT EXISTS evaluations (
    candidate_id VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    mse DOUBLE,
    at_mae DOUBLE,
    metrics JSON,
    created_at TIMESTAMP NOT NULL
);
"""

#: The draft candidate of each session (as the session shows it: an anonymised one under its
#: aliases), so that a new server process continues where the last one left off. Created by
#: every version-3 opening (an older version-3 file gets it too).
DRAFTS_DDL = """
CREATE TABLE IF NOT EXISTS drafts (
    session_id VARCHAR PRIMARY KEY,
    draft JSON NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
"""
DDL += DRAFTS_DDL

# The status a session has now, as a function of its row (``sessions``) and its candidates.
_SESSION_STATUS = f"""
CASE
    WHEN EXISTS (SELECT 1 FROM candidates c
                 WHERE c.session_id = sessions.session_id AND c.status = 'pending')
        THEN 'running'
    WHEN (SELECT count(*) FROM candidates c
          WHERE c.session_id = sessions.session_id
            AND c.operation IN ({_in_list(SEARCH_OPERATIONS)})
            AND c.status NOT IN ('refused', 'cancelled'))
         >= coalesce(sessions.budget, 0)
        THEN 'finished'
    ELSE 'running'
END
"""


def utcnow() -> dt.datetime:
    """Now, in UTC without time zone (how the archive stores timestamps)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def refresh_session_status(con: duckdb.DuckDBPyConnection, session_id: str) -> None:
    """Set the session's status from its budget and candidates (inside the caller's
    transaction)."""
    con.execute(
        f"UPDATE sessions SET status = {_SESSION_STATUS} WHERE session_id = ?", [session_id]
    )


def stop_interrupted_sessions(con: duckdb.DuckDBPyConnection) -> None:
    """Mark ``stopped`` the sessions that have a pending candidate (a process died while it
    trained); call before those candidates are failed."""
    con.execute(
        "UPDATE sessions SET status = 'stopped' WHERE session_id IN "
        "(SELECT session_id FROM candidates WHERE status = 'pending')"
    )


def _migrate_1_to_2(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Version 1 left every session ``running``: compute the true statuses."""
    con.execute(f"UPDATE sessions SET status = {_SESSION_STATUS}")


def _migrate_2_to_3(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Version 2 kept anonymised sessions' real names in the file: seal them."""
    from .sealing import seal_anonymised_sessions

    seal_anonymised_sessions(con, path)
    con.execute(DRAFTS_DDL)


#: Migration from each older version to the next one; each runs inside the opening transaction
#: (with the archive's path: sealing writes truth files next to it).
MIGRATIONS: dict[int, Callable[[duckdb.DuckDBPyConnection, Path], None]] = {
    1: _migrate_1_to_2,
    2: _migrate_2_to_3,
}


def found_version(con: duckdb.DuckDBPyConnection, path: Path) -> int | None:
    """The file's schema version, or None for a new file (no tables at all). Refuses a file with
    archive tables but no recorded version, and a DuckDB file holding other tables only."""
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
    ).fetchall()
    tables = {row[0] for row in rows}
    if "schema_version" in tables:
        found = con.execute("SELECT max(version) FROM schema_version").fetchone()
        if found is not None and found[0] is not None:
            return int(found[0])
    elif not tables:
        return None
    elif not tables & set(TABLES):
        raise ArchiveError(
            f"the archive {path} is a DuckDB database of something else (tables: "
            f"{', '.join(sorted(tables)[:8])}), not a LEADS archive; nothing was changed: pass "
            "leads-server --archive another path (or set LEADS_HOME to another folder)"
        )
    raise ArchiveError(
        f"the archive {path} has LEADS tables but no schema version, so it was not written by "
        "LEADS or was damaged; move it aside (or pass leads-server --archive another path) and "
        "a new archive is created"
    )


def prepare_schema(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Create the tables of a new archive, migrate an older one in place, or refuse a file this
    LEADS cannot read (see the module docstring). Runs inside the caller's transaction."""
    version = found_version(con, path)
    if version is None:
        con.execute(DDL)
        con.execute("INSERT INTO schema_version VALUES (?, ?)", [SCHEMA_VERSION, utcnow()])
        return
    if version > SCHEMA_VERSION:
        raise ArchiveError(
            f"the archive {path} has schema version {version}, written by a newer LEADS; this "
            f"LEADS reads version {SCHEMA_VERSION}: upgrade LEADS (pip install -U leads), or pass "
            "leads-server --archive another path (or set LEADS_HOME to another folder)"
        )
    if version < SCHEMA_VERSION and any(
        v not in MIGRATIONS for v in range(version, SCHEMA_VERSION)
    ):
        known = ", ".join(str(v) for v in sorted(MIGRATIONS))
        raise ArchiveError(
            f"the archive {path} has schema version {version}; this LEADS needs version "
            f"{SCHEMA_VERSION} and migrates only from version {known}: open it with the LEADS "
            f"that wrote it, or move it aside (mv {path} {path}.v{version}) and a new archive is "
            "created (or pass leads-server --archive another path)"
        )
    for step in range(version, SCHEMA_VERSION):
        MIGRATIONS[step](con, path)
        con.execute("INSERT INTO schema_version VALUES (?, ?)", [step + 1, utcnow()])
    con.execute(DRAFTS_DDL)  # a version-3 file written before drafts were kept
