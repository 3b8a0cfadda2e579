"""What ``leads-bench`` runs: its settings, the methods and their labels, and the paper's
figures our numbers are checked against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BASELINE_METHODS",
    "LABELS",
    "LLM_METHODS",
    "METHODS",
    "PAPER_LEADS_OVER_GAT",
    "PAPER_MSE",
    "QUICK_DATA",
    "SEARCH_METHODS",
    "BenchConfig",
    "Check",
    "Run",
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
    "catalog-best": "Best catalog structure (catalog reaction + FE Laplacian)",
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

#: The quick mode's data sets: (mesh nodes, samples, split, duration in ms).
QUICK_DATA = {"nodes": 300, "samples": 16, "split": (10, 3, 3), "duration_ms": 80.0}


@dataclass(frozen=True)
class BenchConfig:
    """What ``leads-bench`` runs."""

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
    #: the out-of-catalog comparison (``--beyond``, :mod:`leads_bench.beyond`)
    beyond: bool = False

    @classmethod
    def quick_defaults(cls, out: Path, **overrides: Any) -> BenchConfig:
        """The CI-sized run: tiny mesh, short horizon, one seed, a shorter search.

        The epochs and each template's batch size stay the full size's (10 training beats:
        5 optimizer steps per epoch for the physical templates, 1 for the neural ones).
        """
        values: dict[str, Any] = {"seeds": (0,), "budget": 8, "quick": True}
        values.update(overrides)
        return cls(out=out, **values)


@dataclass(frozen=True)
class Run:
    """One method on one data set with one seed."""

    method: str
    dataset: str
    seed: int

    @property
    def key(self) -> str:
        """The run's file name stem under ``<out>/runs`` (and its archive's)."""
        return f"{self.method}__{self.dataset}__seed{self.seed}"


@dataclass
class Check:
    """One ordering the paper reports, checked on our numbers."""

    name: str
    passed: bool
    detail: str


def plan_runs(
    config: BenchConfig,
    known: tuple[str, ...],
    datasets: list[str] | tuple[str, ...],
    cost: dict[str, int],
) -> tuple[list[Run], dict[str, str]]:
    """The runs of ``config``'s methods on ``datasets``, longest first by ``cost`` (they balance
    the workers), and the methods skipped with why; a method outside ``known`` is refused."""
    skipped: dict[str, str] = {}
    methods = []
    for method in config.methods:
        if method not in known:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(known)}")
        if method in LLM_METHODS and config.llm == "offline":
            skipped[method] = "needs an LLM: --llm anthropic or --llm openai"
            continue
        methods.append(method)
    runs = [Run(m, d, s) for m in methods for d in datasets for s in config.seeds]
    runs.sort(key=lambda r: -cost.get(r.method, 1))
    return runs, skipped
