"""``leads-data``: generate, list and inspect LEADS data sets.

leads-data generate --reaction ap rm ms     # the paper's three benchmark sets
leads-data list
leads-data show ap --plot out/              # summary, validation, AT map and traces
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .dataset import DatasetError, datasets_dir, load_dataset, resolve_dataset_path
from .generator import BenchmarkConfig, generate_benchmark
from .mesh import MeshError, load_mesh
from .metrics import activation_summary, activation_times
from .reactions import ALIASES, resolve_reaction_name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leads-data",
        description="Generate, list and inspect LEADS data sets ($LEADS_HOME/datasets).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: as fast as 2 on the bundled mesh, and far faster when "
        "another process keeps a core busy)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="simulate a synthetic benchmark data set")
    gen.add_argument(
        "--reaction",
        nargs="+",
        default=["ap"],
        help=f"ground-truth reaction model(s): {', '.join(ALIASES)} (or full names)",
    )
    gen.add_argument(
        "--name", help="data set name (default: the reaction alias); one reaction only"
    )
    gen.add_argument("--out", type=Path, help="folder to write to (default $LEADS_HOME/datasets)")
    gen.add_argument(
        "--mesh", type=Path, help="a user mesh file (meshio format) instead of the bundled one"
    )
    gen.add_argument("--samples", type=int, default=32, help="number of pacing sites (default 32)")
    gen.add_argument(
        "--split", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"), help="default 20 6 6 for 32"
    )
    gen.add_argument(
        "--duration", type=float, default=500.0, help="time window in ms (default 500)"
    )
    gen.add_argument(
        "--frame-interval", type=float, default=2.0, help="ms between frames (default 2)"
    )
    gen.add_argument(
        "--step-size", type=float, default=0.05, help="integration step in ms (default 0.05)"
    )
    gen.add_argument("--method", default="euler", help="torchdiffeq method (default euler)")
    gen.add_argument("--noise", type=float, default=0.0, help="std of Gaussian observation noise")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--force", action="store_true", help="overwrite an existing data set")

    commands.add_parser("list", help="list the data sets under $LEADS_HOME/datasets")

    show = commands.add_parser("show", help="validate a data set and print its summary")
    show.add_argument("dataset", help="name under $LEADS_HOME/datasets or a path to a .npz")
    show.add_argument("--plot", type=Path, help="folder for an activation map and TMP traces (PNG)")
    show.add_argument("--sample", type=int, default=0, help="sample to plot (default 0)")
    show.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def _split_sizes(samples: int, split: list[int] | None) -> tuple[int, int, int]:
    if split is not None:
        return (split[0], split[1], split[2])
    val = test = max(1, round(samples * 6 / 32)) if samples >= 3 else 0
    return (samples - val - test, val, test)


def _generate(args: argparse.Namespace, console: Console) -> int:
    reactions = [resolve_reaction_name(r) for r in args.reaction]
    if args.name and len(reactions) > 1:
        raise ValueError("--name applies to one reaction only")
    mesh = load_mesh(args.mesh) if args.mesh else None
    folder = args.out or datasets_dir()
    for alias in args.reaction:
        config = BenchmarkConfig(
            reaction=alias,
            n_samples=args.samples,
            split_sizes=_split_sizes(args.samples, args.split),
            duration_ms=args.duration,
            frame_interval_ms=args.frame_interval,
            step_size_ms=args.step_size,
            method=args.method,
            noise_std=args.noise,
            seed=args.seed,
        )
        name = args.name or alias.lower()
        path = folder / f"{name}.npz"
        if path.exists() and not args.force:
            console.print(f"[yellow]{path} exists[/]; keeping it (use --force to regenerate)")
            continue
        started = time.perf_counter()
        with Progress(
            TextColumn(f"[bold]{name}[/] ({config.reaction})"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=not console.is_terminal,
        ) as bar:
            task = bar.add_task("simulate", total=1.0)
            dataset = generate_benchmark(
                config, mesh, progress=lambda f, t=task: bar.update(t, completed=f), name=name
            )
        dataset.save(path)
        seconds = time.perf_counter() - started
        at = activation_times(dataset.u, dataset.t)
        summary = {**dataset.summary(), **activation_summary(at)}
        console.print(f"wrote {path} in {seconds:.1f} s")
        _print_summary(console, summary)
    return 0


def _print_summary(console: Console, summary: dict) -> None:
    table = Table(show_header=False, box=None, padding=(0, 2))
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        table.add_row(key, str(value))
    console.print(table)


def _list(console: Console) -> int:
    files = sorted(datasets_dir().glob("*.npz"))
    if not files:
        console.print(f"no data sets in {datasets_dir()}; make one with `leads-data generate`")
        return 0
    table = Table("name", "reaction", "samples", "frames", "nodes", "t_end (ms)", "MB", "status")
    for path in files:
        size = f"{path.stat().st_size / 1e6:.1f}"
        try:
            s = load_dataset(path).summary()
            table.add_row(
                path.stem,
                str(s["reaction"]),
                str(s["samples"]),
                str(s["frames"]),
                str(s["nodes"]),
                f"{s['t_end_ms']:g}",
                size,
                "ok",
            )
        except DatasetError as exc:
            table.add_row(path.stem, "?", "?", "?", "?", "?", size, f"[red]invalid: {exc}[/]")
    console.print(table)
    return 0


def _show(args: argparse.Namespace, console: Console) -> int:
    dataset = load_dataset(resolve_dataset_path(args.dataset))
    at = activation_times(dataset.u, dataset.t)
    summary = {**dataset.summary(), **activation_summary(at)}
    if args.json:
        console.print_json(json.dumps(summary))
    else:
        _print_summary(console, summary)
    if args.plot:
        from .plots import plot_activation_map, plot_traces

        if not 0 <= args.sample < dataset.n_samples:
            raise ValueError(f"--sample must be in [0, {dataset.n_samples})")
        site = int(dataset.pacing_site[args.sample])
        order = np.argsort(np.nan_to_num(at[args.sample], nan=np.inf))
        nodes = [site, int(order[len(order) // 2]), int(order[-1])]
        map_path = plot_activation_map(
            dataset.points,
            dataset.cells,
            at[args.sample],
            args.plot / f"{dataset.name}_sample{args.sample}_activation.png",
            title=f"{dataset.name} sample {args.sample}: activation time (ms)",
        )
        trace_path = plot_traces(
            dataset.t,
            dataset.u[args.sample],
            nodes,
            args.plot / f"{dataset.name}_sample{args.sample}_traces.png",
            labels=["pacing site", "median AT", "latest AT"],
        )
        console.print(f"wrote {map_path} and {trace_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    console = Console()
    try:
        if args.command == "generate":
            return _generate(args, console)
        if args.command == "list":
            return _list(console)
        return _show(args, console)
    except (DatasetError, MeshError, ValueError) as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
