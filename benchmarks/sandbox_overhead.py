"""Per-candidate cost of validating edited diffusion code in the sandbox.

    python benchmarks/sandbox_overhead.py [--repeats 5]

For each catalog template: the static check alone, and a full ``validate_diffusion_source``
(fork a sandboxed worker from the preloaded forkserver, lock it down, build a 60-node graph,
compile the source, forward + backward, checks, report). The first validation also starts the
forkserver (imports torch and PyG once) and is reported separately as the cold start. A
trusted in-process forward + backward of the same template gives the work the sandbox wraps,
so ``overhead = sandboxed - in-process``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from leads_engine.diffusion import list_templates, load_diffusion_class, template_source
from leads_engine.diffusion_trial import validate_diffusion_source
from leads_engine.graph import MeshGraph
from leads_engine.heart_mesh import make_lv_mesh
from leads_engine.sandbox import check_source


def in_process_seconds(source: str, graph: MeshGraph, num_nodes: int) -> float:
    """Trusted baseline: compile, instantiate, forward + backward in this process (second of
    two runs, so PyG's one-off code generation is not counted)."""
    seconds = 0.0
    for _ in range(2):
        started = time.perf_counter()
        module = load_diffusion_class(source, "<benchmark>")(num_nodes)
        out = module(torch.rand(graph.batch_size * num_nodes, 1), graph)
        if out.requires_grad:
            out.sum().backward()
        seconds = time.perf_counter() - started
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)

    started = time.perf_counter()
    cold = validate_diffusion_source(template_source("laplacian_global"))
    assert cold.accepted, cold.message
    print(
        f"cold start (forkserver imports torch + PyG, first candidate): "
        f"{time.perf_counter() - started:.2f} s"
    )

    graph = MeshGraph.from_mesh(make_lv_mesh(60), 2)
    private_tmp = tempfile.TemporaryDirectory(prefix="leads-benchmark-")
    tempfile.tempdir = private_tmp.name  # PyG's generated modules of the in-process baseline
    print(
        f"{'template':<20} {'static ms':>9} {'sandboxed s':>12} {'in-process s':>13} "
        f"{'overhead s':>11}"
    )
    overheads = []
    for info in list_templates():
        source = template_source(info.name)
        t0 = time.perf_counter()
        assert check_source(source) == []
        static_ms = (time.perf_counter() - t0) * 1000
        sandboxed = []
        for _ in range(args.repeats):
            report = validate_diffusion_source(source)
            assert report.accepted, report.message
            sandboxed.append(report.seconds)
        baseline = in_process_seconds(source, graph, 60)  # includes PyG's first-use codegen
        median = statistics.median(sandboxed)
        overheads.append(median - baseline)
        print(
            f"{info.name:<20} {static_ms:>9.1f} {median:>12.3f} {baseline:>13.3f} "
            f"{median - baseline:>11.3f}"
        )
    print(
        f"worker overhead per candidate: median {statistics.median(overheads):.3f} s, "
        f"max {max(overheads):.3f} s (target: < 2 s)"
    )


if __name__ == "__main__":
    main()
