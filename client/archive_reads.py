"""What the search loop reads back from the server's archive, through ``query_archive`` only:
whole query results (page by page), the session's candidates with their curves and step
numbers, and its recorded steps."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from .connection import ServerConnection
from .errors import AgentError
from .run_result import StepRecord
from .state import Candidate, rows_to_dicts


def sql_text(value: str) -> str:
    """``value`` as an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


async def _query_page(
    conn: ServerConnection, session_id: str, sql: str, max_rows: int
) -> dict[str, Any]:
    """One ``query_archive`` answer (columns, rows, ``truncated``)."""
    arguments: dict[str, Any] = {"sql": sql, "max_rows": max_rows}
    if session_id:
        arguments["session_id"] = session_id
    result = await conn.call("query_archive", arguments)
    if not result.ok and "session_id" in arguments:  # a server without the masking argument
        arguments.pop("session_id")
        result = await conn.call("query_archive", arguments)
    if not result.ok:
        raise AgentError(f"query_archive failed: {result.text}")
    return result.as_dict()


async def query_rows(
    conn: ServerConnection, session_id: str, sql: str, page_rows: int = 200
) -> list[dict[str, Any]]:
    """Every row of a read-only archive query (``query_archive``, names masked as the session
    ``session_id`` shows them), read page by page.

    The server caps a result's rows and bytes and says so (``truncated``); ``sql`` must end
    in its ORDER BY, and the pages continue with ``LIMIT``/``OFFSET`` until one comes back
    whole and short. A single row larger than the server's byte cap is an error, never a
    silently shorter list."""
    rows: list[dict[str, Any]] = []
    while True:
        answer = await _query_page(
            conn, session_id, f"{sql} LIMIT {page_rows} OFFSET {len(rows)}", page_rows
        )
        page = rows_to_dicts(answer)
        rows.extend(page)
        if not answer.get("truncated") and len(page) < page_rows:
            return rows
        if not page:
            raise AgentError(
                "query_archive returned no row of a page: one row is larger than the "
                f"server's result cap ({answer.get('notice') or 'truncated'})"
            )


async def read_candidates(
    conn: ServerConnection,
    session_id: str,
    steps: Iterable[StepRecord],
    discarded: set[str],
    aliases: Mapping[str, str],
) -> list[Candidate]:
    """Every candidate of the session with its per-epoch curves, numbered by the ``steps``
    that trained them; ``discarded`` (cancelled guesses) left out, reactions named as
    ``aliases`` (candidate id -> reaction as the session showed it) says."""
    sid = sql_text(session_id)
    rows = await query_rows(
        conn,
        session_id,
        "SELECT candidate_id, operation, parent_id, reaction, diffusion, spec, status, "
        "train_loss, val_loss, best_epoch, parameter_count, diagnosis FROM candidates "
        f"WHERE session_id = {sid} ORDER BY created_at, candidate_id",
    )
    epochs = await query_rows(
        conn,
        session_id,
        "SELECT e.candidate_id, e.epoch, e.train_loss, e.val_loss FROM epochs e "
        f"JOIN candidates c ON e.candidate_id = c.candidate_id WHERE c.session_id = {sid} "
        "ORDER BY e.candidate_id, e.epoch",
    )
    recorded = {r.candidate_id: r.step for r in steps if r.candidate_id}
    # a cancelled candidate that is no step (a guess cancelled by this or an earlier run of
    # the session) is not part of the search: the server gave its budget back
    candidates = [
        Candidate.from_row(row)
        for row in rows
        if str(row.get("candidate_id")) not in discarded
        and (row.get("status") != "cancelled" or str(row.get("candidate_id")) in recorded)
    ]
    by_id = {c.candidate_id: c for c in candidates}
    for row in epochs:
        candidate = by_id.get(str(row.get("candidate_id")))
        if candidate is None:
            continue
        if row.get("train_loss") is not None:
            candidate.train_curve.append(float(row["train_loss"]))
        if row.get("val_loss") is not None:
            candidate.val_curve.append(float(row["val_loss"]))
    step = 0
    for candidate in candidates:
        if candidate.candidate_id in aliases:
            candidate.reaction = aliases[candidate.candidate_id]
        if candidate.operation != "finetune":
            # the step that trained it as the archive recorded it (a lost step keeps its
            # number), else the next number after the previous candidate's
            step = recorded.get(candidate.candidate_id, step + 1)
            candidate.step = step
    # in step order: a batch starts its longest training first, so creation order differs;
    # fine-tuned copies stay last, in the order they were made
    return sorted(candidates, key=lambda c: (c.operation == "finetune", c.step or 0))


async def read_steps(conn: ServerConnection, session_id: str) -> list[StepRecord]:
    """The session's recorded steps (for a resumed run)."""
    rows = await query_rows(
        conn,
        session_id,
        "SELECT step, thought, action, observation FROM steps "
        f"WHERE session_id = {sql_text(session_id)} AND thought IS NOT NULL "
        "ORDER BY step",
    )
    records = []
    for number, row in enumerate(rows, start=1):
        action = row.get("action")
        if isinstance(action, str):
            try:
                action = json.loads(action)
            except json.JSONDecodeError:
                action = [action]
        candidate_id = None
        if isinstance(action, dict):
            candidate_id = action.get("candidate_id")
            action = action.get("calls", [action])
        records.append(
            StepRecord(
                number,
                row.get("thought") or "",
                action or [],
                row.get("observation") or "",
                str(candidate_id) if candidate_id else None,
            )
        )
    return records
