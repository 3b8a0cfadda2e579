"""Which sessions an agent's query sees: the query's scope.

``query_archive`` answers from the rows of the sessions its scope covers, and from nothing else:

* with a ``session_id``: that session's rows only (its ``sessions`` row, candidates, their epochs
  and evaluations, its steps), as the session wrote them (an anonymised one under its aliases);
* without: the rows of every session that is not anonymised. An anonymised session's rows are
  read through its own ``session_id`` only, so a query that names no session never mixes one
  session's aliases with another's real names.

How: before the query runs, its cursor (a connection of its own) gets temporary views named like
the archive's tables that select the covered rows. DuckDB resolves an unqualified table name (and
``main.<table>``) to a temporary view first, and the statement check refuses any name qualified by
another catalog or schema (:mod:`.query_guard`), so the query cannot name the full tables. The
views live only on that cursor, which is closed after the query.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from .errors import ArchiveError

#: Tables a query sees, and how each one's rows belong to a session.
_SCOPED_TABLES = {
    "sessions": "session_id IN ({covered})",
    "candidates": "session_id IN ({covered})",
    "steps": "session_id IN ({covered})",
    "drafts": "session_id IN ({covered})",
    "epochs": "candidate_id IN (SELECT candidate_id FROM {db}.main.candidates "
    "WHERE session_id IN ({covered}))",
    "evaluations": "candidate_id IN (SELECT candidate_id FROM {db}.main.candidates "
    "WHERE session_id IN ({covered}))",
}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _identifier(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


@dataclass(frozen=True)
class QueryScope:
    """The sessions one query covers: ``session_id``'s, or (None) every non-anonymised one."""

    session_id: str | None = None

    def covered_sessions(self, db: str) -> str:
        """A subquery of the covered session ids."""
        if self.session_id is not None:
            return _literal(self.session_id)
        return f"SELECT session_id FROM {db}.main.sessions WHERE NOT anonymise"

    def apply(self, cursor: duckdb.DuckDBPyConnection) -> None:
        """Shadow the archive's tables on ``cursor`` with views of the covered rows."""
        try:
            found = cursor.execute("SELECT current_database()").fetchone()
            db = _identifier(str(found[0])) if found else "main"
            covered = self.covered_sessions(db)
            for table, rule in _SCOPED_TABLES.items():
                where = rule.format(db=db, covered=covered)
                cursor.execute(
                    f"CREATE TEMP VIEW {table} AS SELECT * FROM {db}.main.{table} WHERE {where}"
                )
        except duckdb.Error as exc:
            raise ArchiveError(f"archive read failed: {exc}") from exc


#: The scope of a query that names no session: every non-anonymised session.
ALL_OPEN_SESSIONS = QueryScope()


def hidden_sessions_notice(hidden: int) -> str | None:
    """What a query without ``session_id`` left out, if anything."""
    if not hidden:
        return None
    return (
        f"{hidden} anonymised session(s) are not covered by a query without session_id; pass "
        "a session's session_id to query its rows"
    )
