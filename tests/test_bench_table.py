"""The benchmark's table: mean and spread over seeds, and the paper's orderings checked."""

from __future__ import annotations

import pytest
from leads_bench.table import check_orderings, summarise


def _record(method: str, dataset: str, seed: int, mse: float, identified: bool = True) -> dict:
    return {
        "method": method,
        "dataset": dataset,
        "seed": seed,
        "test_mse": mse,
        "test_at_mae_ms": 10 * mse,
        "reaction": "r",
        "diffusion": "d",
        "reaction_identified": identified,
        "wall_seconds": 1.0,
    }


def _records(leads: dict[str, float], identified: bool = True) -> list[dict]:
    base = {"physics": 0.1, "hybrid-gat": 1.0, "all-neural": 3.0}
    records = []
    for seed in (0, 1):
        for dataset in ("ap", "rm"):
            for method, mse in base.items():
                records.append(_record(method, dataset, seed, mse * (1 + 0.1 * seed)))
            records.append(
                _record("leads-offline", dataset, seed, leads[dataset], identified or seed == 0)
            )
    return records


def test_summary_averages_seeds_and_sets():
    table = summarise(_records({"ap": 0.5, "rm": 0.3}), ["ap", "rm"])
    gat = table["hybrid-gat"]
    assert gat["per_dataset"]["ap"]["mse"] == pytest.approx(1.05)
    assert gat["per_dataset"]["ap"]["mse_sd"] == pytest.approx(0.0707, abs=1e-4)
    assert gat["per_dataset"]["ap"]["seeds"] == [0, 1]
    assert gat["mse_avg"] == pytest.approx(1.05)
    assert table["leads-offline"]["mse_over_gat"] == pytest.approx(0.4 / 1.05)
    assert list(table) == ["physics", "hybrid-gat", "all-neural", "leads-offline"]


def test_orderings_pass_and_fail_on_the_numbers():
    good = check_orderings(summarise(_records({"ap": 0.5, "rm": 0.3}), ["ap", "rm"]), ["ap", "rm"])
    assert [c.passed for c in good] == [True] * 5
    # LEADS worse than the GAT hybrid on rm, below the oracle on ap, and one seed misidentified
    bad = check_orderings(
        summarise(_records({"ap": 0.05, "rm": 2.0}, identified=False), ["ap", "rm"]), ["ap", "rm"]
    )
    verdict = {c.name: c for c in bad}
    oracle = next(c for name, c in verdict.items() if "oracle" in name)
    assert not oracle.passed and "ap: leads-offline 0.05" in oracle.detail
    failed = [name for name, c in verdict.items() if not c.passed]
    assert any("identifies" in name for name in failed)
    assert any("Hybrid GAT" in name for name in failed)
    assert any("26.7/37.6" in name for name in failed)
    assert not any("All-Neural" in name for name in failed)  # 2.0 < 3.0 still
