"""``leads-bench``: the paper's comparison table, measured here, in one command.

Also run as ``leads-agent bench`` (which starts ``python -m leads_bench`` with its arguments
and ``LEADS_BENCH_PROG=leads-agent bench``, the name usage lines and the results' command
line show) and as ``python benchmarks/paper_tables.py``. Exit code 0 when every run finished
and every ordering the paper reports holds, 1 otherwise, 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from leads_agent.cli import check_llm_config
from leads_agent.errors import ConfigurationError
from rich.console import Console

from leads_engine.dataset import leads_home

from .beyond import BEYOND_METHODS
from .config import METHODS, BenchConfig
from .harness import run_bench

__all__ = ["PROG_VARIABLE", "add_arguments", "build_parser", "config_from_args", "main"]

#: The environment variable naming the command that started the bench (``leads-agent bench``).
PROG_VARIABLE = "LEADS_BENCH_PROG"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench's options."""
    parser.add_argument("--quick", action="store_true", help="CI size: tiny mesh, short horizon")
    parser.add_argument(
        "--beyond",
        action="store_true",
        help="out-of-catalog truth: every method on Beeler-Reuter sets (isotropic, and "
        "anisotropic along rule-based fibres), next to the best catalog structure",
    )
    parser.add_argument("--out", help="output folder (default $LEADS_HOME/bench/full|quick)")
    parser.add_argument(
        "--datasets", nargs="+", help="data sets (default ap rm ms; --beyond: br, br_aniso)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default: 0)")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=BEYOND_METHODS,
        help="methods to run (default: all available; catalog-best with --beyond only)",
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


def program_name() -> str:
    """How the bench was started: ``$LEADS_BENCH_PROG``, else the script's name."""
    named = os.environ.get(PROG_VARIABLE)
    if named:
        return named
    script = Path(sys.argv[0]).name
    return "python -m leads_bench" if script == "__main__.py" else script


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The bench's argument parser."""
    parser = argparse.ArgumentParser(
        prog=prog or program_name(),
        description="The paper's comparison table (all methods, AP/RM/MS, seeds), measured here.",
    )
    add_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The run's settings from the parsed options (quick or full-size defaults)."""
    size = "quick" if args.quick else "full"
    out = (
        Path(args.out)
        if args.out
        else leads_home() / "bench" / (f"beyond_{size}" if args.beyond else size)
    )
    if args.beyond and args.datasets:
        raise ConfigurationError("--beyond makes its own data sets (br, br_aniso): no --datasets")
    if not args.beyond and args.methods and "catalog-best" in args.methods:
        raise ConfigurationError("catalog-best is a --beyond row")
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "datasets": tuple(args.datasets) if args.datasets else None,
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
    default = BEYOND_METHODS if args.beyond else METHODS
    overrides["methods"] = tuple(args.methods) if args.methods else default
    overrides["beyond"] = args.beyond
    if args.quick:
        return BenchConfig.quick_defaults(out, **overrides)
    return replace(BenchConfig(out=out), **overrides)


def run_command(args: argparse.Namespace, console: Console, command: str) -> int:
    """Run the bench the options ask for and print its table; 0 when every run finished and
    every ordering holds, else 1. Raises :class:`ConfigurationError` for an LLM without its
    key or model."""
    config = config_from_args(args)
    if config.llm != "offline":
        check_llm_config(config.llm, config.model, config.base_url)
    result = run_bench(config, console, command=command)
    console.print(result.paths["markdown"].read_text(), markup=False, highlight=False)
    for key, error in result.failures.items():
        console.print(f"[red]failed[/] {key}: {error}")
    console.print(f"results: {result.paths['markdown']}, {result.paths['json']}")
    if result.paths.get("figure"):
        console.print(f"activation maps: {result.paths['figure']}")
    return 0 if result.passed else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 a run failed or an ordering does not hold,
    2 configuration error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = program_name()
    args = build_parser(prog).parse_args(argv)
    console = Console(stderr=True)
    try:
        return run_command(args, console, command=" ".join([prog, *argv]))
    except ConfigurationError as exc:
        console.print(f"[red]error:[/] {exc}")
        return exc.exit_code
