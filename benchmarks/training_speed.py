"""Training speed and memory of one candidate on a full benchmark set.

Fits a candidate (default: the true reaction + GAT diffusion, the human-designed hybrid) for a
few epochs on a full benchmark set (20 training trajectories, bundled mesh, 500 ms horizon)
and prints seconds per epoch, training node-steps per second and peak memory. Runs on CUDA
when present (``--device cuda``).

In the same run it first times the forward simulator (:func:`leads_engine.simulator.simulate`,
Aliev-Panfilov, batch 20, 500 ms at 0.05 ms, the data generator's integrator) and prints each
template's training throughput as a fraction of it (issue 17's targets: physical templates at
least 1/8, neural ones at least 1/15). A training node-step is one node advanced by one
integration step of the fit (0.4 ms, its reaction sub-steps included) forward and backward.
Per-epoch times are printed; ``steady`` is the mean over the epochs after the first, which
carries the one-off compilation of the integrator's kernels.

    python benchmarks/training_speed.py [--dataset ap] [--diffusion gat] [--epochs 3]

The data set is generated under ``$LEADS_HOME`` if missing.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from leads_engine.dataset import load_dataset
from leads_engine.generator import benchmark_path
from leads_engine.heart_mesh import bundled_mesh
from leads_engine.reactions import build_reaction
from leads_engine.simulator import Pacing, simulate
from leads_engine.spec import CandidateSpec
from leads_engine.training import TrainingConfig, TrainingProgress, fit


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.5f}"


def simulator_node_steps(device: torch.device, batch: int = 20, duration: float = 500.0) -> float:
    """Node-steps per second of the forward simulator: one Aliev-Panfilov beat on the bundled
    mesh for ``batch`` pacing sites, explicit Euler at 0.05 ms (after a short warm-up)."""
    mesh = bundled_mesh()
    laplacian = mesh.laplacian(np.full(mesh.n_nodes, 1.5))
    sites = np.linspace(0, mesh.n_nodes - 1, batch).astype(int).tolist()
    distances = mesh.graph_distances(sites)
    reaction = build_reaction("ap", learnable=False)
    step = 0.05
    t = np.arange(0.0, duration + 1e-9, 2.0)

    def run(times: np.ndarray) -> float:
        started = time.perf_counter()
        with torch.no_grad():
            simulate(laplacian, reaction, Pacing(sites), times, distances, device=device)
        return time.perf_counter() - started

    run(t[:2])
    return mesh.n_nodes * batch * round(duration / step) / run(t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ap", help="benchmark set name (ap, rm, ms)")
    parser.add_argument("--reaction", help="reaction model (default: the data set's true one)")
    parser.add_argument("--diffusion", nargs="+", default=["gat"], help="template(s) to time")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: each template's catalog batch size"
    )
    parser.add_argument("--steps-per-frame", type=int, default=TrainingConfig.steps_per_frame)
    parser.add_argument("--reaction-substeps", type=int, default=TrainingConfig.reaction_substeps)
    parser.add_argument(
        "--refresh-frames",
        type=int,
        default=TrainingConfig.conductance_refresh_frames,
        help="frames over which conductances are held (default: the catalog's)",
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--no-checkpoint", action="store_true", help="store the networks' activations"
    )
    parser.add_argument("--no-compile", action="store_true", help="train with the eager integrator")
    parser.add_argument(
        "--no-simulator", action="store_true", help="skip the forward simulator's reference"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dataset = load_dataset(benchmark_path(args.dataset))
    reaction = args.reaction or dataset.meta["reaction"]
    config = TrainingConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        steps_per_frame=args.steps_per_frame,
        reaction_substeps=args.reaction_substeps,
        conductance_refresh_frames=args.refresh_frames,
        device=args.device,
        patience=args.epochs,
        compile=not args.no_compile,
        checkpoint_frames=None if args.no_checkpoint else TrainingConfig.checkpoint_frames,
    )
    device = config.torch_device()
    n_train = len(dataset.indices("train"))
    n_val = len(dataset.indices("val"))
    steps = (dataset.n_frames - 1) * config.steps_per_frame
    print(
        f"data set {dataset.name}: {n_train} train / {n_val} val trajectories, {dataset.n_nodes} "
        f"nodes, {dataset.n_frames} frames, {steps} Euler steps of "
        f"{(dataset.t[1] - dataset.t[0]) / config.steps_per_frame:g} ms; device {device}, "
        f"{args.threads} threads, batch {config.batch_size or 'of each template'}"
    )
    simulator = None
    if not args.no_simulator:
        simulator = simulator_node_steps(device)
        print(f"forward simulator (batch 20, 0.05 ms steps): {simulator:.3g} node-steps/s")
    for template in args.diffusion:
        spec = CandidateSpec(reaction=reaction, diffusion=template)
        epoch_times: list[float] = []
        last = [time.perf_counter()]

        def on_progress(event: TrainingProgress, times=epoch_times, mark=last) -> None:
            if event.phase == "epoch":
                now = time.perf_counter()
                times.append(now - mark[0])
                mark[0] = now

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result = fit(spec, dataset, config, progress=on_progress)
        peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        epoch_node_steps = dataset.n_nodes * n_train * steps
        steady_times = epoch_times[1:] or epoch_times
        steady = epoch_node_steps / max(sum(steady_times) / max(len(steady_times), 1), 1e-9)
        line = (
            f"{reaction} + {template:<18} params {result.parameter_count:>6}  batch "
            f"{config.for_template(template).batch_size:>2}  status "
            f"{result.status:<8} {result.wall_seconds:6.1f} s for {len(epoch_times)} epochs "
            f"(epochs {' '.join(f'{t:.1f}' for t in epoch_times)} s)  steady "
            f"{steady:.3g} train node-steps/s"
        )
        if simulator:
            line += f" = 1/{simulator / steady:.1f} of the simulator"
        line += f"  val MSE {_format(result.best_val_loss)}  peak RSS {peak_rss_gb:.2f} GB"
        if device.type == "cuda":
            line += f"  peak CUDA {torch.cuda.max_memory_allocated() / 2**30:.2f} GB"
        print(line, flush=True)


if __name__ == "__main__":
    main()
