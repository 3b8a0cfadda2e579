"""The scripted baselines on the benchmark sets, printed as a table.

    python benchmarks/baselines.py [--datasets ap rm ms] [--methods physics hybrid-gat ...]
        [--epochs 3] [--finetune 10] [--json results.json] [--figures DIR]

Each row: test MSE, activation-time MAE (ms), the structure chosen and the wall time. Data sets
missing under ``$LEADS_HOME`` are generated first.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from leads_bench.baselines import BASELINES, run_baseline
from rich.console import Console
from rich.table import Table

from leads_engine.dataset import load_dataset
from leads_engine.generator import benchmark_path
from leads_engine.plots import plot_activation_comparison


def _dataset(name: str):
    return load_dataset(benchmark_path(name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["ap", "rm", "ms"])
    parser.add_argument("--methods", nargs="+", default=list(BASELINES), choices=BASELINES)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--finetune", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--figures", type=Path, help="folder for AT maps per method")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    table = Table("data set", "method", "reaction", "diffusion", "test MSE", "AT MAE (ms)", "s")
    results = []
    for name in args.datasets:
        dataset = _dataset(name)
        for method in args.methods:
            started = time.perf_counter()
            result = run_baseline(method, dataset, args.epochs, args.finetune)
            seconds = time.perf_counter() - started
            summary = {"dataset": name, **result.summary(), "seconds": round(seconds, 1)}
            results.append(summary)
            table.add_row(
                name,
                method,
                result.chosen.reaction,
                result.chosen.diffusion,
                f"{result.evaluation.mse:.5f}",
                f"{result.evaluation.activation_error.mae:.2f}",
                f"{seconds:.0f}",
            )
            console.print(
                f"{name} {method}: test MSE {result.evaluation.mse:.5f}, AT MAE "
                f"{result.evaluation.activation_error.mae:.2f} ms ({seconds:.0f} s)"
            )
            if args.figures:
                plot_activation_comparison(
                    dataset.points,
                    dataset.cells,
                    result.evaluation.at_true[0],
                    result.evaluation.at_pred[0],
                    args.figures / f"{name}_{method}_at.png",
                    titles=("true", f"{method}"),
                )
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
