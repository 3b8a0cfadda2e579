"""Recovery of the along/across conductivity ratio on the bundled ventricle.

    python benchmarks/anisotropy_recovery.py [--ratio 3] [--epochs 8] [--duration 500]
        [--reaction ap] [--json results.json]

Makes (or reuses) the set ``leads-data generate --reaction ap --fibers rule --anisotropy 3``
would make (rule-based fibres, conductivities ``ratio`` times larger along the fibres than
across; stored under ``$LEADS_HOME/datasets/<reaction>_aniso<ratio>.npz``), then fits
``laplacian_anisotropic`` (from an isotropic start, ratio 1) and ``laplacian_nodewise`` with a
learnable reaction of the true kind, and prints the recovered ratio, its error, each fit's
test MSE, AT MAE and wall time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from leads_engine.dataset import datasets_dir, load_dataset
from leads_engine.generator import BenchmarkConfig, generate_benchmark
from leads_engine.spec import CandidateSpec
from leads_engine.training import TrainingConfig, evaluate, fit, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reaction", default="ap")
    parser.add_argument("--ratio", type=float, default=3.0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--duration", type=float, default=500.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    name = f"{args.reaction}_aniso{args.ratio:g}" + (
        "" if args.duration == 500.0 else f"_{args.duration:g}ms"
    )
    path = datasets_dir() / f"{name}.npz"
    generation = 0.0
    if not path.exists():
        started = time.perf_counter()
        config = BenchmarkConfig(
            reaction=args.reaction,
            duration_ms=args.duration,
            fibers="rule",
            anisotropy=args.ratio,
        )
        generate_benchmark(config, name=name).save(path)
        generation = time.perf_counter() - started
    dataset = load_dataset(path)
    print(f"data set {path} ({generation:.0f} s to generate), anisotropy {dataset.anisotropy}")

    results = {"dataset": name, "true_ratio": dataset.anisotropy, "epochs": args.epochs}
    training = TrainingConfig(epochs=args.epochs, patience=args.epochs)
    for template in ("laplacian_anisotropic", "laplacian_nodewise"):
        spec = CandidateSpec(reaction=args.reaction, diffusion=template)
        started = time.perf_counter()
        result = fit(spec, dataset, training)
        seconds = time.perf_counter() - started
        scores = evaluate(spec, dataset, result.state_dict, "test", training)
        row = {
            "status": result.status,
            "val_losses": result.val_losses,
            "test_mse": scores.mse,
            "at_mae_ms": scores.activation_error.mae,
            "fit_seconds": round(seconds, 1),
        }
        if template == "laplacian_anisotropic":
            diffusion = load_model(spec, dataset, result.state_dict).diffusion
            ratio = float(diffusion.anisotropy_ratio.detach())
            row["ratio"] = ratio
            row["ratio_error"] = ratio / dataset.anisotropy - 1.0
        results[template] = row
        shown = {k: v for k, v in row.items() if k != "val_losses"}
        print(template, json.dumps(shown))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
