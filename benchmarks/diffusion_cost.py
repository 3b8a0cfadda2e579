"""Cost of every diffusion template: parameters, forward and forward+backward time per call.

Builds each catalog template with its default hyper-parameters on the bundled mesh, evaluates
it on a batch of potentials (default 20 samples) and prints the parameter count and the median
wall time of ``--repeats`` evaluations after ``--warmup`` untimed ones, for a forward pass
alone and for forward + backward (loss = mean square of the output; gradients with respect to
the parameters and to ``u``, as when fitting through an ODE solver).

    python benchmarks/diffusion_cost.py [--batch 20] [--repeats 10] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from leads_engine.diffusion import build_diffusion, list_templates
from leads_engine.graph import MeshGraph
from leads_engine.heart_mesh import bundled_mesh


def _median_ms(run: Callable[[], None], warmup: int, repeats: int, device: str) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", help="template names (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    mesh = bundled_mesh()
    graph = MeshGraph.from_mesh(mesh, args.batch, device=args.device)
    generator = torch.Generator().manual_seed(0)
    u = torch.rand(args.batch * mesh.n_nodes, 1, generator=generator).to(args.device)
    print(
        f"mesh {mesh.name}: {mesh.n_nodes} nodes, {mesh.n_edges} edges; batch {args.batch}; "
        f"{args.threads} thread(s); device {args.device}; median of {args.repeats}"
    )
    print(f"{'template':<20} {'family':<9} {'params':>8} {'fwd ms':>9} {'fwd+bwd ms':>11}")
    for info in list_templates():
        if args.only and info.name not in args.only:
            continue
        torch.manual_seed(0)
        module = build_diffusion(info.name, mesh.n_nodes).to(args.device)
        n_params = sum(p.numel() for p in module.parameters())

        def forward(module: torch.nn.Module = module) -> None:
            with torch.no_grad():
                module(u, graph)

        def forward_backward(module: torch.nn.Module = module) -> None:
            module.zero_grad(set_to_none=True)
            x = u.detach().requires_grad_()
            module(x, graph).square().mean().backward()

        fwd = _median_ms(forward, args.warmup, args.repeats, args.device)
        both = _median_ms(forward_backward, args.warmup, args.repeats, args.device)
        print(f"{info.name:<20} {info.family:<9} {n_params:>8} {fwd:>9.2f} {both:>11.2f}")


if __name__ == "__main__":
    main()
