"""The second defence of the agent's SQL, and the limits of a query's result: the execution layer.

:func:`run_query` runs one statement so that it cannot change the archive even if the statement
check (:mod:`.query_guard`) were bypassed or wrong:

* exactly one statement is run (``COMMIT; DELETE ...`` cannot end the transaction and go on);
* it runs inside ``BEGIN TRANSACTION READ ONLY``, rolled back afterwards: DuckDB refuses every
  write ("transaction is launched in read-only mode"), data-modifying CTEs included;
* on a database instance locked down when the archive opened (:func:`lock_down`): no file or
  network access (``COPY``, ``EXPORT``, ``ATTACH`` of a file, ``INSTALL``/``LOAD``, ``read_csv``
  and the like fail) and no setting can change (``SET``/``PRAGMA``/``RESET`` fail).

DuckDB 2.0 refuses a second connection to the same file in one process with a different
configuration, refuses ATTACHing it from another in-memory database, and has no statement
timeout; so the query runs on a cursor of the writer's own instance, ``enable_external_access``
is instance-wide (off for the writer too, which needs only its own file) and cannot be turned
back on.

Limits (:class:`QueryLimits`; the defaults are the constants below, in this one place):

* rows: at most ``max_rows`` (:data:`MAX_ROWS`);
* bytes: the rows are converted one at a time as they are fetched, and fetching stops before
  the result's JSON (as the tool's text content prints it, indented) would pass ``max_bytes``
  (:data:`MAX_RESULT_BYTES`); a string longer than :data:`MAX_CELL_CHARS` characters (a list or
  map holding more) is cut and ends with a visible ``…[cut: N characters in all]`` marker;
* time: a watchdog interrupts the query after ``timeout_s`` seconds (:data:`TIMEOUT_S`).

:class:`~.rows.QueryRows` says which limit cut the result (``truncated_reason``) and how to narrow
the query (``notice``). BLOB values are replaced by a ``"<N bytes>"`` placeholder. DuckDB itself
holds a whole vector (up to 2048 rows) of computed values in memory before the first row is
fetched, so a query that builds huge values costs memory until the time limit stops it.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb

from .errors import ArchiveError
from .rows import QueryRows

#: Rows a query returns at most, unless the caller asks for fewer or more.
MAX_ROWS = 1000
#: Bytes of a query result's JSON (indented, as the tool's text content shows it) at most.
MAX_RESULT_BYTES = 256 * 1024
#: Characters of one value at most (longer strings are cut); above the 50,000-character limit
#: of an edited diffusion source, so stored code always comes back whole.
MAX_CELL_CHARS = 64 * 1024
#: Seconds a query may run.
TIMEOUT_S = 5.0
#: Bytes set aside in the result for its column names, counts and notice.
_RESULT_FRAME_BYTES = 1024


@dataclass(frozen=True)
class QueryLimits:
    """The limits of one query's result."""

    max_rows: int = MAX_ROWS
    max_bytes: int = MAX_RESULT_BYTES
    timeout_s: float = TIMEOUT_S
    max_cell_chars: int = MAX_CELL_CHARS

    def checked(self) -> QueryLimits:
        """These limits, or an :class:`ArchiveError` saying which one is out of range."""
        if int(self.max_rows) < 0:
            raise ArchiveError(f"max_rows must be >= 0, got {self.max_rows}")
        if not self.timeout_s > 0:
            raise ArchiveError(f"timeout_s must be > 0, got {self.timeout_s}")
        least = 4 * _RESULT_FRAME_BYTES
        if int(self.max_bytes) < least:
            raise ArchiveError(f"max_bytes must be >= {least}, got {self.max_bytes}")
        if int(self.max_cell_chars) < 1:
            raise ArchiveError(f"max_cell_chars must be >= 1, got {self.max_cell_chars}")
        return self


def external_access_enabled(connection: duckdb.DuckDBPyConnection) -> bool:
    """Whether the database instance may still read files (False once :func:`lock_down` ran on
    it, which tells that this process already has the file open)."""
    found = connection.execute("SELECT current_setting('enable_external_access')").fetchone()
    return found is not None and bool(found[0])


def lock_down(connection: duckdb.DuckDBPyConnection) -> None:
    """Turn off file and network access for the whole database instance, for good."""
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")


# ---------------------------------------------------------------------------- values


class _Room:
    """Characters one value may still take."""

    def __init__(self, chars: int) -> None:
        self.chars = chars
        self.cut = False


def _scalar(value: Any) -> Any:
    """A scalar query value as something :func:`json.dumps` accepts."""
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
    return str(value)


def _bounded(value: Any, room: _Room) -> Any:
    """``value`` as JSON-friendly data of about ``room.chars`` characters at most: a longer
    string is cut, a list or map stops early, each with a visible marker."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if room.chars <= 0:
                room.cut = True
                out["…"] = f"[cut: {len(value)} entries in all]"
                break
            room.chars -= len(str(key))
            out[str(key)] = _bounded(item, room)
        return out
    if isinstance(value, (list, tuple)):
        items: list[Any] = []
        for item in value:
            if room.chars <= 0:
                room.cut = True
                items.append(f"…[cut: {len(value)} items in all]")
                break
            items.append(_bounded(item, room))
        return items
    scalar = _scalar(value)
    if isinstance(scalar, str) and len(scalar) > room.chars:
        room.cut = True
        kept = scalar[: max(room.chars, 0)]
        room.chars = 0
        return f"{kept}…[cut: {len(scalar)} characters in all]"
    room.chars -= len(scalar) if isinstance(scalar, str) else len(json.dumps(scalar))
    return scalar


def json_friendly(value: Any, max_chars: int = MAX_CELL_CHARS) -> Any:
    """A query result value as something :func:`json.dumps` accepts, cut (with a marker) past
    ``max_chars`` characters."""
    return _bounded(value, _Room(max_chars))


def row_bytes(row: list[Any]) -> int:
    """Bytes one row (or the column names) takes in the result's indented JSON (nested two deep,
    indent 2, the way the MCP SDK prints a tool's text content)."""
    text = json.dumps(row, ensure_ascii=False, indent=2)
    return len(text.encode()) + 4 * (text.count("\n") + 1) + 2


# ---------------------------------------------------------------------------- running


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


def _notice(reason: str | None, shown: int, limits: QueryLimits, cut_values: int) -> str | None:
    parts = []
    if reason == "max_rows":
        parts.append(
            f"only the first {shown} rows are shown (the max_rows limit of {limits.max_rows}); "
            "narrow the query with WHERE, an aggregate or LIMIT/OFFSET to see the rest"
        )
    elif reason == "max_bytes":
        parts.append(
            f"only the first {shown} rows are shown: the result reached query_archive's limit of "
            f"{limits.max_bytes} bytes; select fewer or shorter columns (e.g. left(code, 200) "
            "instead of code) or page with LIMIT/OFFSET"
        )
    if cut_values:
        parts.append(
            f"{cut_values} value(s) longer than {limits.max_cell_chars} characters were cut (they "
            "end with '…[cut: N characters in all]'); read one in parts with "
            "substr(column, start, length)"
        )
    return "; ".join(parts) or None


def _fetch(cursor: duckdb.DuckDBPyConnection, columns: list[str], limits: QueryLimits) -> QueryRows:
    """Fetch and convert rows one at a time until a row or byte limit is reached."""
    room = int(limits.max_bytes) - _RESULT_FRAME_BYTES - row_bytes(columns)
    rows: list[list[Any]] = []
    reason: str | None = None
    cut_values = 0
    while True:
        found = cursor.fetchone()
        if found is None:
            break
        if len(rows) >= limits.max_rows:
            reason = "max_rows"
            break
        cells = [_Room(int(limits.max_cell_chars)) for _ in found]
        row = [_bounded(value, cell) for value, cell in zip(found, cells, strict=True)]
        size = row_bytes(row)
        if size > room:
            reason = "max_bytes"
            break
        room -= size
        cut_values += sum(cell.cut for cell in cells)
        rows.append(row)
    return QueryRows(
        columns=columns,
        rows=rows,
        truncated=reason is not None,
        row_count=len(rows),
        truncated_reason=reason,
        notice=_notice(reason, len(rows), limits, cut_values),
    )


def run_query(
    cursor: duckdb.DuckDBPyConnection, sql: str, limits: QueryLimits = QueryLimits()
) -> QueryRows:
    """Run one statement in a read-only transaction within ``limits`` (see the module
    docstring). This layer alone keeps the archive unchanged whatever the statement."""
    limits = limits.checked()
    try:
        statements = list(cursor.extract_statements(sql))
    except duckdb.Error as exc:
        raise ArchiveError(f"query failed: {exc}") from exc
    if len(statements) != 1:
        raise ArchiveError(f"query_archive runs one statement, found {len(statements)}")
    try:
        cursor.execute("BEGIN TRANSACTION READ ONLY")
        with interrupt_after(cursor, float(limits.timeout_s)):
            cursor.execute(statements[0])
            if cursor.description is None:  # a statement without a result
                return QueryRows(columns=[], rows=[], truncated=False, row_count=0)
            columns = [str(column[0]) for column in cursor.description]
            return _fetch(cursor, columns, limits)
    except duckdb.InterruptException as exc:
        raise ArchiveError(
            f"query stopped after {limits.timeout_s:g} s (the query_archive time limit); "
            "narrow it with WHERE or LIMIT"
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
