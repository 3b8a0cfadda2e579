"""Sealing an archive written before schema version 3: its anonymised sessions' truth moves out.

Up to version 2 an anonymised session's rows kept the real reaction names, the data set's name,
path and full summary, and the alias map in ``sessions.config``; the server masked them as it
answered. Version 3 keeps none of that in the file (:mod:`.truth`). :func:`seal_anonymised_sessions`
brings a version-2 file there, inside the opening transaction:

1. each anonymised session's truth (data set, path, full summary, alias map) is written to its
   truth file first (a repeated migration after a failed one writes the same file again);
2. its rows are rewritten under its aliases: the session's data set becomes its neutral handle
   (path removed, summary reduced to shape and sampling, alias map removed), candidates'
   ``reaction`` and spec, and every text and JSON value of its candidates, steps and evaluations,
   get the alias for every spelling of a real name. Edited code (``candidates.code``) is kept
   byte for byte (its hash identifies it).

Those sessions keep the aliases their agent already saw (drawn from the seed in version 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb

from ..anonymise import ReactionAliases, dataset_handle, public_summary
from .truth import SessionTruth, TruthStore


def _masked_json(aliases: ReactionAliases, text: str | None) -> str | None:
    if text is None:
        return None
    return json.dumps(aliases.mask(json.loads(text)))


def _masked_text(aliases: ReactionAliases, text: str | None) -> str | None:
    return None if text is None else aliases.mask_text(text)


def _seal_session(con: duckdb.DuckDBPyConnection, store: TruthStore, row: tuple) -> None:
    session_id, dataset, dataset_path, config_text = row
    config: dict[str, Any] = json.loads(config_text) if config_text else {}
    mapping = config.pop("aliases", None) or {}
    aliases = ReactionAliases(mapping) if mapping else ReactionAliases.shuffled()
    summary = dict(config.pop("dataset_summary", None) or {})
    store.write(
        SessionTruth(
            session_id=session_id,
            dataset=dataset,
            dataset_path=dataset_path or dataset,
            dataset_summary=summary,
            aliases=aliases.mapping,
        )
    )
    handle = dataset_handle(session_id)
    config["dataset_summary"] = public_summary(summary, handle)
    con.execute(
        "UPDATE sessions SET dataset = ?, dataset_path = NULL, config = ? WHERE session_id = ?",
        [handle, json.dumps(config), session_id],
    )
    candidates = con.execute(
        "SELECT candidate_id, reaction, spec, metrics, diagnosis, error FROM candidates "
        "WHERE session_id = ?",
        [session_id],
    ).fetchall()
    for candidate_id, reaction, spec, metrics, diagnosis, error in candidates:
        con.execute(
            "UPDATE candidates SET reaction = ?, spec = ?, metrics = ?, diagnosis = ?, error = ? "
            "WHERE candidate_id = ?",
            [
                None if reaction is None else aliases.show(reaction),
                _masked_json(aliases, spec),
                _masked_json(aliases, metrics),
                _masked_text(aliases, diagnosis),
                _masked_text(aliases, error),
                candidate_id,
            ],
        )
        evaluations = con.execute(
            "SELECT rowid, metrics FROM evaluations WHERE candidate_id = ?", [candidate_id]
        ).fetchall()
        for rowid, metrics_text in evaluations:
            con.execute(
                "UPDATE evaluations SET metrics = ? WHERE rowid = ?",
                [_masked_json(aliases, metrics_text), rowid],
            )
    steps = con.execute(
        "SELECT step, thought, action, observation FROM steps WHERE session_id = ?", [session_id]
    ).fetchall()
    for step, thought, action, observation in steps:
        con.execute(
            "UPDATE steps SET thought = ?, action = ?, observation = ? "
            "WHERE session_id = ? AND step = ?",
            [
                _masked_text(aliases, thought),
                _masked_json(aliases, action),
                _masked_text(aliases, observation),
                session_id,
                step,
            ],
        )


def seal_anonymised_sessions(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Version 2 -> 3 (see the module docstring); runs inside the caller's transaction."""
    store = TruthStore(path)
    rows = con.execute(
        "SELECT session_id, dataset, dataset_path, config FROM sessions WHERE anonymise "
        "ORDER BY created_at, rowid"
    ).fetchall()
    for row in rows:
        _seal_session(con, store, row)
