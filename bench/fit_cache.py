"""A disk cache of fits: the same spec, data, settings and start train once per benchmark.

The paper's baselines share candidates (the GAT hybrid's fit is also React-Only's
true-reaction candidate and one of Diff-Only's), and a benchmark that was interrupted should
not redo the fits it had finished. :class:`FitCache` wraps :func:`~leads_engine.training.fit`
with the same signature; a fit is stored as ``<key>.json`` (its summary) and ``<key>.pt`` (its
weights, read back with ``weights_only=True``), written atomically, under a per-key file lock
so that two processes asking for the same fit compute it once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leads_engine.dataset import EPDataset
from leads_engine.observation import ObservationOperator
from leads_engine.spec import CandidateSpec
from leads_engine.training import Diagnosis, FitResult, ProgressCallback, TrainingConfig, fit

__all__ = ["FitCache", "fit_key"]


def _state_digest(state: dict[str, torch.Tensor] | None) -> str | None:
    if state is None:
        return None
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _dataset_digest(dataset: EPDataset) -> str:
    """What identifies the data: its metadata (generator settings, seed), split and values.

    A data set regenerated under the same name with other settings gets other fits."""
    digest = hashlib.sha256()
    digest.update(json.dumps(dataset.meta, sort_keys=True, default=str).encode())
    digest.update(json.dumps(dataset.split.tolist()).encode())
    observed = dataset.u if dataset.u is not None else dataset.extras.get("signals")
    digest.update(np.ascontiguousarray(observed, dtype=np.float32).tobytes())
    return digest.hexdigest()


def fit_key(
    spec: CandidateSpec,
    dataset: EPDataset,
    config: TrainingConfig,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> str:
    """Identity of a fit: spec, data set (name and split), training settings and start.

    The settings are those the fit uses: what ``config`` leaves open is the template's."""
    settings = dataclasses.asdict(config.for_template(spec.diffusion))
    settings.pop("device", None)  # the same numbers on any device, up to rounding
    identity = {
        "spec": spec.model_dump(mode="json", exclude={"parent_id"}),
        "dataset": _dataset_digest(dataset),
        "config": settings,
        "initial_state": _state_digest(initial_state),
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _write_atomically(path: Path, write: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(temporary)
    os.replace(temporary, path)


class FitCache:
    """``fit`` with results kept in ``folder`` (created on first use)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self, key: str) -> FitResult | None:
        """The stored fit, or None when there is none (or it is unreadable)."""
        summary_path = self.folder / f"{key}.json"
        weights_path = self.folder / f"{key}.pt"
        if not summary_path.exists():
            return None
        try:
            summary = json.loads(summary_path.read_text())
            state = (
                torch.load(weights_path, map_location="cpu", weights_only=True)
                if summary.get("has_weights")
                else None
            )
        except (OSError, ValueError, RuntimeError):
            return None
        diagnosis = summary["diagnosis"]
        return FitResult(
            status=summary["status"],
            train_losses=summary["train_losses"],
            val_losses=summary["val_losses"],
            best_epoch=summary["best_epoch"],
            best_val_loss=summary["best_val_loss"],
            parameter_count=summary["parameter_count"],
            wall_seconds=summary["wall_seconds"],
            diagnosis=Diagnosis(
                verdict=diagnosis["verdict"],
                text=diagnosis["text"],
                generalisation_gap=diagnosis["generalisation_gap"],
                explained_variance=diagnosis["explained_variance"],
                parameter_count=summary["parameter_count"],
                catalog_may_lack=diagnosis.get("catalog_may_lack"),
                error_split=diagnosis.get("error_split"),
                noise_floor=diagnosis.get("noise_floor"),
            ),
            state_dict=state,
            failure=summary["failure"],
            reaction_parameters=summary["reaction_parameters"],
        )

    def store(self, key: str, result: FitResult) -> None:
        summary = {
            **result.summary(),
            # unrounded, so that a row rebuilt from cached fits adds up to the same wall time
            "wall_seconds": result.wall_seconds,
            "has_weights": result.state_dict is not None,
        }
        if result.state_dict is not None:
            _write_atomically(
                self.folder / f"{key}.pt", lambda path: torch.save(result.state_dict, path)
            )
        _write_atomically(  # the summary last: it is what marks the fit as done
            self.folder / f"{key}.json", lambda path: path.write_text(json.dumps(summary))
        )

    def __call__(
        self,
        spec: CandidateSpec,
        dataset: EPDataset,
        config: TrainingConfig | None = None,
        progress: ProgressCallback | None = None,
        initial_state: dict[str, torch.Tensor] | None = None,
        observation: ObservationOperator | None = None,
    ) -> FitResult:
        """:func:`fit`, or its stored result. A custom ``observation`` bypasses the cache."""
        config = config or TrainingConfig()
        if observation is not None:
            return fit(spec, dataset, config, progress, initial_state, observation)
        key = fit_key(spec, dataset, config, initial_state)
        with self._locked(key):
            cached = self.load(key)
            if cached is not None:
                self.hits += 1
                return cached
            self.misses += 1
            result = fit(spec, dataset, config, progress, initial_state)
            self.store(key, result)
            return result
