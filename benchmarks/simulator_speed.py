"""Forward-simulation speed: the torch simulator against the scipy/numpy reference.

Integrates one beat of the Aliev-Panfilov model on the bundled mesh for a batch of pacing
sites (default 20) with explicit Euler, and prints node-steps per second for

* ``torch``: :func:`leads_engine.simulator.simulate` (sparse CSR, explicit Euler on the frame
  grid), and the same through ``torchdiffeq.odeint(method="euler")`` for comparison, and
* ``scipy``: :func:`leads_engine.reference.reference_simulate` (scipy.sparse + numpy) on the
  same batch, in the same process,

with their ratio and the largest difference between the two trajectories.

    python benchmarks/simulator_speed.py [--batch 20] [--duration 500] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from leads_engine.heart_mesh import bundled_mesh
from leads_engine.reactions import build_reaction
from leads_engine.reference import reference_simulate
from leads_engine.simulator import Pacing, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--duration", type=float, default=500.0, help="ms")
    parser.add_argument("--step-size", type=float, default=0.05, help="ms")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    mesh = bundled_mesh()
    sigma = np.full(mesh.n_nodes, 1.5)
    laplacian = mesh.laplacian(sigma)
    sites = np.linspace(0, mesh.n_nodes - 1, args.batch).astype(int).tolist()
    distances = mesh.graph_distances(sites)
    pacing = Pacing(sites, radius=6.0)
    reaction = build_reaction("ap", learnable=False)
    n_steps = int(round(args.duration / args.step_size))
    record_every = int(round(2.0 / args.step_size))
    t = np.arange(0, n_steps + 1, record_every) * args.step_size
    node_steps = mesh.n_nodes * args.batch * n_steps

    def run_torch(native: bool) -> tuple[np.ndarray, float]:
        with torch.no_grad():
            simulate(  # warm-up: allocator, lazy inits and, when asked, compilation
                laplacian,
                reaction,
                pacing,
                t[:2],
                distances,
                step_size=args.step_size,
                device=args.device,
                native_euler=native,
            )
            started = time.perf_counter()
            result = simulate(
                laplacian,
                reaction,
                pacing,
                t,
                distances,
                step_size=args.step_size,
                device=args.device,
                native_euler=native,
            )
        return result.u.cpu().numpy(), time.perf_counter() - started

    started = time.perf_counter()
    u_ref = reference_simulate(
        laplacian,
        "aliev_panfilov",
        reaction.parameter_values(),
        pacing.region(distances),
        n_steps,
        args.step_size,
        record_every,
    )
    scipy_seconds = time.perf_counter() - started

    print(
        f"mesh {mesh.n_nodes} nodes, batch {args.batch}, {n_steps} Euler steps of "
        f"{args.step_size} ms, {args.threads} threads"
    )
    print(
        f"{'scipy reference':<24} {scipy_seconds:6.2f} s  {node_steps / scipy_seconds:.3g} "
        "node-steps/s"
    )
    for label, native in [("torch", True), ("torch via odeint", False)]:
        u_torch, seconds = run_torch(native)
        print(
            f"{label + f' ({args.device})':<24} {seconds:6.2f} s  {node_steps / seconds:.3g} "
            f"node-steps/s  speed vs scipy {scipy_seconds / seconds:.2f}x  "
            f"max|du| {np.abs(u_torch - u_ref).max():.1e}"
        )


if __name__ == "__main__":
    main()
