"""Typed rows read back from the archive: what :class:`~leads_server.archive.Archive` returns.

Each class is a frozen dataclass mirroring one table's columns (timestamps as ISO 8601 strings,
JSON columns decoded, weights never included); :meth:`as_dict` gives the plain form the MCP
models and JSON want.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def load_json(text: str | None) -> Any:
    """A JSON column's value decoded (None stays None)."""
    return None if text is None else json.loads(text)


def _iso(value: dt.datetime) -> str:
    return value.isoformat()


class _Row:
    def as_dict(self) -> dict[str, Any]:
        """The row as a plain dict (nested rows as dicts, tuples as lists)."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


@dataclass(frozen=True)
class SessionRow(_Row):
    """One search session (``sessions``); ``status`` is running|stopped|finished (see
    :mod:`leads_server.archive.schema`)."""

    session_id: str
    created_at: str
    dataset: str
    dataset_path: str | None
    budget: int | None
    anonymise: bool
    seed: int | None
    config: dict[str, Any] | None
    status: str

    @classmethod
    def from_db(cls, row: Mapping[str, Any]) -> SessionRow:
        """From a ``SELECT * FROM sessions`` row."""
        return cls(
            **{**row, "config": load_json(row["config"]), "created_at": _iso(row["created_at"])}
        )


@dataclass(frozen=True)
class EpochRow(_Row):
    """One training epoch of a candidate (``epochs``)."""

    epoch: int
    train_loss: float | None
    val_loss: float | None
    wall_seconds: float | None


@dataclass(frozen=True)
class EvaluationRow(_Row):
    """One evaluation of a candidate on a data split (``evaluations``)."""

    split: str
    mse: float | None
    at_mae: float | None
    metrics: dict[str, Any] | None
    created_at: str

    @classmethod
    def from_db(cls, row: Mapping[str, Any]) -> EvaluationRow:
        """From a ``SELECT split, mse, at_mae, metrics, created_at`` row."""
        return cls(
            **{**row, "metrics": load_json(row["metrics"]), "created_at": _iso(row["created_at"])}
        )


@dataclass(frozen=True)
class CandidateRow(_Row):
    """One candidate model (``candidates``) without its weights; ``has_weights`` tells whether
    the archive holds any."""

    candidate_id: str
    session_id: str
    created_at: str
    operation: str
    parent_id: str | None
    reaction: str | None
    diffusion: str | None
    spec: dict[str, Any] | None
    code: str | None
    code_hash: str | None
    status: str
    train_loss: float | None
    val_loss: float | None
    best_epoch: int | None
    parameter_count: int | None
    wall_seconds: float | None
    metrics: dict[str, Any] | None
    diagnosis: str | None
    error: str | None
    has_weights: bool

    @staticmethod
    def decode(row: Mapping[str, Any]) -> dict[str, Any]:
        """A ``SELECT * EXCLUDE (weights), weights IS NOT NULL AS has_weights`` row's fields,
        JSON decoded and timestamp as text."""
        return {
            **row,
            "spec": load_json(row["spec"]),
            "metrics": load_json(row["metrics"]),
            "created_at": _iso(row["created_at"]),
        }

    @classmethod
    def from_db(cls, row: Mapping[str, Any]) -> CandidateRow:
        """From a candidates row (see :meth:`decode`)."""
        return cls(**cls.decode(row))


@dataclass(frozen=True)
class CandidateDetail(CandidateRow):
    """A candidate with its epochs (in order) and evaluations (oldest first)."""

    epochs: tuple[EpochRow, ...]
    evaluations: tuple[EvaluationRow, ...]


@dataclass(frozen=True)
class QueryRows(_Row):
    """The result of a read-only query: column names, rows of JSON-friendly values (timestamps
    as ISO strings, BLOBs as ``"<N bytes>"``, over-long values cut with a ``…[cut: ...]``
    marker), how many rows came back, whether more existed, which limit left them out
    (``"max_rows"`` or ``"max_bytes"``) and a notice saying what was cut and how to narrow the
    query (None when nothing was)."""

    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    row_count: int
    truncated_reason: str | None = None
    notice: str | None = None
