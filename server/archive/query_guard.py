"""The first defence of the agent's SQL (the ``query_archive`` tool): the statement check.

:func:`check_read_only` lets through exactly one read-only query and refuses anything else with
an :class:`ArchiveError` that starts with :data:`QUERY_REFUSAL`. It reads DuckDB's own parse of
the text, never a regular expression over it:

1. ``extract_statements`` must find one statement, of type SELECT (which covers ``WITH``,
   ``FROM``, ``VALUES``, ``DESCRIBE``, ``SHOW`` and ``SUMMARIZE``) or an ``EXPLAIN [ANALYZE]`` of
   one. INSERT, UPDATE, DELETE, DROP, CREATE, ALTER, COPY, ATTACH, DETACH, INSTALL, LOAD, PRAGMA,
   SET, CALL, EXPORT, IMPORT, CHECKPOINT, VACUUM, PIVOT (a multi-statement), two statements, ...
   are refused.
2. ``json_serialize_sql`` gives the statement's parse tree (parsed, not bound: no table or file is
   touched). Every query node in it must be a plain query (``SELECT_NODE``, set operations and
   CTEs): a data-modifying CTE (``WITH d AS (DELETE ... RETURNING *) SELECT ...``, whose statement
   type is SELECT) shows up as a ``DELETE_QUERY_NODE`` and is refused.
3. Every table function must be one of :data:`ALLOWED_TABLE_FUNCTIONS` (ranges, ``unnest``, JSON
   iteration and the catalog's metadata): ``read_csv``, ``read_parquet``, ``read_json``,
   ``read_text``, ``read_blob``, ``glob``, ``query``, ``sqlite_scan``, ``duckdb_secrets``,
   ``pragma_storage_info`` (it shows column statistics of whole tables), ... are refused, and so
   is a table name that looks like a file or URL (``FROM 'x.csv'``: DuckDB would read the file in
   its place).
4. A table is named without a catalog or schema (only ``information_schema`` and ``pg_catalog``
   may qualify one): the query's scope (:mod:`.query_scope`) shadows the archive's tables with
   views of the sessions it covers, and a qualified name would reach around them.

The checked query is run as DuckDB prints its parse tree back (``json_deserialize_sql``), so what
runs is exactly what was checked (no comment, trailing semicolon or second reading of the text),
wrapped in ``SELECT * FROM (...) LIMIT max_rows + 1`` so that DuckDB itself stops producing rows
past the row limit (:meth:`CheckedQuery.statement`).

The second, independent defence is the execution layer (:mod:`.query_run`): a read-only
transaction on a database instance with file and network access off and its configuration
locked. Either one alone keeps the archive unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb

from .errors import ArchiveError

QUERY_REFUSAL = (
    "query_archive accepts one read-only SELECT statement "
    "(SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE or EXPLAIN of a SELECT) "
    "over the archive's tables"
)
_EXPLAIN_PREFIX = re.compile(r"^\s*(EXPLAIN(?:\s+ANALY[SZ]E)?)\s+", re.IGNORECASE)

#: Query nodes of a plain read: a SELECT, UNION/EXCEPT/INTERSECT, and (recursive) CTEs.
READ_QUERY_NODES = frozenset(
    {"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"}
)

#: Table functions that read only values or the database's own catalog (no file, no network,
#: no SQL of their own).
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "generate_series",
        "unnest",
        "json_each",
        "json_tree",
        "duckdb_columns",
        "duckdb_constraints",
        "duckdb_databases",
        "duckdb_functions",
        "duckdb_indexes",
        "duckdb_keywords",
        "duckdb_schemas",
        "duckdb_tables",
        "duckdb_types",
        "duckdb_views",
        "pragma_table_info",
        "pragma_database_size",
        "pragma_version",
    }
)

#: Schemas a table name may be qualified with (metadata only).
METADATA_SCHEMAS = frozenset({"information_schema", "pg_catalog"})

#: Characters that make DuckDB read a table name as a file path or URL (a replacement scan).
_FILE_LIKE = re.compile(r"[./\\:]")


def refusal(reason: str) -> ArchiveError:
    """An :class:`ArchiveError` saying what query_archive accepts, and why this was refused."""
    return ArchiveError(f"{QUERY_REFUSAL}: {reason}")


@dataclass(frozen=True)
class CheckedQuery:
    """A query that passed :func:`check_read_only`: ``select`` is DuckDB's own text of the checked
    SELECT, ``explain`` the ``EXPLAIN``/``EXPLAIN ANALYZE`` before it (None for a plain query)."""

    select: str
    explain: str | None = None

    def statement(self, max_rows: int) -> str:
        """The statement to run: the query with DuckDB stopping after ``max_rows + 1`` rows (one
        more tells that more exist), or the EXPLAIN of it."""
        if self.explain is not None:
            return f"{self.explain} {self.select}"
        return f"SELECT * FROM (\n{self.select}\n) LIMIT {int(max_rows) + 1}"


def _one_statement(cursor: duckdb.DuckDBPyConnection, sql: str) -> Any:
    try:
        statements = list(cursor.extract_statements(sql))
    except duckdb.Error as exc:
        raise refusal(f"it does not parse ({_first_line(exc)})") from exc
    if len(statements) != 1:
        raise refusal(f"found {len(statements)} statements")
    return statements[0]


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _parse_tree(cursor: duckdb.DuckDBPyConnection, sql: str) -> dict[str, Any]:
    """DuckDB's parse tree of one SELECT statement (``json_serialize_sql``)."""
    found = cursor.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    tree = json.loads(found[0]) if found else {"error": True}
    if tree.get("error"):
        raise refusal(f"DuckDB cannot check it ({tree.get('error_message', 'no parse tree')})")
    return tree


def _nodes(value: Any) -> Iterator[dict[str, Any]]:
    """Every object of a parse tree, depth first."""
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _nodes(item)
    elif isinstance(value, list):
        for item in value:
            yield from _nodes(item)


def check_tree(tree: dict[str, Any]) -> None:
    """Refuse a parse tree with a non-read query node, a table function outside
    :data:`ALLOWED_TABLE_FUNCTIONS` or a file-like table name."""
    for node in _nodes(tree):
        kind = node.get("type")
        if not isinstance(kind, str):
            continue
        if kind.endswith("_NODE") and kind not in READ_QUERY_NODES:
            what = kind.removesuffix("_NODE").removesuffix("_QUERY")
            raise refusal(f"it contains a data-modifying {what} (only reads are allowed)")
        if kind == "TABLE_FUNCTION":
            function = node.get("function") or {}
            name = str(function.get("function_name", "")).lower()
            if name not in ALLOWED_TABLE_FUNCTIONS:
                raise refusal(
                    f"table function {name}() is not allowed (no files, network or nested SQL; "
                    f"allowed: {', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))})"
                )
        if kind == "BASE_TABLE":
            _check_table_name(node)


def _check_table_name(node: dict[str, Any]) -> None:
    """Refuse a file-like or qualified table name (see the module docstring)."""
    name = str(node.get("table_name", ""))
    if _FILE_LIKE.search(name):
        raise refusal(
            f"{name!r} names a file, not a table "
            "(tables: sessions, candidates, epochs, steps, evaluations)"
        )
    catalog = str(node.get("catalog_name") or "")
    schema = str(node.get("schema_name") or "")
    path = (node.get("qualified_name") or {}).get("path") or []
    if catalog or (schema and schema.lower() not in METADATA_SCHEMAS) or len(path) > 2:
        shown = ".".join(str(part) for part in path) or name
        raise refusal(
            f"{shown!r} is a qualified table name; name the table alone (sessions, candidates, "
            "epochs, steps, evaluations)"
        )


def _checked_select(cursor: duckdb.DuckDBPyConnection, sql: str) -> str:
    """DuckDB's text of one checked SELECT statement."""
    tree = _parse_tree(cursor, sql)
    statements = tree.get("statements") or []
    if len(statements) != 1:
        raise refusal(f"found {len(statements)} statements")
    check_tree(tree)
    found = cursor.execute("SELECT json_deserialize_sql(json(?))", [json.dumps(tree)]).fetchone()
    if not found or not found[0]:
        raise refusal("DuckDB cannot print it back")
    return str(found[0])


def check_read_only(cursor: duckdb.DuckDBPyConnection, sql: str) -> CheckedQuery:
    """Refuse (:class:`ArchiveError`) anything but one read-only query over the database's own
    tables (see the module docstring); return what to run."""
    statement = _one_statement(cursor, sql)
    kind = statement.type
    if kind == duckdb.StatementType.EXPLAIN:
        prefix = _EXPLAIN_PREFIX.match(statement.query)
        inner = statement.query[prefix.end() :] if prefix else ""
        if prefix is None or _one_statement(cursor, inner).type != duckdb.StatementType.SELECT:
            raise refusal("EXPLAIN is allowed only directly before a SELECT")
        return CheckedQuery(_checked_select(cursor, inner), prefix.group(1).upper())
    if kind != duckdb.StatementType.SELECT:
        raise refusal(f"{kind.name} statements are not allowed")
    return CheckedQuery(_checked_select(cursor, sql))
