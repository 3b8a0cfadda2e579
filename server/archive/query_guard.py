"""The agent's read-only SQL on the archive (the ``query_archive`` tool).

DuckDB 2.0 refuses a second connection to the same file in one process with a different
configuration (``read_only=True`` or ``enable_external_access=false``: "Can't open a connection
to same database file with a different configuration"), refuses ATTACHing it from another
in-memory database ("Unique file handle conflict"), and has no ``statement_timeout`` setting. So
a query runs on a cursor of the writer's own database instance, and read-only is enforced in
layers:

1. DuckDB's parser (``extract_statements``) must find exactly one statement of type SELECT (which
   covers ``WITH``, ``FROM``, ``VALUES``, ``DESCRIBE``, ``SHOW`` and ``SUMMARIZE``), or an
   ``EXPLAIN`` of one; anything else (INSERT, UPDATE, DELETE, DROP, CREATE, ALTER, COPY, ATTACH,
   DETACH, INSTALL, LOAD, PRAGMA, SET, CALL, EXPORT, IMPORT, CHECKPOINT, VACUUM, ...) is refused
   (:func:`check_read_only`).
2. It runs inside ``BEGIN TRANSACTION READ ONLY`` (rolled back afterwards), so even a statement
   that slipped through could not write.
3. File and network access is off for the whole database instance (:func:`lock_down`, called
   once when the archive opens): ``enable_external_access`` is instance-wide in DuckDB (setting
   it on a cursor turns it off for the writer too) and cannot be turned back on, and
   ``lock_configuration=true`` stops any SQL from changing any setting.
   ``read_csv('/etc/passwd')``, ``read_text``, ``glob``, ``read_parquet`` of a URL,
   ``INSTALL``/``LOAD`` of extensions and ``ATTACH`` all fail. The archive file itself is
   unaffected.
4. At most ``max_rows`` rows are fetched (the result streams, so a huge result costs nothing),
   and a watchdog thread calls ``cursor.interrupt()`` once ``timeout_s`` has passed.

The query cursor can see the ``weights`` column (DuckDB has no per-connection permissions and
views cannot hide a table in the same instance); BLOB values in results are replaced by a
``"<N bytes>"`` placeholder, but ``hex(weights)`` would still return them as text, bounded only
by ``max_rows``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import duckdb

from .errors import ArchiveError
from .rows import QueryRows

QUERY_REFUSAL = (
    "query_archive accepts one read-only SELECT statement "
    "(SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE or EXPLAIN of a SELECT)"
)
_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN(\s+ANALY[SZ]E)?\s+", re.IGNORECASE)


def external_access_enabled(connection: duckdb.DuckDBPyConnection) -> bool:
    """Whether the database instance may still read files (False once :func:`lock_down` ran on
    it, which tells that this process already has the file open)."""
    found = connection.execute("SELECT current_setting('enable_external_access')").fetchone()
    return found is not None and bool(found[0])


def lock_down(connection: duckdb.DuckDBPyConnection) -> None:
    """Turn off file and network access for the whole database instance, for good."""
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")


def json_friendly(value: Any) -> Any:
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
        return {str(key): json_friendly(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_friendly(item) for item in value]
    return str(value)


def check_read_only(cursor: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse (:class:`ArchiveError`) anything but one SELECT or one EXPLAIN of a SELECT."""

    def refuse(reason: str) -> ArchiveError:
        return ArchiveError(f"{QUERY_REFUSAL}: {reason}")

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
        if len(inner_statements) != 1 or inner_statements[0].type != (duckdb.StatementType.SELECT):
            raise refuse("EXPLAIN is allowed only directly before a SELECT")
    elif kind != duckdb.StatementType.SELECT:
        raise refuse(f"{kind.name} statements are not allowed")


@contextmanager
def interrupt_after(cursor: duckdb.DuckDBPyConnection, timeout_s: float) -> Iterator[None]:
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


def run_query(
    cursor: duckdb.DuckDBPyConnection, sql: str, max_rows: int, timeout_s: float
) -> QueryRows:
    """Run an already checked statement in a read-only transaction, at most ``max_rows`` rows
    and ``timeout_s`` seconds."""
    try:
        cursor.execute("BEGIN TRANSACTION READ ONLY")
        with interrupt_after(cursor, timeout_s):
            cursor.execute(sql)
            columns = [column[0] for column in cursor.description or ()]
            rows = cursor.fetchmany(max_rows + 1)
    except duckdb.InterruptException as exc:
        raise ArchiveError(
            f"query stopped after {timeout_s:g} s (the query_archive time limit)"
        ) from exc
    except duckdb.PermissionException as exc:
        raise ArchiveError(f"file and network access is disabled in query_archive: {exc}") from exc
    except duckdb.Error as exc:
        raise ArchiveError(f"query failed: {exc}") from exc
    finally:
        try:
            cursor.execute("ROLLBACK")
        except duckdb.Error:
            pass
    truncated = len(rows) > max_rows
    rows = rows[:max_rows]
    return QueryRows(
        columns=columns,
        rows=[[json_friendly(value) for value in row] for row in rows],
        truncated=truncated,
        row_count=len(rows),
    )


def guarded_query(
    cursor: duckdb.DuckDBPyConnection, sql: str, max_rows: int, timeout_s: float
) -> QueryRows:
    """Check the limits and the statement, then run it (see the module docstring)."""
    if int(max_rows) < 0:
        raise ArchiveError(f"max_rows must be >= 0, got {max_rows}")
    if not timeout_s > 0:
        raise ArchiveError(f"timeout_s must be > 0, got {timeout_s}")
    check_read_only(cursor, sql)
    return run_query(cursor, sql, int(max_rows), float(timeout_s))
