"""What every finished run records, whatever the method: the training settings both kinds of
row share, the reaction-identity check, and the run files under ``<out>/runs``."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from leads_engine.reactions import resolve_reaction_name
from leads_engine.training import TrainingConfig

from .config import BenchConfig, Run

__all__ = ["load_record", "same_reaction", "training_config", "write_json", "write_run"]


def training_config(config: BenchConfig) -> TrainingConfig:
    """The training settings of the benchmark's fits and figures."""
    # torch.compile pays off over a full-size fit, not over the quick mode's few seconds
    return TrainingConfig(batch_size=config.batch_size, compile=not config.quick)


def same_reaction(name: str, true_name: str) -> bool:
    """Whether ``name`` is the data set's true reaction (any of the catalog's spellings)."""
    with contextlib.suppress(ValueError, KeyError):
        return resolve_reaction_name(name) == resolve_reaction_name(true_name)
    return False


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically: a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(payload, indent=1, default=_plain))
    os.replace(temporary, path)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_run(out: Path, run: Run, record: dict[str, Any]) -> dict[str, Any]:
    """Store a finished run: the first test beat's activation maps (``<key>.npz``, for the
    figure) and its record (``<key>.json``, written last: it marks the run as done)."""
    record = {**record}
    at_pred, at_true = record.pop("_at_pred"), record.pop("_at_true")
    np.savez_compressed(out / "runs" / f"{run.key}.npz", at_pred=at_pred[:1], at_true=at_true[:1])
    write_json(out / "runs" / f"{run.key}.json", record)
    return record


def load_record(out: Path, run: Run) -> dict[str, Any] | None:
    """A finished run's record, or ``None`` when it is missing or torn."""
    path = out / "runs" / f"{run.key}.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None
