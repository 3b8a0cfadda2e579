"""The paper's Tables 2 and 3 from the runs' records: mean and spread over seeds, the
orderings the paper reports checked on our numbers, ``results.md`` and the activation-time
maps figure."""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .config import LABELS, METHODS, PAPER_LEADS_OVER_GAT, Check, Run

__all__ = [
    "check_orderings",
    "machine_info",
    "markdown_table",
    "plot_activation_maps",
    "summarise",
]


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


def first_beat_maps(
    out: Path, runs: list[Run], dataset: str, methods: list[str]
) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """The first test beat's activation times on ``dataset``: the truth and, by method label,
    each finished run's prediction (``<out>/runs/<key>.npz``)."""
    truth = None
    maps: dict[str, np.ndarray] = {}
    for method in methods:
        run = next((r for r in runs if r.method == method and r.dataset == dataset), None)
        file = out / "runs" / f"{run.key}.npz" if run else None
        if file is None or not file.exists():
            continue
        with np.load(file) as data:
            truth = data["at_true"][0] if truth is None else truth
            maps[LABELS.get(method, method)] = data["at_pred"][0]
    return truth, maps


def plot_activation_maps(
    out: Path, runs: list[Run], dataset_paths: dict[str, Path], methods: list[str]
) -> Path | None:
    """Activation-time maps of the first test beat: truth, then each method, per data set."""
    from leads_engine.dataset import load_dataset
    from leads_engine.plots import plot_activation_grid

    rows = []
    for name, path in dataset_paths.items():
        truth, maps = first_beat_maps(out, runs, name, methods)
        if maps:
            dataset = load_dataset(path)
            rows.append((name.upper(), dataset.points, dataset.cells, {"truth": truth, **maps}))
    if not rows:
        return None
    return plot_activation_grid(rows, out / "activation_maps.png")


def machine_info() -> dict[str, Any]:
    """The machine the numbers were measured on (for the table's footer)."""
    import torch

    cores = os.cpu_count()
    summary = (
        f"{platform.machine()} {platform.processor() or 'CPU'}, {cores} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )
    return {"summary": summary, "cores": cores, "platform": platform.platform()}
