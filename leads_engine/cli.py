"""``leads-data``: generate, list and inspect LEADS data sets.

leads-data generate --reaction ap rm ms     # the paper's three benchmark sets
leads-data make-egm --reaction ap           # synthetic electrogram stand-in (egm_ap)
leads-data import --mesh heart.vtk --signals s.npy --times t.npy --electrodes pos.npy \
    --name utah_like                        # a real recording (see leads_engine.recordings)
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
from .generator import MIN_ACTIVATED_FRACTION, BenchmarkConfig, generate_benchmark
from .mesh import MeshError, load_mesh
from .metrics import activation_summary, activation_times
from .reactions.generator_models import (
    GENERATOR_ALIASES,
    in_search_catalog,
    resolve_generator_reaction,
)
from .recordings import RecordingError, import_recording, make_egm_standin, standin_config


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
        help=f"ground-truth reaction model(s): {', '.join(GENERATOR_ALIASES)} (or full names; "
        "br, Beeler-Reuter 1977, is not in the search catalog)",
    )
    gen.add_argument(
        "--allow-partial",
        action="store_true",
        # argparse %-formats help: the percent sign is doubled
        help=f"keep a set whose wave dies out before activating {MIN_ACTIVATED_FRACTION:.0%}% of "
        "the nodes (refused otherwise)",
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
    gen.add_argument(
        "--fibers",
        choices=("none", "rule", "mesh"),
        default="none",
        help="fibre field: none (isotropic, default), rule (helix about the long axis) or mesh "
        "(the --mesh file's point/cell data 'fibers', 'fibres', 'fiber', 'fibre' or 'f0')",
    )
    gen.add_argument(
        "--anisotropy",
        type=float,
        default=None,
        help="ratio R of the conductivities along/across the fibres (speeds differ by sqrt(R)); "
        "default 3 with --fibers rule|mesh",
    )
    gen.add_argument("--force", action="store_true", help="overwrite an existing data set")

    egm = commands.add_parser(
        "make-egm", help="synthetic electrogram recording (stand-in for real data)"
    )
    egm.add_argument("--reaction", default="ap", help="ground-truth reaction (default ap)")
    egm.add_argument("--name", help="data set name (default egm_<alias>)")
    egm.add_argument("--out", type=Path, help="folder to write to (default $LEADS_HOME/datasets)")
    egm.add_argument("--mesh", type=Path, help="a user mesh file instead of the bundled one")
    egm.add_argument("--samples", type=int, default=20, help="pacing sites (default 20)")
    egm.add_argument(
        "--split", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"), help="default 12 3 5"
    )
    egm.add_argument("--duration", type=float, default=500.0, help="ms (default 500)")
    egm.add_argument("--frame-interval", type=float, default=2.0, help="ms (default 2)")
    egm.add_argument("--electrodes", type=int, default=64, help="electrode count (default 64)")
    egm.add_argument(
        "--noise", type=float, default=0.02, help="noise std / signal std (default 0.02)"
    )
    egm.add_argument(
        "--wander", type=float, default=0.1, help="baseline wander / signal std (default 0.1)"
    )
    egm.add_argument("--keep-tmp", action="store_true", help="also store the true TMP as u")
    egm.add_argument("--seed", type=int, default=0)
    egm.add_argument("--force", action="store_true", help="overwrite an existing data set")

    imp = commands.add_parser(
        "import", help="validate a recording (mesh, signals, lead field) and store it"
    )
    imp.add_argument("--mesh", type=Path, required=True, help="mesh file (any meshio format)")
    imp.add_argument(
        "--signals", type=Path, required=True, help=".npy [samples, frames, electrodes]"
    )
    imp.add_argument("--times", type=Path, required=True, help=".npy [frames], ms, uniform")
    how = imp.add_mutually_exclusive_group(required=True)
    how.add_argument("--lead-field", type=Path, help=".npy H [electrodes, nodes]")
    how.add_argument(
        "--electrodes", type=Path, help=".npy positions [electrodes, 3] mm (infinite-medium H)"
    )
    how.add_argument(
        "--contact-nodes", type=Path, help=".npy [electrodes] node indices (TMP observed there)"
    )
    imp.add_argument("--pacing-sites", type=Path, help=".npy [samples] node indices")
    imp.add_argument(
        "--activation-times", type=Path, help=".npy ms, [samples, nodes] or [samples, electrodes]"
    )
    imp.add_argument("--split", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"))
    imp.add_argument(
        "--normalisation",
        choices=("standardise", "none"),
        default="standardise",
        help="per-electrode loss normalisation (default standardise, train-split statistics)",
    )
    imp.add_argument(
        "--pacing-radius", type=float, default=6.0, help="initial stimulus radius mm (default 6)"
    )
    imp.add_argument("--name", required=True, help="data set name")
    imp.add_argument("--out", type=Path, help="folder to write to (default $LEADS_HOME/datasets)")
    imp.add_argument("--seed", type=int, default=0, help="seed of the split assignment")
    imp.add_argument("--force", action="store_true", help="overwrite an existing data set")

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
    reactions = [resolve_generator_reaction(r) for r in args.reaction]
    if args.name and len(reactions) > 1:
        raise ValueError("--name applies to one reaction only")
    if args.fibers == "mesh" and not args.mesh:
        raise ValueError("--fibers mesh reads the fibres of a --mesh file; give one")
    if args.fibers == "none" and args.anisotropy not in (None, 1.0):
        raise ValueError("--anisotropy needs a fibre field: add --fibers rule (or mesh)")
    anisotropy = args.anisotropy
    if anisotropy is None:
        anisotropy = 3.0 if args.fibers != "none" else 1.0
    fibers = {"fibers": args.fibers, "anisotropy": anisotropy}
    mesh_fibers = "auto" if args.fibers == "mesh" else None
    mesh = load_mesh(args.mesh, fibers=mesh_fibers) if args.mesh else None
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
            **fibers,
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
                config,
                mesh,
                progress=lambda f, t=task: bar.update(t, completed=f),
                name=name,
                allow_partial=args.allow_partial,
            )
        dataset.save(path)
        seconds = time.perf_counter() - started
        at = activation_times(dataset.u, dataset.t)
        summary = {**dataset.summary(), **activation_summary(at)}
        console.print(f"wrote {path} in {seconds:.1f} s")
        _print_activation(console, dataset.meta["activation"], config.reaction)
        _print_summary(console, summary)
    return 0


def _print_activation(console: Console, activation: dict, reaction: str) -> None:
    """The share of nodes the set's beats activate, loudly when under the minimum."""
    worst, mean = activation["fraction_activated_min"], activation["fraction_activated_mean"]
    line = f"activated: {mean:.1%} of the nodes on average, {worst:.1%} in the worst beat"
    if activation["beats_stalled"]:
        console.print(
            f"[bold red]warning:[/] {line}; the wave dies out in {activation['beats_stalled']} "
            f"of {activation['beats']} beats (kept because of --allow-partial)"
        )
    elif activation["beats_truncated"]:
        console.print(
            f"[bold yellow]warning:[/] {line}; the window ends while the wave still spreads in "
            f"{activation['beats_truncated']} of {activation['beats']} beats: lengthen "
            f"--duration for {MIN_ACTIVATED_FRACTION:.0%} activation"
        )
    else:
        console.print(line)
    if not in_search_catalog(reaction):
        console.print(f"{reaction} is not in the search catalog: no candidate holds the truth")


def _target(folder: Path | None, name: str, force: bool, console: Console) -> Path | None:
    """Where to write ``name``; ``None`` (with a note) when it exists and ``force`` is off."""
    path = (folder or datasets_dir()) / f"{name}.npz"
    if path.exists() and not force:
        console.print(f"[yellow]{path} exists[/]; keeping it (use --force to regenerate)")
        return None
    return path


def _dataset_activation_times(dataset) -> np.ndarray | None:
    """AT maps of the TMP, or the measured ones of a recording (``None`` if neither)."""
    if dataset.u is not None:
        return activation_times(dataset.u, dataset.t)
    measured = dataset.extras.get("measured_activation_times")
    if measured is not None and measured.shape[1] == dataset.n_nodes:
        return measured
    return None


def _make_egm(args: argparse.Namespace, console: Console) -> int:
    alias = args.reaction
    name = args.name or f"egm_{alias.lower()}"
    path = _target(args.out, name, args.force, console)
    if path is None:
        return 0
    split = {"split_sizes": tuple(args.split)} if args.split else {}  # default 12/3/5 for 20
    config = standin_config(
        alias,
        n_samples=args.samples,
        duration_ms=args.duration,
        frame_interval_ms=args.frame_interval,
        seed=args.seed,
        n_electrodes=args.electrodes,
        noise_ratio=args.noise,
        wander_ratio=args.wander,
        keep_tmp=args.keep_tmp,
        **split,
    )
    started = time.perf_counter()
    dataset = make_egm_standin(config, load_mesh(args.mesh) if args.mesh else None, name=name)
    dataset.save(path)
    console.print(f"wrote {path} in {time.perf_counter() - started:.1f} s")
    _print_summary(console, _recording_summary(dataset))
    return 0


def _recording_summary(dataset) -> dict:
    summary = dataset.summary()
    if dataset.is_recording:
        summary["electrodes"] = int(dataset.extras["signals"].shape[2])
        summary["observation"] = (dataset.meta.get("observation") or {}).get("kind", "lead_field")
    at = _dataset_activation_times(dataset)
    return {**summary, **activation_summary(at)} if at is not None else summary


def _import(args: argparse.Namespace, console: Console) -> int:
    path = _target(args.out, args.name, args.force, console)
    if path is None:
        return 0
    dataset = import_recording(
        args.mesh,
        args.signals,
        args.times,
        lead_field=args.lead_field,
        electrodes=args.electrodes,
        contact_nodes=args.contact_nodes,
        pacing_sites=args.pacing_sites,
        activation_times_ms=args.activation_times,
        split=tuple(args.split) if args.split else None,
        name=args.name,
        normalisation=args.normalisation,
        pacing_radius_mm=args.pacing_radius,
        seed=args.seed,
    )
    dataset.save(path)
    console.print(f"wrote {path}")
    _print_summary(console, _recording_summary(dataset))
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
    at = _dataset_activation_times(dataset)
    summary = _recording_summary(dataset)
    if args.json:
        console.print_json(json.dumps(summary))
    else:
        _print_summary(console, summary)
    if args.plot and (at is None or dataset.u is None):
        console.print("[yellow]no TMP in this recording[/]: nothing to plot")
    elif args.plot:
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
        if args.command == "make-egm":
            return _make_egm(args, console)
        if args.command == "import":
            return _import(args, console)
        if args.command == "list":
            return _list(console)
        return _show(args, console)
    except (DatasetError, MeshError, RecordingError, ValueError) as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
