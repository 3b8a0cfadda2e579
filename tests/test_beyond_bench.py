"""``leads-bench --beyond``: out-of-catalog sets, honest stand-ins for the methods that need the
true reaction, the table next to the paper's and the acceptance checks."""

from __future__ import annotations

import json

import pytest
from leads_agent.errors import ConfigurationError
from leads_bench import beyond
from leads_bench.baselines import baseline_candidates, run_baseline
from leads_bench.beyond import (
    BEYOND_METHODS,
    beyond_checks,
    beyond_markdown,
    planned_beyond_runs,
    prepare_beyond_datasets,
    run_generator_oracle_row,
    summarise_beyond,
)
from leads_bench.cli import build_parser, config_from_args
from leads_bench.config import BenchConfig, Run

from leads_engine.dataset import load_dataset
from leads_engine.reactions import REACTION_MODELS
from leads_engine.training import TrainingConfig

TINY = {"nodes": 300, "samples": 4, "split": (2, 1, 1), "duration_ms": 30.0}


@pytest.fixture(scope="module")
def tiny_beyond(tmp_path_factory: pytest.TempPathFactory):
    """The quick --beyond sets on the 300-node mesh, 30 ms, and the output folder."""
    patch = pytest.MonkeyPatch()
    patch.setattr(beyond, "QUICK_DATA", TINY)
    out = tmp_path_factory.mktemp("beyond")
    try:
        yield prepare_beyond_datasets(BenchConfig(out=out, quick=True, beyond=True), print), out
    finally:
        patch.undo()


def test_both_sets_hold_an_out_of_catalog_truth_one_with_fibres(tiny_beyond):
    paths, _ = tiny_beyond
    dataset = load_dataset(paths["br"])
    assert dataset.meta["reaction"] == "beeler_reuter" and not dataset.meta["reaction_in_catalog"]
    assert dataset.fibers is None
    anisotropic = load_dataset(paths["br_aniso"])
    assert anisotropic.meta["reaction"] == "beeler_reuter" and anisotropic.fibers is not None
    assert anisotropic.anisotropy == beyond.ANISOTROPY


@pytest.mark.parametrize("name", ["br", "br_aniso"])
def test_the_oracle_is_the_generators_own_model(tiny_beyond, name):
    paths, out = tiny_beyond
    config = BenchConfig(out=out, quick=True, beyond=True)
    record = run_generator_oracle_row(Run("physics", name, 0), paths[name], config, print)
    assert record["test_mse"] < 1e-10  # the same simulation as the generator's
    assert record["test_at_mae_ms"] < 1e-6 and record["test_at_missed"] == 0.0
    assert record["in_catalog"] is False and "not in the search catalog" in str(record["details"])


def test_true_reaction_baselines_use_the_best_catalog_reaction_and_say_so(tiny_beyond):
    paths, _ = tiny_beyond
    dataset = load_dataset(paths["br"])
    fast = TrainingConfig(batch_size=2, checkpoint_frames=5, compile=False)
    result = run_baseline("hybrid-gat", dataset, epochs=1, finetune_epochs=1, config=fast)
    assert result.chosen.diffusion == "gat" and result.chosen.reaction in REACTION_MODELS
    assert "stands in" in result.extra["stand_in"]
    assert result.chosen.reaction in result.extra["stand_in"]
    with pytest.raises(ValueError, match="not in the search catalog"):
        run_baseline("physics", dataset, epochs=1, finetune_epochs=1, config=fast)
    catalog = baseline_candidates("catalog-best", "")
    assert {s.reaction for s in catalog} == set(REACTION_MODELS)
    assert {s.diffusion for s in catalog} == {"laplacian_nodewise"}


def record(method: str, mse: float, at: float, dataset: str = "br") -> dict:
    return {
        "method": method,
        "dataset": dataset,
        "seed": 0,
        "test_mse": mse,
        "test_at_mae_ms": at,
        "test_at_missed": 0.0,
        "reaction": "mitchell_schaeffer",
        "diffusion": "laplacian_nodewise",
        "wall_seconds": 1.0,
        "details": {"notes": {"stand_in": "mitchell_schaeffer stands in"}},
    }


def test_table_ratio_and_checks():
    records = [
        record("catalog-best", 1.5e-2, 4.2),
        record("leads-offline", 1.0e-3, 1.2),
        record("hybrid-gat", 3e-2, 5.0),
    ]
    table = summarise_beyond(records, ["br"])
    assert list(table) == ["catalog-best", "hybrid-gat", "leads-offline"]
    assert table["leads-offline"]["per_dataset"]["br"]["catalog_best_over"] == pytest.approx(15)
    assert table["hybrid-gat"]["per_dataset"]["br"]["catalog_best_over"] == pytest.approx(0.5)
    checks = beyond_checks(table, ["br"])
    assert [c.passed for c in checks] == [True, True]
    text = beyond_markdown(table, ["br"], checks, {"br_aniso": "no fibres"}, {"summary": "m"}, "c")
    assert "| LEADS (offline policy) | 1 | 1.2 | 15 |" in text
    assert "26.7" in text  # the paper's LEADS average next to ours
    assert "stands in" in text and "br_aniso (no fibres)" in text

    worse = summarise_beyond(
        [record("catalog-best", 1e-2, 4), record("leads-offline", 5e-3, 2)], ["br"]
    )
    assert [c.passed for c in beyond_checks(worse, ["br"])] == [False, False]
    # with LEADS' in-catalog average (same size): the 10x check comes first
    checks = beyond_checks(table, ["br"], in_catalog_mse=2e-4)
    assert [c.passed for c in checks] == [True, True, True] and checks[0].detail == "5.0x"
    assert [c.passed for c in beyond_checks(worse, ["br"], 2e-4)] == [False, False, False]


def test_the_in_catalog_reference_is_read_from_the_sibling_paper_table(tmp_path):
    config = BenchConfig(out=tmp_path / "beyond_quick", quick=True, beyond=True)
    path = beyond.in_catalog_results(config)
    assert path == tmp_path / "quick" / "results.json"
    assert beyond.in_catalog_leads_mse(path) is None  # no paper-table run yet
    path.parent.mkdir()
    path.write_text(json.dumps({"table": {"leads-offline": {"mse_avg": 4.3e-4}}}))
    assert beyond.in_catalog_leads_mse(path) == pytest.approx(4.3e-4)
    path.write_text(json.dumps({"table": {"leads-offline": {"mse_avg": None}}}))
    assert beyond.in_catalog_leads_mse(path) is None  # an incomplete run checks nothing
    path.write_text("{not json")
    assert beyond.in_catalog_leads_mse(path) is None


def test_planned_runs_and_the_command_line(tmp_path):
    config = BenchConfig(out=tmp_path, methods=BEYOND_METHODS, beyond=True)
    runs, skipped = planned_beyond_runs(config, ["br"])
    assert set(skipped) == {"leads-llm", "hdtwingen"}
    assert {r.method for r in runs} == set(BEYOND_METHODS) - set(skipped)
    assert runs[0].method == "leads-offline"  # longest first

    parsed = config_from_args(build_parser("leads-bench").parse_args(["--beyond", "--quick"]))
    assert parsed.beyond and parsed.quick and parsed.out.name == "beyond_quick"
    assert "catalog-best" in parsed.methods
    with pytest.raises(ConfigurationError, match="--beyond"):
        config_from_args(build_parser().parse_args(["--beyond", "--datasets", "ap"]))
    with pytest.raises(ConfigurationError, match="catalog-best"):
        config_from_args(build_parser().parse_args(["--methods", "catalog-best"]))
