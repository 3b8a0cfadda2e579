"""The cohort report: one row per data set (chosen structure, test MSE, AT MAE, wall time) and
the spread across the cohort (median, interquartile range, min and max), as markdown and JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

#: The per-data-set numbers whose spread the report gives.
SPREAD_FIELDS = ("test_mse", "at_mae_ms", "wall_seconds")


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` with linear interpolation between order statistics
    (numpy's default): for sorted x_0..x_{n-1}, position h = (n - 1) q,
    Q = x_floor(h) + (h - floor(h)) (x_ceil(h) - x_floor(h))."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def spread(values: list[float | None]) -> dict[str, Any]:
    """Median, quartiles, IQR, min and max of the finite ``values`` (and how many there were)."""
    finite = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not finite:
        return {"n": 0}
    q1, median, q3 = (quantile(finite, q) for q in (0.25, 0.5, 0.75))
    return {
        "n": len(finite),
        "median": median,
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "min": min(finite),
        "max": max(finite),
    }


def cohort_summary(entries: list[dict[str, Any]], wall_seconds: float) -> dict[str, Any]:
    """The report's JSON: the entries (one per data set) and the spread of their numbers."""
    done = [e for e in entries if e.get("status") == "done"]
    structures: dict[str, int] = {}
    for entry in done:
        if entry.get("structure"):
            structures[entry["structure"]] = structures.get(entry["structure"], 0) + 1
    return {
        "datasets": len(entries),
        "completed": len(done),
        "cohort_wall_seconds": round(wall_seconds, 2),
        "entries": entries,
        "spread": {name: spread([e.get(name) for e in done]) for name in SPREAD_FIELDS},
        "structures": dict(sorted(structures.items(), key=lambda item: -item[1])),
    }


def _number(value: Any, digits: int = 4) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}g}"


def cohort_markdown(summary: dict[str, Any], title: str) -> str:
    """The report as markdown."""
    lines = [
        f"# Cohort {title}",
        "",
        f"{summary['completed']} of {summary['datasets']} data sets completed; cohort wall time "
        f"{_number(summary['cohort_wall_seconds'], 5)} s.",
        "",
        "| data set | status | session | chosen structure | test MSE | AT MAE (ms) | wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in summary["entries"]:
        lines.append(
            f"| {entry['dataset']} | {entry.get('status', '-')} | {entry.get('session_id') or '-'} "
            f"| {entry.get('structure') or '-'} | {_number(entry.get('test_mse'))} "
            f"| {_number(entry.get('at_mae_ms'), 3)} | {_number(entry.get('wall_seconds'), 4)} |"
        )
    lines += [
        "",
        "## Spread across the cohort",
        "",
        "| quantity | n | median | IQR (q1-q3) | min | max |",
        "|---|---|---|---|---|---|",
    ]
    for name, stats in summary["spread"].items():
        if not stats.get("n"):
            lines.append(f"| {name} | 0 | - | - | - | - |")
            continue
        lines.append(
            f"| {name} | {stats['n']} | {_number(stats['median'])} | {_number(stats['iqr'])} "
            f"({_number(stats['q1'])}-{_number(stats['q3'])}) | {_number(stats['min'])} "
            f"| {_number(stats['max'])} |"
        )
    if summary["structures"]:
        lines += ["", "## Chosen structures", ""]
        lines += [f"- {name}: {count}" for name, count in summary["structures"].items()]
    failed = [e for e in summary["entries"] if e.get("error")]
    if failed:
        lines += ["", "## Errors", ""]
        lines += [f"- {e['dataset']}: {e['error']}" for e in failed]
    return "\n".join(lines) + "\n"


def write_cohort_report(
    folder: Path, entries: list[dict[str, Any]], wall_seconds: float, title: str
) -> tuple[Path, Path]:
    """Write ``cohort.md`` and ``cohort.json`` into ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = cohort_summary(entries, wall_seconds)
    markdown = folder / "cohort.md"
    markdown.write_text(cohort_markdown(summary, title), encoding="utf-8")
    data = folder / "cohort.json"
    data.write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    return markdown, data
