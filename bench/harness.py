"""The benchmark's runs: which to do, on which data sets, in parallel worker processes with a
live progress display, resumed from the runs already stored, then the table and figure.

Each finished run is a JSON file under ``<out>/runs``: a rerun skips it, an interrupted search
resumes from its archive, an interrupted baseline from its cached fits.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from leads_engine.dataset import datasets_dir
from leads_engine.generator import BenchmarkConfig as DataSetConfig
from leads_engine.generator import benchmark_path, generate_benchmark
from leads_engine.heart_mesh import make_lv_mesh
from leads_engine.reactions.generator_models import in_search_catalog

from .baseline_rows import run_baseline_row
from .baselines import EXTRA_BASELINES
from .beyond import run_beyond, run_generator_oracle_row
from .config import (
    BASELINE_METHODS,
    METHODS,
    QUICK_DATA,
    BenchConfig,
    Check,
    Run,
    plan_runs,
)
from .records import load_record, write_json, write_run
from .search_rows import run_search_row
from .table import check_orderings, machine_info, markdown_table, plot_activation_maps, summarise
from .viewer import write_activation_viewer

__all__ = ["BenchResult", "execute_run", "planned_runs", "prepare_datasets", "run_bench"]


def prepare_datasets(config: BenchConfig, say: Callable[[str], None]) -> dict[str, Path]:
    """The data set file of each name: the bundled generator's sets, generated when missing."""
    paths: dict[str, Path] = {}
    mesh = make_lv_mesh(QUICK_DATA["nodes"]) if config.quick else None
    for name in config.datasets:
        if config.quick:
            path = config.out / "datasets" / f"quick_{name}.npz"
            if not path.exists():
                say(f"generating the quick {name} set ({QUICK_DATA['nodes']} nodes)")
                benchmark = DataSetConfig(
                    reaction=name,
                    n_samples=QUICK_DATA["samples"],
                    split_sizes=QUICK_DATA["split"],
                    duration_ms=QUICK_DATA["duration_ms"],
                )
                path.parent.mkdir(parents=True, exist_ok=True)
                generate_benchmark(benchmark, mesh=mesh, name=f"quick_{name}").save(path)
            paths[name] = path
            continue
        say(f"data set {name} (generated under {datasets_dir()} when missing)")
        paths[name] = benchmark_path(name)
    return paths


def execute_run(run: Run, dataset_path: Path, config: BenchConfig, events: Any = None) -> dict:
    """Run one method on one data set (in a worker process) and store its record."""
    torch.set_num_threads(1)  # one core per run: runs go in parallel instead

    def say(text: str) -> None:
        if events is not None:
            events.put((run.key, text))

    runner = run_search_row
    if run.method in BASELINE_METHODS or run.method in EXTRA_BASELINES:
        runner = run_baseline_row
    if run.method == "physics" and not _true_reaction_in_catalog(dataset_path):
        runner = run_generator_oracle_row  # out-of-catalog truth: the generator's own model
    return write_run(config.out, run, {**asdict(run), **runner(run, dataset_path, config, say)})


def _true_reaction_in_catalog(dataset_path: Path) -> bool:
    with np.load(dataset_path) as data:
        meta = json.loads(str(data["meta"]))
    return in_search_catalog(str(meta["reaction"]))


@dataclass
class BenchResult:
    """The table, the checks and the records of a benchmark, and where its files are."""

    table: dict[str, Any]
    checks: list[Check]
    records: list[dict[str, Any]]
    failures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every run finished and every ordering holds."""
        return not self.failures and all(c.passed for c in self.checks)


def planned_runs(config: BenchConfig) -> tuple[list[Run], dict[str, str]]:
    """The runs to do, longest first (they balance the workers), and the methods skipped."""
    cost = {"react-only": 5, "diff-only": 4, "leads-offline": 6, "leads-llm": 6, "hdtwingen": 6}
    return plan_runs(config, METHODS, config.datasets, cost)


def run_bench(
    config: BenchConfig,
    console: Console | None = None,
    command: str = "leads-agent bench",
) -> BenchResult:
    """Run (or resume) the whole comparison and write the table, JSON and figure."""
    console = console or Console(stderr=True, quiet=True)
    if config.beyond:
        return run_beyond(config, console, command)
    out = config.out
    (out / "runs").mkdir(parents=True, exist_ok=True)
    dataset_paths = prepare_datasets(config, console.print)
    runs, skipped = planned_runs(config)
    todo = [r for r in runs if load_record(out, r) is None]
    if len(todo) < len(runs):
        console.print(f"resuming: {len(runs) - len(todo)} of {len(runs)} runs already done")
    failures: dict[str, str] = {}
    if todo:
        failures = _execute(todo, dataset_paths, config, console)
    records = [r for r in (load_record(out, run) for run in runs) if r is not None]
    table = summarise(records, config.datasets)
    checks = check_orderings(table, config.datasets)
    machine = machine_info()
    markdown = markdown_table(table, list(config.datasets), checks, machine, command, skipped)
    figure = plot_activation_maps(out, runs, dataset_paths, list(table))
    viewer = write_activation_viewer(out, runs, dataset_paths, list(table))
    files = {"figure": figure, "viewer": viewer}
    return write_bench_results(
        BenchResult(table, checks, records, failures, skipped, files),
        config,
        machine,
        command,
        markdown,
    )


def write_bench_results(
    result: BenchResult, config: BenchConfig, machine: dict[str, Any], command: str, markdown: str
) -> BenchResult:
    """Write a table's ``results.json`` (config, machine, table, checks, runs, failures, skips,
    figure) and ``results.md`` into ``config.out``; the result with their paths added."""
    out = config.out
    figure = result.paths.get("figure")
    payload = {
        "config": {**asdict(config), "out": str(out)},
        "machine": machine,
        "command": command,
        "table": result.table,
        "checks": [asdict(c) for c in result.checks],
        "runs": result.records,
        "failures": result.failures,
        "skipped": result.skipped,
        "figure": None if figure is None else str(figure),
    }
    write_json(out / "results.json", payload)
    (out / "results.md").write_text(markdown)
    result.paths = {"markdown": out / "results.md", "json": out / "results.json", **result.paths}
    return result


def _stop_with_parent(parent: int) -> None:
    """Pool initializer: end this worker once the bench process is gone (killed, even with
    SIGKILL, or crashed), so that no orphan keeps a core busy. Finished runs are on disk;
    the run it was doing is redone on resume."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="leads-bench-parent-watch", daemon=True).start()


def _execute(
    todo: list[Run], dataset_paths: dict[str, Path], config: BenchConfig, console: Console
) -> dict[str, str]:
    """Run ``todo`` on ``config.workers`` processes with a live progress display."""
    failures: dict[str, str] = {}
    context = get_context("spawn")
    with (
        context.Manager() as manager,
        ProcessPoolExecutor(
            max_workers=max(1, config.workers),
            mp_context=context,
            initializer=_stop_with_parent,
            initargs=(os.getpid(),),
        ) as pool,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress,
    ):
        events = manager.Queue()
        overall = progress.add_task("[bold]benchmark runs", total=len(todo))
        lines: dict[str, int] = {}
        futures: dict[Future, Run] = {}
        for run in todo:
            future = pool.submit(execute_run, run, dataset_paths[run.dataset], config, events)
            futures[future] = run
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            _drain(events, progress, lines)
            for future in done:
                run = futures[future]
                try:
                    record = future.result()
                    text = f"{run.key}: test MSE {record['test_mse']:.3g}"
                except Exception as exc:  # one failed run must not lose the others
                    failures[run.key] = f"{type(exc).__name__}: {exc}"
                    text = f"[red]{run.key} failed: {exc}"
                if run.key in lines:
                    progress.update(lines.pop(run.key), visible=False)
                progress.console.print(text)
                progress.advance(overall)
    return failures


def _drain(events: Any, progress: Progress, lines: dict[str, int]) -> None:
    while True:
        try:
            key, text = events.get_nowait()
        except queue.Empty:
            return
        except (EOFError, OSError):
            return
        description = f"  {key}: {text}"[:120]
        if key not in lines:
            lines[key] = progress.add_task(description, total=None)
        else:
            progress.update(lines[key], description=description)
