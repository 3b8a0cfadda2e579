"""The archive: every session, candidate model, training epoch, agent step and evaluation of a
LEADS project, in one DuckDB file (by default ``$LEADS_HOME/archive.duckdb``).

Design (ideas borrowed from Optuna's RDB storage):

* **Queryable.** Plain tables (``sessions``, ``candidates``, ``epochs``, ``steps``,
  ``evaluations``, ``schema_version``) that anyone can read with SQL, through
  :meth:`Archive.query`, :meth:`Archive.export` or DuckDB itself once the archive is closed.
* **Append-only results.** A candidate is inserted as ``pending`` when training starts
  (:meth:`Archive.begin_candidate`), its epochs are appended as they come
  (:meth:`Archive.record_epoch`), and it is completed exactly once
  (:meth:`Archive.finish_candidate`). No method updates or deletes a finished result; finishing
  twice, or appending epochs to a finished candidate, raises :class:`ArchiveError`. Sessions are
  metadata: their ``status`` (running|stopped|finished) may change.
* **Survives a crash.** Every write is one transaction, committed to DuckDB's write-ahead log
  before the method returns, so a process killed mid-training loses at most the candidate in
  flight. That candidate stays ``pending`` in the file; the next :meth:`Archive.open` marks every
  ``pending`` candidate ``failed`` with the error :data:`INTERRUPTED_ERROR` (the one status change
  besides pending -> final; it is safe because only one process can hold the file, see below).
  The ids of the candidates so recovered are in :attr:`Archive.recovered_candidates`.

Concurrency. DuckDB lets one process open a database file for writing. :meth:`Archive.open` on a
file held by another process raises :class:`ArchiveError` naming the path and the holder.
Within a process, one :class:`Archive` holds one DuckDB connection; every write and read goes
through it under a :class:`threading.RLock`, so the server may call from several threads. Opening
the same file a second time in the same process (while the first :class:`Archive` is open) raises
:class:`ArchiveError` as well: the crash recovery would otherwise fail the first one's candidates
that are still training. Share the open :class:`Archive` instead.

Read-only SQL (:meth:`Archive.query`). DuckDB 2.0 refuses a second connection to the same file
in one process with a different configuration (``read_only=True`` or
``enable_external_access=false``: "Can't open a connection to same database file with a different
configuration"), refuses ATTACHing it from another in-memory database ("Unique file handle
conflict"), and has no ``statement_timeout`` setting. So the query runs on a cursor of the writer's
own database instance, and read-only is enforced in layers:

1. DuckDB's parser (``extract_statements``) must find exactly one statement of type SELECT (which
   covers ``WITH``, ``FROM``, ``VALUES``, ``DESCRIBE``, ``SHOW`` and ``SUMMARIZE``), or an
   ``EXPLAIN`` of one; anything else (INSERT, UPDATE, DELETE, DROP, CREATE, ALTER, COPY, ATTACH,
   DETACH, INSTALL, LOAD, PRAGMA, SET, CALL, EXPORT, IMPORT, CHECKPOINT, VACUUM, ...) is refused.
2. It runs inside ``BEGIN TRANSACTION READ ONLY`` (rolled back afterwards), so even a statement
   that slipped through could not write.
3. File and network access is off for the whole database instance: ``enable_external_access`` is
   instance-wide in DuckDB (setting it on a cursor turns it off for the writer too) and cannot be
   turned back on, so :meth:`Archive.open` turns it off once, after allowing a single private
   staging folder (``allowed_directories``), and then sets ``lock_configuration=true`` so no SQL
   can change any setting. ``read_csv('/etc/passwd')``, ``read_text``, ``glob``, ``read_parquet``
   of a URL, ``INSTALL``/``LOAD`` of extensions and ``ATTACH`` all fail. The archive file itself
   is unaffected. :meth:`Archive.export` COPYs into that staging folder (a fresh, private
   ``leads-archive-export-<uuid>`` under the system temporary folder, the one place DuckDB may
   read or write files; it exists only while an export runs) and then moves the files to the
   requested folder.
4. At most ``max_rows`` rows are fetched (the result streams, so a huge result costs nothing),
   and a watchdog thread calls ``cursor.interrupt()`` once ``timeout_s`` has passed (DuckDB 2.0
   has no ``statement_timeout`` setting).

The query cursor can see the ``weights`` column (DuckDB has no per-connection permissions and
views cannot hide a table in the same instance); BLOB values in results are replaced by a
``"<N bytes>"`` placeholder, but ``hex(weights)`` would still return them as text, bounded only by
``max_rows``.

Timestamps are stored as UTC (``TIMESTAMP`` without time zone) and returned as ISO 8601 strings.
Referential integrity (candidate -> session, parent -> same-session candidate, epoch ->
pending candidate, evaluation -> candidate) is checked by the API, with clear errors, rather than
by FOREIGN KEY constraints (DuckDB's foreign keys are limited, and the rules here are richer).
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

SCHEMA_VERSION = 1

OPERATIONS = ("select", "refine", "modify", "simplify", "baseline", "finetune")
FINAL_STATUSES = ("ok", "unstable", "failed", "cancelled")
CANDIDATE_STATUSES = ("pending", *FINAL_STATUSES, "refused")
SESSION_STATUSES = ("running", "stopped", "finished")
INTERRUPTED_ERROR = "interrupted: the process stopped before training finished"
TABLES = ("schema_version", "sessions", "candidates", "epochs", "steps", "evaluations")
EXPORT_FORMATS = ("parquet", "csv")

_QUERY_REFUSAL = (
    "query_archive accepts one read-only SELECT statement "
    "(SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE or EXPLAIN of a SELECT)"
)
_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN(\s+ANALY[SZ]E)?\s+", re.IGNORECASE)


def _in_list(values: Sequence[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


_SCHEMA = f"""
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


class ArchiveError(RuntimeError):
    """A refused or failed archive operation (unknown id, append-only violation, locked file,
    refused query, ...)."""


def default_archive_path() -> Path:
    """``$LEADS_HOME/archive.duckdb``, with ``LEADS_HOME`` defaulting to ``~/.leads``."""
    home = os.environ.get("LEADS_HOME") or "~/.leads"
    return Path(home).expanduser() / "archive.duckdb"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _finite_or_none(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return _finite_or_none(value.tolist())
    if isinstance(value, (Path, dt.date, dt.datetime, decimal.Decimal, uuid.UUID)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dump_json(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(_finite_or_none(value), default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ArchiveError(f"cannot store as JSON: {exc}") from exc


def _load_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _json_friendly(value: Any) -> Any:
    """A query result value as something :func:`json.dumps` accepts."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, Mapping):
        return {str(key): _json_friendly(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_friendly(item) for item in value]
    return str(value)


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _check_choice(kind: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ArchiveError(f"unknown {kind} {value!r}; expected one of {', '.join(choices)}")


@contextmanager
def _interrupt_after(cursor: duckdb.DuckDBPyConnection, timeout_s: float) -> Iterator[None]:
    """Interrupt the cursor's running query once ``timeout_s`` has passed, and keep interrupting
    every 50 ms until the body ends (an interrupt that lands between two statements is lost)."""
    done = threading.Event()

    def watch() -> None:
        if done.wait(timeout_s):
            return
        while not done.is_set():
            cursor.interrupt()
            done.wait(0.05)

    watchdog = threading.Thread(target=watch, name="archive-query-timeout", daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        done.set()
        watchdog.join()


class Archive:
    """One LEADS project's archive file. Create with :meth:`Archive.open`; use as a context
    manager or call :meth:`close`."""

    def __init__(self, path: Path, connection: duckdb.DuckDBPyConnection, staging: Path) -> None:
        """Internal: use :meth:`Archive.open`."""
        self.path = path
        self._con: duckdb.DuckDBPyConnection | None = connection
        self._staging = staging
        self._lock = threading.RLock()
        self.recovered_candidates: list[str] = []

    # ------------------------------------------------------------------ open / close

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Archive:
        """Open (creating folders, file and tables if missing) the archive at ``path``, and mark
        candidates left ``pending`` by a dead process ``failed`` (see the module docstring).

        Raises :class:`ArchiveError` if another process holds the file, if this process already
        has it open, or if the file is not a LEADS archive of a supported schema version."""
        path = Path(path).expanduser().resolve()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArchiveError(f"cannot create the folder of the archive {path}: {exc}") from exc
        try:
            connection = duckdb.connect(str(path))
        except duckdb.Error as exc:
            if "lock" in str(exc).lower():
                raise ArchiveError(
                    f"the archive {path} is in use by another process (DuckDB allows one writer "
                    f"per file); stop it or use another LEADS_HOME. DuckDB said: {exc}"
                ) from exc
            raise ArchiveError(f"cannot open the archive {path}: {exc}") from exc
        # The one folder DuckDB may write to once external access is off; created only while an
        # export runs, so a killed process leaves nothing behind.
        staging = Path(tempfile.gettempdir()).resolve() / f"leads-archive-export-{uuid.uuid4().hex}"
        try:
            external = connection.execute(
                "SELECT current_setting('enable_external_access')"
            ).fetchone()
            if external is None or not external[0]:
                raise ArchiveError(
                    f"the archive {path} is already open in this process; share that Archive "
                    "object instead of opening the file twice"
                )
            connection.execute("SET allowed_directories = ?", [[str(staging) + os.sep]])
            connection.execute("SET enable_external_access = false")
            connection.execute("SET lock_configuration = true")
            archive = cls(path, connection, staging)
            archive._create_schema()
            archive._recover_interrupted()
        except BaseException:
            connection.close()
            raise
        return archive

    def close(self) -> None:
        """Close the connection (idempotent). Everything written is already committed."""
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise ArchiveError(f"the archive {self.path} is closed")
        return self._con

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Run the body as one transaction under the lock; DuckDB errors become ArchiveError."""
        with self._lock:
            con = self._connection()
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException as exc:
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:
                    pass
                if isinstance(exc, duckdb.Error):
                    raise ArchiveError(f"archive write failed: {exc}") from exc
                raise
            try:
                con.execute("COMMIT")
            except duckdb.Error as exc:
                raise ArchiveError(f"archive commit failed: {exc}") from exc

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            con = self._connection()
            try:
                cursor = con.execute(sql, list(params))
                columns = [column[0] for column in cursor.description]
                return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
            except duckdb.Error as exc:
                raise ArchiveError(f"archive read failed: {exc}") from exc

    def _create_schema(self) -> None:
        with self._transaction() as con:
            con.execute(_SCHEMA)
            found = con.execute("SELECT max(version) FROM schema_version").fetchone()
            version = found[0] if found else None
            if version is None:
                con.execute("INSERT INTO schema_version VALUES (?, ?)", [SCHEMA_VERSION, _utcnow()])
            elif version > SCHEMA_VERSION:
                raise ArchiveError(
                    f"the archive {self.path} has schema version {version}; this LEADS reads "
                    f"up to {SCHEMA_VERSION}: upgrade LEADS"
                )

    def _recover_interrupted(self) -> None:
        with self._transaction() as con:
            rows = con.execute(
                "SELECT candidate_id FROM candidates WHERE status = 'pending' ORDER BY rowid"
            ).fetchall()
            con.execute(
                "UPDATE candidates SET status = 'failed', error = ? WHERE status = 'pending'",
                [INTERRUPTED_ERROR],
            )
        self.recovered_candidates = [row[0] for row in rows]

    # ------------------------------------------------------------------ sessions

    def create_session(
        self,
        dataset: str,
        dataset_path: str | os.PathLike[str] | None,
        budget: int | None,
        anonymise: bool,
        seed: int | None,
        config: Mapping[str, Any] | None,
    ) -> str:
        """Record a new search session (status ``running``) and return its id ``s-<12 hex>``."""
        session_id = _new_id("s")
        with self._transaction() as con:
            con.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running')",
                [
                    session_id,
                    _utcnow(),
                    dataset,
                    None if dataset_path is None else str(dataset_path),
                    _opt_int(budget),
                    bool(anonymise),
                    _opt_int(seed),
                    _dump_json(config),
                ],
            )
        return session_id

    def get_session(self, session_id: str) -> dict[str, Any]:
        """The session's row (config decoded). Raises :class:`ArchiveError` if unknown."""
        rows = self._rows("SELECT * FROM sessions WHERE session_id = ?", [session_id])
        if not rows:
            raise ArchiveError(f"unknown session {session_id!r}")
        return self._session_dict(rows[0])

    def list_sessions(self) -> list[dict[str, Any]]:
        """All sessions, oldest first."""
        rows = self._rows("SELECT * FROM sessions ORDER BY created_at, rowid")
        return [self._session_dict(row) for row in rows]

    def set_session_status(self, session_id: str, status: str) -> None:
        """Change a session's status (running|stopped|finished); sessions are metadata."""
        _check_choice("session status", status, SESSION_STATUSES)
        with self._transaction() as con:
            self._require_session(con, session_id)
            con.execute("UPDATE sessions SET status = ? WHERE session_id = ?", [status, session_id])

    @staticmethod
    def _session_dict(row: dict[str, Any]) -> dict[str, Any]:
        row["config"] = _load_json(row["config"])
        row["created_at"] = row["created_at"].isoformat()
        return row

    @staticmethod
    def _require_session(con: duckdb.DuckDBPyConnection, session_id: str) -> None:
        found = con.execute("SELECT 1 FROM sessions WHERE session_id = ?", [session_id]).fetchone()
        if found is None:
            raise ArchiveError(f"unknown session {session_id!r}")

    # ------------------------------------------------------------------ candidates

    def begin_candidate(
        self,
        session_id: str,
        spec: Mapping[str, Any],
        operation: str,
        parent_id: str | None,
        reaction: str | None,
        diffusion: str | None,
        code: str | None = None,
    ) -> str:
        """Record a candidate whose training starts now (status ``pending``); returns its id
        ``c-<12 hex>``. The parent, if given, must be a candidate of the same session."""
        return self._insert_candidate(
            session_id, spec, operation, parent_id, reaction, diffusion, code, "pending", None
        )

    def record_refusal(
        self,
        session_id: str,
        spec: Mapping[str, Any],
        operation: str,
        parent_id: str | None,
        reaction: str | None,
        diffusion: str | None,
        code: str | None,
        error: str,
    ) -> str:
        """Record a candidate that never trained (e.g. a refused code edit) as ``refused``."""
        return self._insert_candidate(
            session_id, spec, operation, parent_id, reaction, diffusion, code, "refused", error
        )

    def _insert_candidate(
        self,
        session_id: str,
        spec: Mapping[str, Any],
        operation: str,
        parent_id: str | None,
        reaction: str | None,
        diffusion: str | None,
        code: str | None,
        status: str,
        error: str | None,
    ) -> str:
        _check_choice("operation", operation, OPERATIONS)
        candidate_id = _new_id("c")
        code_hash = None if code is None else hashlib.sha256(code.encode()).hexdigest()
        with self._transaction() as con:
            self._require_session(con, session_id)
            if parent_id is not None:
                parent = con.execute(
                    "SELECT session_id FROM candidates WHERE candidate_id = ?", [parent_id]
                ).fetchone()
                if parent is None:
                    raise ArchiveError(f"unknown parent candidate {parent_id!r}")
                if parent[0] != session_id:
                    raise ArchiveError(
                        f"parent candidate {parent_id!r} belongs to session {parent[0]!r}, "
                        f"not {session_id!r}"
                    )
            con.execute(
                "INSERT INTO candidates (candidate_id, session_id, created_at, operation, "
                "parent_id, reaction, diffusion, spec, code, code_hash, status, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    candidate_id,
                    session_id,
                    _utcnow(),
                    operation,
                    parent_id,
                    reaction,
                    diffusion,
                    _dump_json(spec),
                    code,
                    code_hash,
                    status,
                    error,
                ],
            )
        return candidate_id

    @staticmethod
    def _candidate_status(con: duckdb.DuckDBPyConnection, candidate_id: str) -> str:
        found = con.execute(
            "SELECT status FROM candidates WHERE candidate_id = ?", [candidate_id]
        ).fetchone()
        if found is None:
            raise ArchiveError(f"unknown candidate {candidate_id!r}")
        return found[0]

    def record_epoch(
        self,
        candidate_id: str,
        epoch: int,
        train_loss: float | None,
        val_loss: float | None,
        wall_seconds: float | None,
    ) -> None:
        """Append one epoch of a ``pending`` candidate (each epoch number once)."""
        with self._transaction() as con:
            status = self._candidate_status(con, candidate_id)
            if status != "pending":
                raise ArchiveError(
                    f"candidate {candidate_id!r} is {status}, not pending: its epochs are final"
                )
            exists = con.execute(
                "SELECT 1 FROM epochs WHERE candidate_id = ? AND epoch = ?",
                [candidate_id, int(epoch)],
            ).fetchone()
            if exists is not None:
                raise ArchiveError(f"epoch {epoch} of candidate {candidate_id!r} is recorded")
            con.execute(
                "INSERT INTO epochs VALUES (?, ?, ?, ?, ?)",
                [
                    candidate_id,
                    int(epoch),
                    _opt_float(train_loss),
                    _opt_float(val_loss),
                    _opt_float(wall_seconds),
                ],
            )

    def finish_candidate(
        self,
        candidate_id: str,
        status: str,
        train_loss: float | None = None,
        val_loss: float | None = None,
        best_epoch: int | None = None,
        parameter_count: int | None = None,
        wall_seconds: float | None = None,
        metrics: Mapping[str, Any] | None = None,
        diagnosis: str | None = None,
        error: str | None = None,
        weights: bytes | None = None,
    ) -> None:
        """Complete a ``pending`` candidate, exactly once, with its final status
        (ok|unstable|failed|cancelled) and results. Raises :class:`ArchiveError` if the candidate
        is unknown or already finished."""
        _check_choice("final status", status, FINAL_STATUSES)
        with self._transaction() as con:
            current = self._candidate_status(con, candidate_id)
            if current != "pending":
                raise ArchiveError(
                    f"candidate {candidate_id!r} is already finished ({current}); "
                    "archived results are append-only"
                )
            con.execute(
                "UPDATE candidates SET status = ?, train_loss = ?, val_loss = ?, best_epoch = ?, "
                "parameter_count = ?, wall_seconds = ?, metrics = ?, diagnosis = ?, error = ?, "
                "weights = ? WHERE candidate_id = ? AND status = 'pending'",
                [
                    status,
                    _opt_float(train_loss),
                    _opt_float(val_loss),
                    _opt_int(best_epoch),
                    _opt_int(parameter_count),
                    _opt_float(wall_seconds),
                    _dump_json(metrics),
                    diagnosis,
                    error,
                    None if weights is None else bytes(weights),
                    candidate_id,
                ],
            )

    def get_candidate(self, candidate_id: str) -> dict[str, Any]:
        """The candidate's row without weights (``has_weights`` tells whether there are any),
        with spec/metrics decoded and its ``epochs`` and ``evaluations`` lists."""
        with self._lock:
            rows = self._rows(
                "SELECT * EXCLUDE (weights), weights IS NOT NULL AS has_weights "
                "FROM candidates WHERE candidate_id = ?",
                [candidate_id],
            )
            if not rows:
                raise ArchiveError(f"unknown candidate {candidate_id!r}")
            candidate = self._candidate_dict(rows[0])
            candidate["epochs"] = self._rows(
                "SELECT epoch, train_loss, val_loss, wall_seconds FROM epochs "
                "WHERE candidate_id = ? ORDER BY epoch",
                [candidate_id],
            )
            evaluations = self._rows(
                "SELECT split, mse, at_mae, metrics, created_at FROM evaluations "
                "WHERE candidate_id = ? ORDER BY created_at, rowid",
                [candidate_id],
            )
        for evaluation in evaluations:
            evaluation["metrics"] = _load_json(evaluation["metrics"])
            evaluation["created_at"] = evaluation["created_at"].isoformat()
        candidate["evaluations"] = evaluations
        return candidate

    def get_weights(self, candidate_id: str) -> bytes | None:
        """The candidate's stored weights, or None."""
        rows = self._rows("SELECT weights FROM candidates WHERE candidate_id = ?", [candidate_id])
        if not rows:
            raise ArchiveError(f"unknown candidate {candidate_id!r}")
        weights = rows[0]["weights"]
        return None if weights is None else bytes(weights)

    def list_candidates(
        self,
        session_id: str,
        status: str | None = None,
        order_by: str = "created_at",
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The session's candidates (no weights, no epochs), optionally of one status, ordered by
        creation or by validation loss (lowest first, missing last)."""
        if status is not None:
            _check_choice("candidate status", status, CANDIDATE_STATUSES)
        orders = {"created_at": "created_at, rowid", "val_loss": "val_loss NULLS LAST, rowid"}
        _check_choice("order", order_by, tuple(orders))
        if limit is not None and int(limit) < 0:
            raise ArchiveError(f"limit must be >= 0, got {limit}")
        sql = (
            "SELECT * EXCLUDE (weights), weights IS NOT NULL AS has_weights FROM candidates "
            "WHERE session_id = ? AND (? IS NULL OR status = ?) ORDER BY " + orders[order_by]
        )
        params: list[Any] = [session_id, status, status]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [self._candidate_dict(row) for row in self._rows(sql, params)]

    def best_candidate(self, session_id: str) -> dict[str, Any] | None:
        """The ``ok`` candidate of the session with the lowest (finite) validation loss."""
        rows = self._rows(
            "SELECT candidate_id FROM candidates WHERE session_id = ? AND status = 'ok' "
            "AND val_loss IS NOT NULL AND isfinite(val_loss) ORDER BY val_loss, rowid LIMIT 1",
            [session_id],
        )
        return self.get_candidate(rows[0]["candidate_id"]) if rows else None

    def count_candidates(self, session_id: str, operations: Iterable[str] | None = None) -> int:
        """How many candidates the session has (all statuses), optionally of some operations."""
        chosen = None if operations is None else list(operations)
        for operation in chosen or ():
            _check_choice("operation", operation, OPERATIONS)
        rows = self._rows(
            "SELECT count(*) AS n FROM candidates WHERE session_id = ? "
            "AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], operation))",
            [session_id, chosen, chosen],
        )
        return int(rows[0]["n"])

    @staticmethod
    def _candidate_dict(row: dict[str, Any]) -> dict[str, Any]:
        row["spec"] = _load_json(row["spec"])
        row["metrics"] = _load_json(row["metrics"])
        row["created_at"] = row["created_at"].isoformat()
        return row

    # ------------------------------------------------------------------ steps, evaluations

    def record_step(
        self,
        session_id: str,
        thought: str | None,
        action: Mapping[str, Any] | None,
        observation: str | None,
    ) -> int:
        """Append the agent's next step to the session; returns its number (1, 2, ...)."""
        with self._transaction() as con:
            self._require_session(con, session_id)
            found = con.execute(
                "SELECT coalesce(max(step), 0) + 1 FROM steps WHERE session_id = ?", [session_id]
            ).fetchone()
            step = int(found[0]) if found else 1
            con.execute(
                "INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?)",
                [session_id, step, thought, _dump_json(action), observation, _utcnow()],
            )
        return step

    def list_steps(self, session_id: str) -> list[dict[str, Any]]:
        """The session's steps in order, action decoded."""
        rows = self._rows("SELECT * FROM steps WHERE session_id = ? ORDER BY step", [session_id])
        for row in rows:
            row["action"] = _load_json(row["action"])
            row["created_at"] = row["created_at"].isoformat()
        return rows

    def record_evaluation(
        self,
        candidate_id: str,
        split: str,
        mse: float | None,
        at_mae: float | None,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        """Append an evaluation of a candidate on a data split (several per candidate allowed)."""
        with self._transaction() as con:
            self._candidate_status(con, candidate_id)
            con.execute(
                "INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?)",
                [
                    candidate_id,
                    split,
                    _opt_float(mse),
                    _opt_float(at_mae),
                    _dump_json(metrics),
                    _utcnow(),
                ],
            )

    # ------------------------------------------------------------------ export, query

    def export(self, folder: str | os.PathLike[str], format: str = "parquet") -> list[Path]:
        """Write one file per table (``<table>.parquet`` or ``<table>.csv``, weights excluded,
        one consistent snapshot) into ``folder``, replacing files of those names; returns the
        paths."""
        _check_choice("export format", format, EXPORT_FORMATS)
        options = "FORMAT parquet" if format == "parquet" else "FORMAT csv, HEADER true"
        folder = Path(folder).expanduser().resolve()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArchiveError(f"cannot create the export folder {folder}: {exc}") from exc
        written: list[Path] = []
        with self._lock:
            self._connection()
            work = self._staging
            try:
                work.mkdir(mode=0o700)
            except OSError as exc:
                raise ArchiveError(
                    f"cannot create the export staging folder {work}: {exc}"
                ) from exc
            try:
                with self._transaction() as con:
                    for table in TABLES:
                        columns = "* EXCLUDE (weights)" if table == "candidates" else "*"
                        target = work / f"{table}.{format}"
                        con.execute(
                            f"COPY (SELECT {columns} FROM {table} ORDER BY rowid) "
                            f"TO {_sql_string(str(target))} ({options})"
                        )
                for table in TABLES:
                    destination = folder / f"{table}.{format}"
                    shutil.move(str(work / f"{table}.{format}"), str(destination))
                    written.append(destination)
            except OSError as exc:
                raise ArchiveError(f"cannot write the export to {folder}: {exc}") from exc
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return written

    def query(self, sql: str, max_rows: int = 1000, timeout_s: float = 5.0) -> dict[str, Any]:
        """Run one read-only SELECT for the agent or the user (see the module docstring for how
        read-only, file/network isolation and the limits are enforced).

        Returns ``{"columns": [...], "rows": [[...]], "truncated": bool, "row_count": int}`` with
        JSON-friendly values (timestamps as ISO strings, BLOBs as ``"<N bytes>"``);
        ``row_count`` is the number of rows returned, ``truncated`` whether more existed."""
        if int(max_rows) < 0:
            raise ArchiveError(f"max_rows must be >= 0, got {max_rows}")
        if not timeout_s > 0:
            raise ArchiveError(f"timeout_s must be > 0, got {timeout_s}")
        with self._lock:
            cursor = self._connection().cursor()
        try:
            self._check_read_only(cursor, sql)
            return self._run_query(cursor, sql, int(max_rows), float(timeout_s))
        finally:
            cursor.close()

    @staticmethod
    def _check_read_only(cursor: duckdb.DuckDBPyConnection, sql: str) -> None:
        def refuse(reason: str) -> ArchiveError:
            return ArchiveError(f"{_QUERY_REFUSAL}: {reason}")

        def statements_of(text: str) -> list[Any]:
            try:
                return list(cursor.extract_statements(text))
            except duckdb.Error as exc:
                raise refuse(f"it does not parse ({exc})") from exc

        statements = statements_of(sql)
        if len(statements) != 1:
            raise refuse(f"found {len(statements)} statements")
        kind = statements[0].type
        if kind == duckdb.StatementType.EXPLAIN:
            inner = _EXPLAIN_PREFIX.sub("", statements[0].query, count=1)
            inner_statements = statements_of(inner) if inner != statements[0].query else []
            if len(inner_statements) != 1 or inner_statements[0].type != (
                duckdb.StatementType.SELECT
            ):
                raise refuse("EXPLAIN is allowed only directly before a SELECT")
        elif kind != duckdb.StatementType.SELECT:
            raise refuse(f"{kind.name} statements are not allowed")

    @staticmethod
    def _run_query(
        cursor: duckdb.DuckDBPyConnection, sql: str, max_rows: int, timeout_s: float
    ) -> dict[str, Any]:
        try:
            cursor.execute("BEGIN TRANSACTION READ ONLY")
            with _interrupt_after(cursor, timeout_s):
                cursor.execute(sql)
                columns = [column[0] for column in cursor.description or ()]
                rows = cursor.fetchmany(max_rows + 1)
        except duckdb.InterruptException as exc:
            raise ArchiveError(
                f"query stopped after {timeout_s:g} s (the query_archive time limit)"
            ) from exc
        except duckdb.PermissionException as exc:
            raise ArchiveError(
                f"file and network access is disabled in query_archive: {exc}"
            ) from exc
        except duckdb.Error as exc:
            raise ArchiveError(f"query failed: {exc}") from exc
        finally:
            try:
                cursor.execute("ROLLBACK")
            except duckdb.Error:
                pass
        truncated = len(rows) > max_rows
        rows = rows[:max_rows]
        return {
            "columns": columns,
            "rows": [[_json_friendly(value) for value in row] for row in rows],
            "truncated": truncated,
            "row_count": len(rows),
        }
