"""A cohort of small data sets: local sequential vs concurrent (local and ray), and a simulated Ray
cluster showing how the cohort's wall time falls with the number of worker nodes.

Every row runs the same command, ``leads-agent cohort`` over the bundled server, on the same
data sets (4 by default: small synthetic patients made with the AP, RM and MS models), with the
offline policy and a small budget, from a fresh archive:

* ``local sequential``: one discovery at a time, one training at a time (``--concurrency 1
  --max-jobs 1 --parallel 1``): how a cohort ran before;
* ``local concurrent``: all discoveries at once, one training per core (``--max-jobs`` cores);
* ``ray concurrent``: the same on a local Ray instance the server starts (``--executor ray``);
* ``ray cluster N``: a simulated cluster (:class:`ray.cluster_utils.Cluster`: a head with no
  CPU and N worker nodes of ``--cpus-per-node`` CPUs each, all on this machine; the server
  connects with ``--ray-address``).

On a 2-core machine the simulated nodes share two physical cores, so the time stops falling past
two one-CPU nodes: the rows beyond say what the overhead of more nodes costs, not what more
machines would give. The machine's load (``os.getloadavg``) is printed with every row.

    python benchmarks/cohort_scaling.py [--patients 4] [--budget 4] [--nodes 1 2 4]
        [--skip-cluster] [--json out/cohort_scaling.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: reactions of the simulated patients, in turn
REACTIONS = ("ap", "rm", "ms")


def make_patients(folder: Path, count: int, nodes: int, samples: int, duration_ms: float) -> None:
    """``count`` small data sets ``p0``.. under ``folder/datasets`` (the generator's seeds vary
    the pacing sites and the scar)."""
    from leads_engine.generator import BenchmarkConfig, generate_benchmark
    from leads_engine.heart_mesh import make_lv_mesh

    mesh = make_lv_mesh(nodes)
    split = (samples - 2, 1, 1)
    for index in range(count):
        config = BenchmarkConfig(
            reaction=REACTIONS[index % len(REACTIONS)],
            n_samples=samples,
            split_sizes=split,
            duration_ms=duration_ms,
            seed=index,
        )
        data = generate_benchmark(config, mesh=mesh, name=f"p{index}")
        data.save(folder / "datasets" / f"p{index}.npz")


def run_cohort(
    patients: Path, work: Path, label: str, args: argparse.Namespace, extra: list[str]
) -> dict[str, Any]:
    """One cohort from a fresh ``LEADS_HOME`` (the patients copied in); its wall time and
    report."""
    home = work / label.replace(" ", "_")
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(patients / "datasets", home / "datasets")
    command = [
        sys.executable,
        "-m",
        "leads_agent.cli",
        "cohort",
        "--datasets",
        *[f"p{i}" for i in range(args.patients)],
        "--budget",
        str(args.budget),
        "--epochs",
        str(args.epochs),
        "--finetune",
        str(args.finetune),
        "--no-compile",
        "--no-anonymise",  # the same screening order in every row (aliases are random)
        "--json",
        *extra,
    ]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(
        command,
        env={**os.environ, "LEADS_HOME": str(home)},
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{label}: exit {done.returncode}\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout)
    return {
        "label": label,
        "wall_seconds": round(wall, 1),
        "load_before": round(load, 2),
        "completed": report["completed"],
        "median_test_mse": report["spread"]["test_mse"].get("median"),
        "median_discovery_seconds": report["spread"]["wall_seconds"].get("median"),
        "structures": report["structures"],
    }


def simulated_cluster(nodes: int, cpus: float) -> Any:
    """A Ray cluster on this machine: a head with no CPU (it schedules nothing) and ``nodes``
    worker nodes of ``cpus`` CPUs each."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False},
    )
    for _ in range(nodes):
        cluster.add_node(num_cpus=cpus)
    cluster.wait_for_nodes()
    return cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--budget", type=int, default=4, help="search steps per patient (4)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--finetune", type=int, default=2)
    parser.add_argument("--mesh-nodes", type=int, default=300)
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--duration-ms", type=float, default=80.0)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--cpus-per-node", type=float, default=1.0)
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument(
        "--skip", nargs="*", default=[], help="rows to leave out, e.g. 'local concurrent'"
    )
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="leads-cohort-scaling-") as temporary:
        work = Path(temporary)
        make_patients(
            work / "patients", args.patients, args.mesh_nodes, args.samples, args.duration_ms
        )
        plans = [
            ("local sequential", ["--concurrency", "1", "--max-jobs", "1", "--parallel", "1"]),
            ("local concurrent", ["--max-jobs", str(cores)]),
            ("ray concurrent", ["--executor", "ray"]),
        ]
        plans = [plan for plan in plans if plan[0] not in args.skip]
        for label, extra in plans:
            rows.append(run_cohort(work / "patients", work, label, args, extra))
            print(json.dumps(rows[-1]), flush=True)
        if not args.skip_cluster:
            for count in args.nodes:
                cluster = simulated_cluster(count, args.cpus_per_node)
                try:
                    extra = ["--executor", "ray", "--ray-address", cluster.address]
                    label = f"ray cluster {count}x{args.cpus_per_node:g} CPU"
                    rows.append(run_cohort(work / "patients", work, label, args, extra))
                    print(json.dumps(rows[-1]), flush=True)
                finally:
                    cluster.shutdown()
    base = rows[0]["wall_seconds"]
    print(
        f"\ncohort of {args.patients} patients, budget {args.budget}, {args.epochs} epoch(s) "
        f"per candidate, {cores} cores"
    )
    print(f"{'run':<28}{'wall (s)':>10}{'speed-up':>10}{'load':>7}  median test MSE")
    for row in rows:
        mse = row["median_test_mse"]
        print(
            f"{row['label']:<28}{row['wall_seconds']:>10.1f}{base / row['wall_seconds']:>10.2f}"
            f"{row['load_before']:>7.2f}  {'-' if mse is None else f'{mse:.4g}'}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cores": cores, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
