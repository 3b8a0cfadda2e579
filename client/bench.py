"""The paper's comparison, measured here, in one command: ``leads-agent bench``.

Every method runs on the AP, RM and MS benchmark sets with the same splits, seeds and budgets
(3 epochs per candidate, 10 epochs of fine-tuning for the chosen one, 15 search steps):

================  ============================================================================
physics           oracle: true reaction with its true parameters + learnable conductivity map
hybrid-gat        human-designed hybrid: true reaction + GAT diffusion (HyPer-EP)
diff-only         true reaction; the diffusion chosen among the catalog (ablation)
react-only        GAT diffusion; the reaction chosen among the catalog (ablation)
all-neural        neural (MLP) reaction + GAT diffusion (ablation)
leads-offline     the LEADS search with the offline policy, through the MCP server
leads-llm         the LEADS search with an LLM policy (``--llm``)
hdtwingen         free-form model code written by the LLM, sandboxed, same budget (``--llm``)
================  ============================================================================

The scripted baselines run in the engine (:mod:`leads_engine.baselines`) and share a fit
cache, so a candidate two baselines both try trains once; the searches run through the bundled
server, one archive per run. Each finished run is a JSON file under ``<out>/runs``: a rerun
skips it, an interrupted search resumes from its archive, an interrupted baseline from its
cached fits. The result is ``<out>/results.md`` (the paper's Tables 2 and 3 layout),
``<out>/results.json`` (every figure) and ``<out>/activation_maps.png``.

``--quick`` runs the same pipeline on a 200-node mesh and a 100 ms horizon, one seed and an
8-step search, in a few minutes, and checks the orderings the paper reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import platform
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .ui import QuietView

__all__ = [
    "BenchConfig",
    "Check",
    "Run",
    "check_orderings",
    "main",
    "run_bench",
    "summarise",
]

BASELINE_METHODS = ("physics", "hybrid-gat", "diff-only", "react-only", "all-neural")
SEARCH_METHODS = ("leads-offline", "leads-llm", "hdtwingen")
METHODS = BASELINE_METHODS + SEARCH_METHODS
LLM_METHODS = ("leads-llm", "hdtwingen")
LABELS = {
    "physics": "Physics-Based (oracle)",
    "hybrid-gat": "Hybrid GAT (human-designed)",
    "diff-only": "Diff-Only",
    "react-only": "React-Only",
    "all-neural": "All-Neural",
    "leads-offline": "LEADS (offline policy)",
    "leads-llm": "LEADS (LLM)",
    "hdtwingen": "HDTwinGen-style (free-form code)",
}
#: The paper's test MSE (its own scale): AP, RM, MS, average.
PAPER_MSE = {
    "physics": (None, None, None, "near 0"),
    "hybrid-gat": (None, None, None, 37.6),
    "diff-only": (50.4, 10.3, 18.5, 26.4),
    "react-only": (49.6, 20.4, 20.7, 30.2),
    "all-neural": (66.1, 25.5, 25.9, 39.2),
    "leads-llm": (49.2, 10.1, 20.8, 26.7),
    "hdtwingen": (None, None, None, 416.3),
}
#: LEADS' average MSE relative to the GAT hybrid's in the paper: 26.7 / 37.6.
PAPER_LEADS_OVER_GAT = 26.7 / 37.6
HDTWINGEN_PROMPT = """\
You write the complete model of a cardiac electrophysiology digital twin as free-form code: the
diffusion operator du/dt = D(u; mesh) is whatever Python module you write, with the neural
(MLP) reaction fixed. Each step: select_reaction with the neural reaction, then
modify_diffusion with the COMPLETE source of your module (read_template_source shows the
interface your module must keep); it is checked and trained in a sandbox. Improve the code
from the validation losses you observe. Answer with your reasoning and no tool call once the
candidate is set up. The session_id is filled in for you.
"""


@dataclass(frozen=True)
class BenchConfig:
    """What ``leads-agent bench`` runs."""

    out: Path
    datasets: tuple[str, ...] = ("ap", "rm", "ms")
    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = METHODS  # the LLM rows are skipped without a provider
    epochs: int = 3
    finetune: int = 10
    budget: int = 15
    batch_size: int | None = None  # None: each template's catalog batch size
    workers: int = 2
    quick: bool = False
    llm: str = "offline"
    model: str | None = None
    base_url: str | None = None

    @classmethod
    def quick_defaults(cls, out: Path, **overrides: Any) -> BenchConfig:
        """The CI-sized run: tiny mesh, short horizon, one seed, a shorter search.

        The epochs and each template's batch size stay the full size's (10 training beats:
        5 optimizer steps per epoch for the physical templates, 1 for the neural ones).
        """
        values: dict[str, Any] = {"seeds": (0,), "budget": 8, "quick": True}
        values.update(overrides)
        return cls(out=out, **values)


#: The quick mode's data sets: (mesh nodes, samples, split, duration in ms).
QUICK_DATA = {"nodes": 300, "samples": 16, "split": (10, 3, 3), "duration_ms": 80.0}


@dataclass(frozen=True)
class Run:
    """One method on one data set with one seed."""

    method: str
    dataset: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}__{self.dataset}__seed{self.seed}"


@dataclass
class Check:
    """One ordering the paper reports, checked on our numbers."""

    name: str
    passed: bool
    detail: str


# ------------------------------------------------------------------------------- data sets


def prepare_datasets(config: BenchConfig, say: Callable[[str], None]) -> dict[str, Path]:
    """The data set file of each name: the bundled generator's sets, generated when missing."""
    from leads_engine.dataset import datasets_dir
    from leads_engine.generator import BenchmarkConfig, benchmark_path, generate_benchmark
    from leads_engine.mesh import make_lv_mesh

    paths: dict[str, Path] = {}
    mesh = make_lv_mesh(QUICK_DATA["nodes"]) if config.quick else None
    for name in config.datasets:
        if config.quick:
            path = config.out / "datasets" / f"quick_{name}.npz"
            if not path.exists():
                say(f"generating the quick {name} set ({QUICK_DATA['nodes']} nodes)")
                benchmark = BenchmarkConfig(
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


# ------------------------------------------------------------------------------- one run


def _write_json(path: Path, payload: dict[str, Any]) -> None:
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


def _training_config(config: BenchConfig) -> Any:
    from leads_engine.training import TrainingConfig

    # torch.compile pays off over a full-size fit, not over the quick mode's few seconds
    return TrainingConfig(batch_size=config.batch_size, compile=not config.quick)


def _run_baseline(run: Run, dataset_path: Path, config: BenchConfig, say: Callable) -> dict:
    from leads_engine.baselines import run_baseline
    from leads_engine.dataset import load_dataset
    from leads_engine.fit_cache import FitCache

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
        config=_training_config(config),
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
        "reaction_identified": _same_reaction(result.chosen.reaction, true_reaction),
        "wall_seconds": summary["wall_seconds"],
        "elapsed_seconds": round(time.perf_counter() - started, 2),
        "candidates": len(result.screening),
        "cache": {"hits": cache.hits, "misses": cache.misses},
        "details": summary,
        "_at_pred": result.evaluation.at_pred,
        "_at_true": result.evaluation.at_true,
    }


def _same_reaction(name: str, true_name: str) -> bool:
    from leads_engine.reactions import resolve_reaction_name

    with contextlib.suppress(ValueError, KeyError):
        return resolve_reaction_name(name) == resolve_reaction_name(true_name)
    return False


class _ForwardingView(QuietView):
    """A quiet run view that forwards the search's steps to the benchmark's progress line."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    def session(self, session_id: str, info: dict[str, Any]) -> None:
        self.say(f"session {session_id}")

    def thought(self, step: int, text: str) -> None:
        self.say(f"step {step}: {text.splitlines()[0][:90] if text else ''}")

    def training(self, label: str, total: int) -> None:
        self.say(f"training {label}")

    def message(self, text: str) -> None:
        self.say(text)


def _unfinished_session(archive_path: Path) -> str | None:
    """The search session to resume in ``archive_path``, if one was left unfinished."""
    from leads_server.archive import Archive

    if not archive_path.exists():
        return None
    archive = Archive.open(archive_path)
    try:
        sessions = [s for s in archive.list_sessions() if s.status != "finished"]
    finally:
        archive.close()
    return str(sessions[-1].session_id) if sessions else None


def search_setup(
    run: Run, dataset_path: Path, config: BenchConfig, resume: str | None = None
) -> tuple[Any, str | None]:
    """The agent's run configuration for a search row, and its LLM system prompt (``None``:
    the default LEADS prompt). The HDTwinGen-style row fixes the neural reaction and asks for
    free-form model code through ``modify_diffusion``."""
    from .agent import RunConfig

    run_config = RunConfig(
        dataset=str(dataset_path),
        budget=config.budget,
        epochs=config.epochs,
        finetune=config.finetune,
        batch_size=config.batch_size,
        seed=run.seed,
        resume=resume,
        label=f"bench {run.method}",
    )
    if run.method != "hdtwingen":
        return run_config, None
    run_config.fixed_reaction = "neural"
    run_config.reactions = ["neural"]
    return run_config, HDTWINGEN_PROMPT


async def _search(run: Run, dataset_path: Path, archive_path: Path, config: BenchConfig, say):
    from .agent import run_search
    from .cli import make_policy
    from .connection import connect

    run_config, prompt = search_setup(
        run, dataset_path, config, resume=_unfinished_session(archive_path)
    )
    async with connect(archive=str(archive_path), compile_training=not config.quick) as conn:
        llm = "offline" if run.method == "leads-offline" else config.llm
        extra = {"system_prompt": prompt} if prompt else {}
        policy = make_policy(llm, conn, config.model, config.base_url, **extra)
        try:
            return await run_search(conn, policy, run_config, _ForwardingView(say))
        finally:
            backend = getattr(policy, "backend", None)
            if backend is not None:
                await backend.aclose()


def _run_search(run: Run, dataset_path: Path, config: BenchConfig, say: Callable) -> dict:
    import torch
    from leads_server.archive import Archive

    from leads_engine.dataset import load_dataset
    from leads_engine.spec import CandidateSpec
    from leads_engine.training import evaluate

    archive_path = config.out / "archives" / f"{run.key}.duckdb"
    archive_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = asyncio.run(_search(run, dataset_path, archive_path, config, say))
    if not result.completed or result.best is None:
        raise RuntimeError(f"the search did not finish with a model (session {result.session_id})")
    final_id = (result.finetuned or {}).get("candidate_id") or result.best.candidate_id
    archive = Archive.open(archive_path)  # the server has exited: the archive is ours to read
    try:
        record = archive.get_candidate(final_id)
        weights = archive.get_weights(final_id)
    finally:
        archive.close()
    spec = CandidateSpec(**(record.spec or {}))  # the archive keeps the real (de-anonymised) names
    state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    dataset = load_dataset(dataset_path)
    evaluation = evaluate(spec, dataset, state, "test", _training_config(config))
    true_reaction = str(dataset.meta["reaction"])
    summary = result.summary()
    return {
        "status": "ok",
        "test_mse": evaluation.mse,
        "test_at_mae_ms": evaluation.activation_error.mae,
        "test_at_missed": evaluation.activation_error.missed_fraction,
        "reaction": spec.reaction,
        "diffusion": spec.diffusion,
        "true_reaction": true_reaction,
        "reaction_identified": _same_reaction(spec.reaction, true_reaction),
        "wall_seconds": round(result.wall_seconds, 2),
        "elapsed_seconds": round(time.perf_counter() - started, 2),
        "candidates": len(result.candidates),
        "session_id": result.session_id,
        "archive": str(archive_path),
        "server_test_mse": (summary.get("test") or {}).get("mse"),
        "details": summary,
        "_at_pred": evaluation.at_pred,
        "_at_true": evaluation.at_true,
    }


def execute_run(run: Run, dataset_path: Path, config: BenchConfig, events: Any = None) -> dict:
    """Run one method on one data set (in a worker process) and store its record."""
    import torch

    torch.set_num_threads(1)  # one core per run: runs go in parallel instead

    def say(text: str) -> None:
        if events is not None:
            events.put((run.key, text))

    runner = _run_baseline if run.method in BASELINE_METHODS else _run_search
    record = {**asdict(run), **runner(run, dataset_path, config, say)}
    at_pred, at_true = record.pop("_at_pred"), record.pop("_at_true")
    np.savez_compressed(
        config.out / "runs" / f"{run.key}.npz", at_pred=at_pred[:1], at_true=at_true[:1]
    )
    _write_json(config.out / "runs" / f"{run.key}.json", record)
    return record


# ------------------------------------------------------------------------------- the table


def _mean_spread(values: list[float]) -> tuple[float | None, float | None]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    spread = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return statistics.fmean(finite), spread


def summarise(records: Iterable[dict[str, Any]], datasets: Iterable[str]) -> dict[str, Any]:
    """Mean and spread over seeds of every figure, per method and data set, plus averages."""
    datasets = list(datasets)
    by_method: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for record in records:
        by_method.setdefault(record["method"], {}).setdefault(record["dataset"], []).append(record)
    table: dict[str, Any] = {}
    for method in [m for m in METHODS if m in by_method]:
        rows = by_method[method]
        entry: dict[str, Any] = {"per_dataset": {}}
        for name in datasets:
            runs = rows.get(name, [])
            mse, mse_sd = _mean_spread([r["test_mse"] for r in runs])
            at, at_sd = _mean_spread([r["test_at_mae_ms"] for r in runs])
            missed, _ = _mean_spread([r.get("test_at_missed") for r in runs])
            wall, _ = _mean_spread([r["wall_seconds"] for r in runs])
            entry["per_dataset"][name] = {
                "seeds": sorted(r["seed"] for r in runs),
                "mse": mse,
                "mse_sd": mse_sd,
                "at_mae_ms": at,
                "at_mae_sd": at_sd,
                "at_missed": missed,
                "identified": [bool(r["reaction_identified"]) for r in runs],
                "chosen": sorted({f"{r['reaction']} + {r['diffusion']}" for r in runs}),
                "wall_seconds": wall,
            }
        complete = all(entry["per_dataset"][n]["mse"] is not None for n in datasets)
        per = entry["per_dataset"]
        entry["mse_avg"] = statistics.fmean(per[n]["mse"] for n in datasets) if complete else None
        entry["at_mae_avg"] = (
            statistics.fmean(per[n]["at_mae_ms"] for n in datasets) if complete else None
        )
        entry["wall_seconds_total"] = sum(per[n]["wall_seconds"] or 0.0 for n in datasets)
        table[method] = entry
    gat = table.get("hybrid-gat", {}).get("mse_avg")
    for entry in table.values():
        entry["mse_over_gat"] = entry["mse_avg"] / gat if gat and entry["mse_avg"] else None
    return table


def check_orderings(table: dict[str, Any], datasets: Iterable[str]) -> list[Check]:
    """The paper's acceptance orderings, on our numbers."""
    datasets = list(datasets)
    checks: list[Check] = []

    def mse(method: str, name: str) -> float | None:
        return table.get(method, {}).get("per_dataset", {}).get(name, {}).get("mse")

    if "physics" in table:
        losers = []
        for name in datasets:
            others = {m: mse(m, name) for m in table if m != "physics"}
            best_other = min((v, m) for m, v in others.items() if v is not None)
            if mse("physics", name) is None or mse("physics", name) >= best_other[0]:
                losers.append(f"{name}: {best_other[1]} {best_other[0]:.3g}")
        checks.append(
            Check(
                "the physics oracle has the lowest test MSE on every set",
                not losers,
                "; ".join(losers) or "lowest on " + ", ".join(datasets),
            )
        )
    if "leads-offline" in table:
        per = table["leads-offline"]["per_dataset"]
        missed = [n for n in datasets if not (per[n]["identified"] and all(per[n]["identified"]))]
        checks.append(
            Check(
                "LEADS-offline identifies the true reaction on every set and seed",
                not missed,
                "missed on " + ", ".join(missed) if missed else "identified on all",
            )
        )
        for rival in ("hybrid-gat", "all-neural"):
            if rival not in table:
                continue
            worse = [
                f"{n}: {mse('leads-offline', n):.3g} vs {mse(rival, n):.3g}"
                for n in datasets
                if mse("leads-offline", n) is None
                or mse(rival, n) is None
                or mse("leads-offline", n) >= mse(rival, n)
            ]
            checks.append(
                Check(
                    f"LEADS-offline beats {LABELS[rival]} on every set",
                    not worse,
                    "; ".join(worse) or "lower on " + ", ".join(datasets),
                )
            )
        ratio = table["leads-offline"].get("mse_over_gat")
        if ratio is not None:
            checks.append(
                Check(
                    f"LEADS-offline's average MSE relative to the GAT hybrid is below the paper's "
                    f"26.7/37.6 = {PAPER_LEADS_OVER_GAT:.3f}",
                    ratio < PAPER_LEADS_OVER_GAT,
                    f"{ratio:.3f}",
                )
            )
    return checks


def _fmt(value: float | None, spread: float | None = None, scale: float = 1.0) -> str:
    if value is None:
        return "n/a"
    text = f"{value * scale:.3g}"
    if spread:
        text += f" ± {spread * scale:.2g}"
    return text


def markdown_table(
    table: dict[str, Any],
    datasets: list[str],
    checks: list[Check],
    machine: dict[str, Any],
    command: str,
    skipped: dict[str, str],
) -> str:
    """The paper's Tables 2 and 3 layout, from :func:`summarise`."""
    names = [n.upper() for n in datasets]
    lines = [
        "## Test MSE (x 1e-3; mean ± sd over seeds)",
        "",
        "| Method | " + " | ".join(names) + " | Avg | Avg / GAT hybrid |",
        "|---|" + "---|" * (len(datasets) + 2),
    ]
    for method, entry in table.items():
        per = entry["per_dataset"]
        cells = [_fmt(per[n]["mse"], per[n]["mse_sd"], 1e3) for n in datasets]
        ratio = entry.get("mse_over_gat")
        lines.append(
            f"| {LABELS[method]} | "
            + " | ".join(cells)
            + f" | {_fmt(entry['mse_avg'], None, 1e3)} | {_fmt(ratio)} |"
        )
    lines += [
        "",
        "## Activation times, reaction identified and wall time",
        "",
        "AT MAE is over the nodes that activate in both maps; the share of truly activated "
        "nodes a model never activates is given when it is not zero.",
        "",
        "| Method | AT MAE (ms) "
        + " | ".join(names)
        + " | Reaction identified "
        + " / ".join(names)
        + " | Chosen structure | Wall time (s) |",
        "|---|" + "---|" * len(datasets) + "---|---|---|",
    ]
    for method, entry in table.items():
        per = entry["per_dataset"]
        cells = [
            _fmt(per[n]["at_mae_ms"], per[n]["at_mae_sd"])
            + (
                f" ({per[n]['at_missed']:.0%} never activated)"
                if (per[n]["at_missed"] or 0) >= 0.005
                else ""
            )
            for n in datasets
        ]
        identified = " / ".join(
            "yes"
            if per[n]["identified"] and all(per[n]["identified"])
            else ("no" if not any(per[n]["identified"]) else "partly")
            for n in datasets
        )
        chosen = "; ".join(
            f"{n.upper()}: {', '.join(per[n]['chosen'])}" for n in datasets if per[n]["chosen"]
        )
        lines.append(
            f"| {LABELS[method]} | "
            + " | ".join(cells)
            + f" | {identified} | {chosen} | {entry['wall_seconds_total']:.0f} |"
        )
    if skipped:
        lines += ["", "Not run: " + "; ".join(f"{LABELS[m]} ({why})" for m, why in skipped.items())]
    lines += ["", "## Orderings the paper reports", ""]
    lines += [f"- [{'x' if c.passed else ' '}] {c.name}: {c.detail}" for c in checks]
    lines += [
        "",
        "Paper (its own MSE scale, AP / RM / MS / avg): physics near 0; GAT hybrid avg 37.6; "
        "HDTwinGen 416.3; LEADS 49.2 / 10.1 / 20.8 / 26.7; Diff-Only 50.4 / 10.3 / 18.5; "
        "React-Only 49.6 / 20.4 / 20.7; All-Neural 66.1 / 25.5 / 25.9.",
        "",
        f"Command: `{command}`. Machine: {machine['summary']}.",
    ]
    return "\n".join(lines) + "\n"


def plot_activation_maps(
    out: Path, runs: list[Run], dataset_paths: dict[str, Path], methods: list[str]
) -> Path | None:
    """Activation-time maps of the first test beat: truth, then each method, per data set."""
    from leads_engine.dataset import load_dataset
    from leads_engine.plots import plot_activation_grid

    rows = []
    for name, path in dataset_paths.items():
        maps: dict[str, np.ndarray] = {}
        for method in methods:
            run = next((r for r in runs if r.method == method and r.dataset == name), None)
            file = out / "runs" / f"{run.key}.npz" if run else None
            if file is None or not file.exists():
                continue
            with np.load(file) as data:
                maps.setdefault("truth", data["at_true"][0])
                maps[LABELS[method]] = data["at_pred"][0]
        if maps:
            dataset = load_dataset(path)
            rows.append((name.upper(), dataset.points, dataset.cells, maps))
    if not rows:
        return None
    return plot_activation_grid(rows, out / "activation_maps.png")


def machine_info() -> dict[str, Any]:
    import torch

    cores = os.cpu_count()
    summary = (
        f"{platform.machine()} {platform.processor() or 'CPU'}, {cores} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )
    return {"summary": summary, "cores": cores, "platform": platform.platform()}


# ------------------------------------------------------------------------------- driver


@dataclass
class BenchResult:
    table: dict[str, Any]
    checks: list[Check]
    records: list[dict[str, Any]]
    failures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures and all(c.passed for c in self.checks)


def planned_runs(config: BenchConfig) -> tuple[list[Run], dict[str, str]]:
    """The runs to do, longest first (they balance the workers), and the methods skipped."""
    skipped: dict[str, str] = {}
    methods = []
    for method in config.methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        if method in LLM_METHODS and config.llm == "offline":
            skipped[method] = "needs an LLM: --llm anthropic or --llm openai"
            continue
        methods.append(method)
    cost = {"react-only": 5, "diff-only": 4, "leads-offline": 6, "leads-llm": 6, "hdtwingen": 6}
    runs = [Run(m, d, s) for m in methods for d in config.datasets for s in config.seeds]
    runs.sort(key=lambda r: -cost.get(r.method, 1))
    return runs, skipped


def _load_record(out: Path, run: Run) -> dict[str, Any] | None:
    path = out / "runs" / f"{run.key}.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def run_bench(
    config: BenchConfig,
    console: Console | None = None,
    command: str = "leads-agent bench",
) -> BenchResult:
    """Run (or resume) the whole comparison and write the table, JSON and figure."""
    console = console or Console(stderr=True, quiet=True)
    out = config.out
    (out / "runs").mkdir(parents=True, exist_ok=True)
    dataset_paths = prepare_datasets(config, console.print)
    runs, skipped = planned_runs(config)
    todo = [r for r in runs if _load_record(out, r) is None]
    if len(todo) < len(runs):
        console.print(f"resuming: {len(runs) - len(todo)} of {len(runs)} runs already done")
    failures: dict[str, str] = {}
    if todo:
        failures = _execute(todo, dataset_paths, config, console)
    records = [r for r in (_load_record(out, run) for run in runs) if r is not None]
    table = summarise(records, config.datasets)
    checks = check_orderings(table, config.datasets)
    machine = machine_info()
    markdown = markdown_table(table, list(config.datasets), checks, machine, command, skipped)
    figure = plot_activation_maps(out, runs, dataset_paths, list(table))
    payload = {
        "config": {**asdict(config), "out": str(out)},
        "machine": machine,
        "command": command,
        "table": table,
        "checks": [asdict(c) for c in checks],
        "runs": records,
        "failures": failures,
        "skipped": skipped,
        "figure": None if figure is None else str(figure),
    }
    _write_json(out / "results.json", payload)
    (out / "results.md").write_text(markdown)
    return BenchResult(
        table,
        checks,
        records,
        failures,
        skipped,
        {"markdown": out / "results.md", "json": out / "results.json", "figure": figure},
    )


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


# ------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` command's options (shared by ``benchmarks/paper_tables.py``)."""
    parser.add_argument("--quick", action="store_true", help="CI size: tiny mesh, short horizon")
    parser.add_argument("--out", help="output folder (default $LEADS_HOME/bench/full|quick)")
    parser.add_argument("--datasets", nargs="+", default=["ap", "rm", "ms"])
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default: 0)")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, help="methods to run (default: all available)"
    )
    parser.add_argument("--epochs", type=int, help="epochs per candidate (full: 3)")
    parser.add_argument("--finetune", type=int, help="fine-tuning epochs (full: 10)")
    parser.add_argument("--budget", type=int, help="search steps (full: 15)")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (2)")
    parser.add_argument(
        "--llm",
        choices=["offline", "anthropic", "openai"],
        default="offline",
        help="LLM for the leads-llm and hdtwingen rows (offline: those rows are skipped)",
    )
    parser.add_argument("--model")
    parser.add_argument("--base-url")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    from leads_engine.dataset import leads_home

    out = (
        Path(args.out) if args.out else leads_home() / "bench" / ("quick" if args.quick else "full")
    )
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "datasets": tuple(args.datasets),
            "seeds": tuple(args.seeds) if args.seeds else None,
            "epochs": args.epochs,
            "finetune": args.finetune,
            "budget": args.budget,
            "workers": args.workers,
            "llm": args.llm,
            "model": args.model,
            "base_url": args.base_url,
        }.items()
        if value is not None
    }
    methods = tuple(args.methods) if args.methods else METHODS
    overrides["methods"] = methods
    if args.quick:
        return BenchConfig.quick_defaults(out, **overrides)
    return replace(BenchConfig(out=out), **overrides)


def run_command(args: argparse.Namespace, console: Console) -> int:
    """``leads-agent bench``: 0 when every run finished and every ordering holds, else 1."""
    from .cli import check_llm_config

    config = config_from_args(args)
    if config.llm != "offline":
        check_llm_config(config.llm, config.model, config.base_url)
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    result = run_bench(config, console, command=command)
    console.print(result.paths["markdown"].read_text(), markup=False, highlight=False)
    for key, error in result.failures.items():
        console.print(f"[red]failed[/] {key}: {error}")
    console.print(f"results: {result.paths['markdown']}, {result.paths['json']}")
    if result.paths.get("figure"):
        console.print(f"activation maps: {result.paths['figure']}")
    return 0 if result.passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(args, Console(stderr=True))
