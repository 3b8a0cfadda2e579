"""``leads-agent cohort``: one discovery per data set (a patient cohort), run concurrently over one
MCP server with one session each, resumable, with a live table and a cohort report.

The discoveries share the server: each is the ordinary search loop (:func:`~.agent.run_search`,
the offline policy, its reaction screening batched), and the server's executor bounds how many
candidates train at once (``local``: one per core; ``ray``: the cluster's slots), so running all
data sets together keeps every slot busy while each search waits on its own results.

Resuming: the cohort keeps ``state.json`` in its folder (``$LEADS_HOME/cohorts/<name>``): per data
set its session id, as soon as the session exists, and its outcome when it is done. Run the same
command again after a stop (the client interrupted, the server killed): finished data sets are
skipped, the others resume their session from the archive (the server marks the candidates a dead
server left pending ``failed``, interrupted; the search goes on from the steps recorded) or start
when they had none.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
from rich.console import Console
from rich.live import Live
from rich.table import Table

from .agent import run_search
from .connection import ServerConnection
from .convergence import PATIENCE
from .errors import AgentError
from .offline import OfflinePolicy
from .report import write_report
from .reveal import reveal_session
from .run_result import RunConfig, RunResult
from .state import Candidate

__all__ = ["CohortSettings", "CohortState", "CohortTable", "MemberView", "run_cohort"]

STATE_FILE = "state.json"


@dataclass
class CohortSettings:
    """What every discovery of the cohort does (the CLI's options)."""

    budget: int = 15
    epochs: int = 3
    finetune: int = 10
    seed: int = 0
    anonymise: bool = True
    parallel: int = 8
    #: steps without a better validation loss before a search stops (0: the whole budget)
    patience: int = PATIENCE
    #: discoveries at once (None: all data sets)
    concurrency: int | None = None
    #: whether the bundled server runs here (the user may read its truth files)
    local_server: bool = True
    archive: str | None = None


class CohortState:
    """The cohort's progress on disk: per data set its session, status and outcome."""

    def __init__(self, folder: Path, datasets: list[str]) -> None:
        self.folder = folder
        self.path = folder / STATE_FILE
        stored: dict[str, Any] = {}
        if self.path.exists():
            stored = json.loads(self.path.read_text(encoding="utf-8")).get("datasets", {})
        self.entries: dict[str, dict[str, Any]] = {
            name: dict(stored.get(name) or {"dataset": name, "status": "pending"})
            for name in datasets
        }
        self.save()

    def save(self) -> None:
        """Write the state atomically (a killed client never leaves half a file)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(f".{os.getpid()}.part")
        partial.write_text(json.dumps({"datasets": self.entries}, indent=1, default=str))
        os.replace(partial, self.path)

    def update(self, name: str, **values: Any) -> None:
        """Change a data set's entry and save."""
        self.entries[name].update(values)
        self.save()


@dataclass
class MemberView:
    """One discovery's view (the :class:`~.agent.RunView` protocol): it keeps the numbers the
    cohort table shows and saves the session id the moment the session exists."""

    name: str
    state: CohortState
    table: CohortTable | None = None
    step: int = 0
    best: str = "-"
    note: str = ""
    rows: list[Candidate] = field(default_factory=list)

    def _refresh(self) -> None:
        if self.table is not None:
            self.table.refresh()

    def session(self, session_id: str, info: dict[str, Any]) -> None:
        self.state.update(self.name, session_id=session_id, status="running")
        self._refresh()

    def thought(self, step: int, text: str) -> None:
        self.step = max(self.step, step)
        self._refresh()

    def candidates(self, rows: list[Candidate]) -> None:
        self.rows = list(rows)
        ok = [c for c in rows if c.ok and c.operation != "finetune"]
        if ok:
            best = min(ok, key=lambda c: c.val_loss or 0.0)
            self.best = f"{best.reaction} + {best.diffusion} ({best.val_loss:.3g})"
        self._refresh()

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.note = (message or "")[:70]
        self._refresh()

    def training(self, label: str, total: int) -> None:
        self.note = f"training {label}"
        self._refresh()

    def message(self, text: str) -> None:
        self.note = text[:70]
        self._refresh()


class CohortTable:
    """The live table: one row per data set (status, step, best so far, test numbers, time)."""

    def __init__(self, state: CohortState, budget: int, console: Console | None) -> None:
        self.state = state
        self.budget = budget
        self.views: dict[str, MemberView] = {}
        self.started = time.perf_counter()
        self.live = Live(self._render(), console=console, refresh_per_second=2) if console else None

    def __enter__(self) -> CohortTable:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(None, None, None)

    def refresh(self) -> None:
        """Redraw (no-op without a console)."""
        if self.live is not None:
            self.live.update(self._render())

    def _render(self) -> Table:
        elapsed = time.perf_counter() - self.started
        table = Table(title=f"leads-agent cohort ({elapsed:.0f} s)", expand=True)
        for column in ("data set", "status", "session", "step", "best so far", "test MSE"):
            table.add_column(column)
        table.add_column("AT MAE")
        table.add_column("wall (s)", justify="right")
        table.add_column("now", overflow="fold")
        for name, entry in self.state.entries.items():
            view = self.views.get(name)
            status = entry.get("status", "pending")
            style = {"done": "green", "failed": "red", "running": "cyan"}.get(status)
            mse, at = entry.get("test_mse"), entry.get("at_mae_ms")
            wall = entry.get("wall_seconds")
            table.add_row(
                name,
                f"[{style}]{status}[/]" if style else status,
                str(entry.get("session_id") or "-"),
                f"{view.step}/{self.budget}" if view else "-",
                entry.get("structure") or (view.best if view else "-"),
                f"{mse:.3g}" if isinstance(mse, float) else "-",
                f"{at:.3g} ms" if isinstance(at, float) else "-",
                f"{wall:.0f}" if isinstance(wall, float) else "-",
                (view.note if view else "") if status == "running" else (entry.get("error") or ""),
            )
        return table


def _outcome(result: RunResult, spent: float) -> dict[str, Any]:
    """A finished discovery's entry: chosen structure (real names when revealed), numbers."""
    best = result.best
    evaluation = result.evaluation or {}
    reaction = best.reaction if best else None
    if best is not None and result.revealed is not None and not result.revealed.unavailable:
        reaction = result.revealed.real(best.reaction)
    at = evaluation.get("at_mae_ms")
    return {
        "status": "done" if result.completed else "failed",
        "session_id": result.session_id,
        "structure": f"{reaction} + {best.diffusion}" if best else None,
        "reaction": reaction,
        "diffusion": best.diffusion if best else None,
        "hyperparameters": best.hyperparameters if best else None,
        "best_candidate": best.candidate_id if best else None,
        "val_loss": best.val_loss if best else None,
        "evaluated_candidate": evaluation.get("candidate_id"),
        "test_mse": float(evaluation["mse"]) if evaluation.get("mse") is not None else None,
        "at_mae_ms": float(at) if at is not None else None,
        "steps": len(result.steps),
        "wall_seconds": round(spent, 2),
        "error": None if result.completed else "the search stopped before its budget",
    }


async def _member(
    conn: ServerConnection,
    name: str,
    settings: CohortSettings,
    state: CohortState,
    view: MemberView,
    gate: asyncio.Semaphore,
    folder: Path,
) -> None:
    """Run (or resume) one data set's discovery and record its outcome."""
    async with gate:
        entry = state.entries[name]
        spent_before = float(entry.get("seconds_spent") or 0.0)
        config = RunConfig(
            dataset=name,
            budget=settings.budget,
            epochs=settings.epochs,
            finetune=settings.finetune,
            seed=settings.seed,
            anonymise=settings.anonymise,
            resume=entry.get("session_id"),
            parallel=settings.parallel,
            patience=settings.patience,
            label=f"cohort {name}",
        )
        state.update(name, status="running", error=None)
        started = time.perf_counter()
        try:
            result = await run_search(conn, OfflinePolicy(), config, view)
            if result.anonymised and result.completed:
                result.revealed = await anyio.to_thread.run_sync(
                    reveal_session, result.session_id, settings.archive, settings.local_server
                )
            if result.completed or result.steps:
                await write_report(conn, result, folder / "sessions" / name)
        except AgentError as exc:
            spent = spent_before + time.perf_counter() - started
            state.update(name, status="failed", error=str(exc), seconds_spent=round(spent, 2))
            raise
        spent = spent_before + time.perf_counter() - started
        state.update(name, seconds_spent=round(spent, 2), **_outcome(result, spent))
        view.note = "done"


async def run_cohort(
    conn: ServerConnection,
    datasets: list[str],
    settings: CohortSettings,
    folder: Path,
    console: Console | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Run every data set's discovery not yet done (at most ``settings.concurrency`` at once);
    the entries in the order given and the wall time of this run. A data set whose discovery
    fails (its data set is refused, the server went away) leaves its entry ``failed`` with the
    reason, resumable, and the others go on."""
    state = CohortState(folder, datasets)
    gate = asyncio.Semaphore(settings.concurrency or len(datasets))
    table = CohortTable(state, settings.budget, console)
    started = time.perf_counter()
    with table:
        jobs = {}
        for name in datasets:
            if state.entries[name].get("status") == "done":
                continue
            view = MemberView(name, state, table)
            table.views[name] = view
            jobs[name] = _member(conn, name, settings, state, view, gate, folder)
        outcomes = await asyncio.gather(*jobs.values(), return_exceptions=True)
        table.refresh()
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, AgentError):
            raise outcome
    return [state.entries[name] for name in datasets], time.perf_counter() - started


def server_arguments(
    executor: str | None, ray_address: str | None, max_jobs: int | None
) -> list[str]:
    """``leads-server`` flags that choose the bundled server's executor."""
    arguments: list[str] = []
    if executor:
        arguments += ["--executor", executor]
    if ray_address:
        arguments += ["--ray-address", ray_address]
    if max_jobs:
        arguments += ["--max-jobs", str(max_jobs)]
    return arguments


def default_name(datasets: list[str]) -> str:
    """A cohort's folder name from its data sets (the same command finds the same folder)."""
    stems = [re.sub(r"[^A-Za-z0-9_-]+", "_", Path(d).stem)[:16] for d in datasets]
    digest = hashlib.sha1("\0".join(datasets).encode()).hexdigest()[:8]
    return f"{'-'.join(stems)[:48]}-{digest}"
