"""The archive store: every session, candidate model, training epoch, agent step and evaluation
of a LEADS project, in one DuckDB file (by default ``$LEADS_HOME/archive.duckdb``).

Design (ideas borrowed from Optuna's RDB storage):

* **Queryable.** Plain tables (:mod:`leads_server.archive.schema`) that anyone can read with SQL,
  through :meth:`Archive.query` (:mod:`leads_server.archive.query_guard` and
  :mod:`leads_server.archive.query_run`) or DuckDB itself once the archive is closed.
* **Append-only results.** A candidate is inserted as ``pending`` when training starts
  (:meth:`Archive.begin_candidate`), its epochs are appended as they come
  (:meth:`Archive.record_epoch`), and it is completed exactly once
  (:meth:`Archive.finish_candidate`). No method updates or deletes a finished result; finishing
  twice, or appending epochs to a finished candidate, raises :class:`ArchiveError`. A session's
  ``status`` is kept true by the store itself (see :mod:`leads_server.archive.schema`).
* **Survives a crash.** Every write is one transaction, committed to DuckDB's write-ahead log
  before the method returns, so a process killed mid-training loses at most the candidate in
  flight. A finished candidate and an evaluation are also checkpointed into the database file
  itself (:meth:`Archive._checkpoint`), so the crash log only ever holds work in flight and a
  lost or torn crash log cannot take a finished result with it. The candidate in flight stays
  ``pending`` in the file; the next :meth:`Archive.open` marks every
  ``pending`` candidate ``failed`` with the error :data:`INTERRUPTED_ERROR` and its session
  ``stopped`` (the one status change besides pending -> final; it is safe because only one
  process can hold the file, see below). The ids of the candidates so recovered are in
  :attr:`Archive.recovered_candidates`.
* **Never overwrites a damaged file.** A file DuckDB cannot read is refused on open, left as it
  is, with a message that says how to recover (:mod:`leads_server.archive.recovery`).

Concurrency. DuckDB lets one process open a database file for writing. :meth:`Archive.open` on a
file held by another process raises :class:`ArchiveError` naming the path and the holder.
Within a process, one :class:`Archive` holds one DuckDB connection; every write and read goes
through it under a :class:`threading.RLock`, so the server may call from several threads. Opening
the same file a second time in the same process (while the first :class:`Archive` is open) raises
:class:`ArchiveError` as well: the crash recovery would otherwise fail the first one's candidates
that are still training. Share the open :class:`Archive` instead.

Timestamps are stored as UTC (``TIMESTAMP`` without time zone) and returned as ISO 8601 strings.
Referential integrity (candidate -> session, parent -> same-session candidate, epoch ->
pending candidate, evaluation -> candidate) is checked by the API, with clear errors, rather than
by FOREIGN KEY constraints (DuckDB's foreign keys are limited, and the rules here are richer).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from leads_engine.dataset import leads_home
from leads_engine.spec import OPERATIONS, CandidateSpec

from .errors import ArchiveError
from .query_guard import check_read_only
from .query_run import QueryLimits, external_access_enabled, lock_down, run_query
from .query_scope import ALL_OPEN_SESSIONS, QueryScope, hidden_sessions_notice
from .recovery import damaged_archive
from .rows import CandidateDetail, CandidateRow, EpochRow, EvaluationRow, QueryRows, SessionRow
from .schema import (
    CANDIDATE_STATUSES,
    FINAL_STATUSES,
    INTERRUPTED_ERROR,
    prepare_schema,
    refresh_session_status,
    stop_interrupted_sessions,
    utcnow,
)
from .values import dump_json, opt_float, opt_int


def default_archive_path() -> Path:
    """``leads_home() / "archive.duckdb"`` (``$LEADS_HOME``, default ``~/.leads``)."""
    return leads_home() / "archive.duckdb"


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def new_session_id() -> str:
    """A fresh session id ``s-<12 hex>`` (to write a session's truth before its row)."""
    return _new_id("s")


def _check_choice(kind: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ArchiveError(f"unknown {kind} {value!r}; expected one of {', '.join(choices)}")


_CANDIDATE_COLUMNS = "* EXCLUDE (weights), weights IS NOT NULL AS has_weights"

#: No extension is installed or loaded behind the archive's back (a file of another format, such
#: as SQLite, would otherwise make DuckDB download a reader for it).
_CONNECT_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


class Archive:
    """One LEADS project's archive file. Create with :meth:`Archive.open`; use as a context
    manager or call :meth:`close`."""

    def __init__(self, path: Path, connection: duckdb.DuckDBPyConnection) -> None:
        """Internal: use :meth:`Archive.open`."""
        self.path = path
        self._con: duckdb.DuckDBPyConnection | None = connection
        self._lock = threading.RLock()
        self.recovered_candidates: list[str] = []

    # ------------------------------------------------------------------ open / close

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Archive:
        """Open (creating folders, file and tables if missing, migrating an older schema) the
        archive at ``path``, and mark candidates left ``pending`` by a dead process ``failed``
        (see the module docstring).

        Raises :class:`ArchiveError` if another process holds the file, if this process already
        has it open, if the file is damaged or not a DuckDB file (:mod:`.recovery`: it is left
        as it is, and the message says how to recover), or if it is not a LEADS archive of a
        supported schema version."""
        path = Path(path).expanduser().resolve()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArchiveError(f"cannot create the folder of the archive {path}: {exc}") from exc
        try:
            connection = duckdb.connect(str(path), config=_CONNECT_CONFIG)
        except duckdb.Error as exc:
            if "lock" in str(exc).lower():
                raise ArchiveError(
                    f"the archive {path} is in use by another process (DuckDB allows one writer "
                    f"per file); stop it or use another LEADS_HOME. DuckDB said: {exc}"
                ) from exc
            raise damaged_archive(path, exc) from exc
        try:
            if not external_access_enabled(connection):
                raise ArchiveError(
                    f"the archive {path} is already open in this process; share that Archive "
                    "object instead of opening the file twice"
                )
            lock_down(connection)
            archive = cls(path, connection)
            try:
                with archive._transaction() as con:
                    prepare_schema(con, path)
                archive._recover_interrupted()
            except ArchiveError as exc:
                if isinstance(exc.__cause__, duckdb.Error):
                    raise damaged_archive(path, exc.__cause__) from exc
                raise
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

    def _checkpoint(self) -> None:
        """Move what the crash log holds into the database file (after a result is final).

        The result is already committed when this runs, so a checkpoint that cannot run loses
        nothing: the crash log still holds it and the next open replays it. While another
        thread's query holds a transaction DuckDB declines to checkpoint; the next finished
        result's checkpoint then takes this one along, so that case is expected and silent.
        Any other failure (a full disk, say) is reported as a warning, not as a failed write."""
        with self._lock:
            try:
                self._connection().execute("CHECKPOINT")
            except duckdb.TransactionException:
                return  # other transactions are active: the next checkpoint takes this one
            except duckdb.Error as exc:
                warnings.warn(
                    f"the archive {self.path} could not be checkpointed ({exc}); the result is "
                    "committed to its crash log and is replayed when the archive next opens",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            con = self._connection()
            try:
                cursor = con.execute(sql, list(params))
                columns = [column[0] for column in cursor.description]
                return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
            except duckdb.Error as exc:
                raise ArchiveError(f"archive read failed: {exc}") from exc

    def _recover_interrupted(self) -> None:
        with self._transaction() as con:
            rows = con.execute(
                "SELECT candidate_id FROM candidates WHERE status = 'pending' ORDER BY rowid"
            ).fetchall()
            stop_interrupted_sessions(con)
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
        session_id: str | None = None,
    ) -> str:
        """Record a new search session and return its id (``session_id``, else a new
        ``s-<12 hex>``); its status is ``running`` (``finished`` at once for a budget of 0)."""
        session_id = session_id or new_session_id()
        with self._transaction() as con:
            con.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running')",
                [
                    session_id,
                    utcnow(),
                    dataset,
                    None if dataset_path is None else str(dataset_path),
                    opt_int(budget),
                    bool(anonymise),
                    opt_int(seed),
                    dump_json(config),
                ],
            )
            refresh_session_status(con, session_id)
        return session_id

    def get_session(self, session_id: str) -> SessionRow:
        """The session's row. Raises :class:`ArchiveError` if unknown."""
        rows = self._rows("SELECT * FROM sessions WHERE session_id = ?", [session_id])
        if not rows:
            raise ArchiveError(f"unknown session {session_id!r}")
        return SessionRow.from_db(rows[0])

    def list_sessions(self) -> list[SessionRow]:
        """All sessions, oldest first."""
        rows = self._rows("SELECT * FROM sessions ORDER BY created_at, rowid")
        return [SessionRow.from_db(row) for row in rows]

    @staticmethod
    def _require_session(con: duckdb.DuckDBPyConnection, session_id: str) -> None:
        found = con.execute("SELECT 1 FROM sessions WHERE session_id = ?", [session_id]).fetchone()
        if found is None:
            raise ArchiveError(f"unknown session {session_id!r}")

    # ------------------------------------------------------------------ candidates

    def begin_candidate(self, session_id: str, spec: CandidateSpec) -> str:
        """Record a candidate whose training starts now (status ``pending``); returns its id
        ``c-<12 hex>``. Operation, parent, reaction, diffusion and edited code (with its hash)
        come from ``spec``; the parent, if any, must be a candidate of the same session."""
        return self._insert_candidate(session_id, spec, "pending", None)

    def record_refusal(self, session_id: str, spec: CandidateSpec, message: str) -> str:
        """Record a candidate that never trained (e.g. a refused code edit) as ``refused``, with
        ``message`` as its error; returns its id."""
        return self._insert_candidate(session_id, spec, "refused", message)

    def _insert_candidate(
        self, session_id: str, spec: CandidateSpec, status: str, error: str | None
    ) -> str:
        _check_choice("operation", spec.operation, OPERATIONS)
        candidate_id = _new_id("c")
        with self._transaction() as con:
            self._require_session(con, session_id)
            if spec.parent_id is not None:
                parent = con.execute(
                    "SELECT session_id FROM candidates WHERE candidate_id = ?", [spec.parent_id]
                ).fetchone()
                if parent is None:
                    raise ArchiveError(f"unknown parent candidate {spec.parent_id!r}")
                if parent[0] != session_id:
                    raise ArchiveError(
                        f"parent candidate {spec.parent_id!r} belongs to session {parent[0]!r}, "
                        f"not {session_id!r}"
                    )
            con.execute(
                "INSERT INTO candidates (candidate_id, session_id, created_at, operation, "
                "parent_id, reaction, diffusion, spec, code, code_hash, status, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    candidate_id,
                    session_id,
                    utcnow(),
                    spec.operation,
                    spec.parent_id,
                    spec.reaction,
                    spec.diffusion,
                    dump_json(spec.model_dump()),
                    spec.diffusion_source,
                    spec.code_hash(),
                    status,
                    error,
                ],
            )
            refresh_session_status(con, session_id)
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
                    opt_float(train_loss),
                    opt_float(val_loss),
                    opt_float(wall_seconds),
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
                    opt_float(train_loss),
                    opt_float(val_loss),
                    opt_int(best_epoch),
                    opt_int(parameter_count),
                    opt_float(wall_seconds),
                    dump_json(metrics),
                    diagnosis,
                    error,
                    None if weights is None else bytes(weights),
                    candidate_id,
                ],
            )
            session = con.execute(
                "SELECT session_id FROM candidates WHERE candidate_id = ?", [candidate_id]
            ).fetchone()
            if session is not None:
                refresh_session_status(con, session[0])
        self._checkpoint()

    def get_candidate(self, candidate_id: str) -> CandidateDetail:
        """The candidate (no weights: ``has_weights`` tells whether there are any), with its
        epochs and evaluations."""
        with self._lock:
            rows = self._rows(
                f"SELECT {_CANDIDATE_COLUMNS} FROM candidates WHERE candidate_id = ?",
                [candidate_id],
            )
            if not rows:
                raise ArchiveError(f"unknown candidate {candidate_id!r}")
            epochs = self._rows(
                "SELECT epoch, train_loss, val_loss, wall_seconds FROM epochs "
                "WHERE candidate_id = ? ORDER BY epoch",
                [candidate_id],
            )
            evaluations = self._rows(
                "SELECT split, mse, at_mae, metrics, created_at FROM evaluations "
                "WHERE candidate_id = ? ORDER BY created_at, rowid",
                [candidate_id],
            )
        return CandidateDetail(
            **CandidateRow.decode(rows[0]),
            epochs=tuple(EpochRow(**row) for row in epochs),
            evaluations=tuple(EvaluationRow.from_db(row) for row in evaluations),
        )

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
    ) -> list[CandidateRow]:
        """The session's candidates (no weights, no epochs), optionally of one status, ordered by
        creation or by validation loss (lowest first, missing last)."""
        if status is not None:
            _check_choice("candidate status", status, CANDIDATE_STATUSES)
        orders = {"created_at": "created_at, rowid", "val_loss": "val_loss NULLS LAST, rowid"}
        _check_choice("order", order_by, tuple(orders))
        if limit is not None and int(limit) < 0:
            raise ArchiveError(f"limit must be >= 0, got {limit}")
        sql = (
            f"SELECT {_CANDIDATE_COLUMNS} FROM candidates "
            "WHERE session_id = ? AND (? IS NULL OR status = ?) ORDER BY " + orders[order_by]
        )
        params: list[Any] = [session_id, status, status]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [CandidateRow.from_db(row) for row in self._rows(sql, params)]

    def best_candidate(self, session_id: str) -> CandidateDetail | None:
        """The ``ok`` candidate of the session with the lowest (finite) validation loss."""
        rows = self._rows(
            "SELECT candidate_id FROM candidates WHERE session_id = ? AND status = 'ok' "
            "AND val_loss IS NOT NULL AND isfinite(val_loss) ORDER BY val_loss, rowid LIMIT 1",
            [session_id],
        )
        return self.get_candidate(rows[0]["candidate_id"]) if rows else None

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
                [session_id, step, thought, dump_json(action), observation, utcnow()],
            )
        return step

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
                    opt_float(mse),
                    opt_float(at_mae),
                    dump_json(metrics),
                    utcnow(),
                ],
            )
        self._checkpoint()

    # ------------------------------------------------------------------ drafts

    def save_draft(self, session_id: str, draft: Mapping[str, Any] | None) -> None:
        """Keep the session's draft (as the session shows it); None forgets it."""
        with self._transaction() as con:
            con.execute("DELETE FROM drafts WHERE session_id = ?", [session_id])
            if draft is not None:
                con.execute(
                    "INSERT INTO drafts VALUES (?, ?, ?)",
                    [session_id, dump_json(draft), utcnow()],
                )

    def load_draft(self, session_id: str) -> dict[str, Any] | None:
        """The session's kept draft, or None."""
        rows = self._rows("SELECT draft FROM drafts WHERE session_id = ?", [session_id])
        if not rows or rows[0]["draft"] is None:
            return None
        value = rows[0]["draft"]
        return json.loads(value) if isinstance(value, str) else dict(value)

    # ------------------------------------------------------------------ query

    def query(
        self,
        sql: str,
        max_rows: int = QueryLimits.max_rows,
        timeout_s: float = QueryLimits.timeout_s,
        max_bytes: int = QueryLimits.max_bytes,
        scope: QueryScope = ALL_OPEN_SESSIONS,
    ) -> QueryRows:
        """Run one read-only SELECT for the agent or the user over the rows of the sessions
        ``scope`` covers (:mod:`leads_server.archive.query_scope`: one session, or every
        non-anonymised one), at most ``max_rows`` rows, ``max_bytes`` bytes of JSON and
        ``timeout_s`` seconds. Two defences keep it read-only, each enough alone: the statement
        check (:mod:`leads_server.archive.query_guard`) and the execution layer
        (:mod:`leads_server.archive.query_run`, which also applies the limits)."""
        limits = QueryLimits(int(max_rows), int(max_bytes), float(timeout_s)).checked()
        if scope.session_id is not None:
            self.get_session(scope.session_id)  # an unknown session is an error, not no rows
        with self._lock:
            cursor = self._connection().cursor()
            hidden = 0
            if scope.session_id is None:
                found = (
                    self._connection()
                    .execute("SELECT count(*) FROM sessions WHERE anonymise")
                    .fetchone()
                )
                hidden = int(found[0]) if found else 0
        try:
            checked = check_read_only(cursor, sql)
            scope.apply(cursor)
            result = run_query(cursor, checked.statement(limits.max_rows), limits)
        finally:
            cursor.close()
        notice = hidden_sessions_notice(hidden)
        if notice is None:
            return result
        joined = "; ".join(part for part in (result.notice, notice) if part)
        return dataclasses.replace(result, notice=joined)
