"""How Python values become archive values: JSON text (NaN and infinity stored as null, numpy
arrays and tensors as lists, paths and timestamps as text) and optional numbers."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ArchiveError


def finite_or_none(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return finite_or_none(value.tolist())
    if isinstance(value, (Path, dt.date, dt.datetime, decimal.Decimal, uuid.UUID)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dump_json(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(finite_or_none(value), default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ArchiveError(f"cannot store as JSON: {exc}") from exc


def opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
