"""A scripted baseline's row: the engine's baseline on the data set, its fits shared through
the benchmark's fit cache (one folder per data set)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leads_engine.dataset import load_dataset

from .baselines import run_baseline
from .config import BenchConfig, Run
from .fit_cache import FitCache
from .records import same_reaction, training_config

__all__ = ["run_baseline_row"]


def run_baseline_row(
    run: Run, dataset_path: Path, config: BenchConfig, say: Callable[[str], None]
) -> dict[str, Any]:
    """Run one baseline on one data set; its record (with the activation maps under
    ``_at_pred`` and ``_at_true``)."""
    dataset = load_dataset(dataset_path)
    cache = FitCache(config.out / "fits" / dataset.name)

    def progress(label: str, event: Any) -> None:
        if event.phase == "epoch":
            say(f"{label}: epoch {event.epoch}/{event.epochs} val {event.val_loss:.3g}")

    started = time.perf_counter()
    result = run_baseline(
        run.method,
        dataset,
        epochs=config.epochs,
        finetune_epochs=config.finetune,
        config=training_config(config),
        progress=progress,
        seed=run.seed,
        fitter=cache,
    )
    summary = result.summary()
    true_reaction = str(dataset.meta["reaction"])
    return {
        "status": "ok",
        "test_mse": result.evaluation.mse,
        "test_at_mae_ms": result.evaluation.activation_error.mae,
        "test_at_missed": result.evaluation.activation_error.missed_fraction,
        "reaction": result.chosen.reaction,
        "diffusion": result.chosen.diffusion,
        "true_reaction": true_reaction,
        "reaction_identified": same_reaction(result.chosen.reaction, true_reaction),
        "wall_seconds": summary["wall_seconds"],
        "elapsed_seconds": round(time.perf_counter() - started, 2),
        "candidates": len(result.screening),
        "cache": {"hits": cache.hits, "misses": cache.misses},
        "details": summary,
        "_at_pred": result.evaluation.at_pred,
        "_at_true": result.evaluation.at_true,
    }
