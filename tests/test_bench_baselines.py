"""The paper's scripted baselines on the engine: their candidates, and the oracle end to end."""

from __future__ import annotations

import pytest
import torch
from leads_bench.baselines import BASELINES, baseline_candidates, run_baseline

from leads_engine.training import TrainingConfig, fit

FAST = TrainingConfig(epochs=2, batch_size=2, checkpoint_frames=5, compile=False)


def test_physics_oracle_fixes_the_true_reaction_and_learns_the_conductivity(tiny):
    """The oracle's reaction parameters are the data set's and stay fixed while fitting."""
    (spec,) = baseline_candidates(
        "physics", "aliev_panfilov", true_parameters=tiny.meta["reaction_parameters"]
    )
    assert not spec.reaction_learnable
    result = fit(spec, tiny, FAST)
    assert result.status == "ok"
    for name, value in tiny.meta["reaction_parameters"].items():
        assert result.reaction_parameters[name] == pytest.approx(value, rel=1e-5)
    sigma = torch.nn.functional.softplus(result.state_dict["diffusion.raw_conductivity"])
    assert float(sigma) != pytest.approx(1.0, abs=1e-4)  # the tissue did move


def test_baseline_candidates_follow_the_paper():
    assert [s.diffusion for s in baseline_candidates("physics", "aliev_panfilov")] == [
        "laplacian_nodewise"
    ]
    assert baseline_candidates("hybrid-gat", "ms")[0].diffusion == "gat"
    sweep = [s.diffusion for s in baseline_candidates("diff-only", "ap")]
    assert len(sweep) == 10 and "laplacian_anisotropic" not in sweep  # no fibres, no tensor
    fibred = [s.diffusion for s in baseline_candidates("diff-only", "ap", has_fibers=True)]
    assert sorted(fibred) == sorted([*sweep, "laplacian_anisotropic"])
    assert {s.reaction for s in baseline_candidates("react-only", "ap")} >= {
        "aliev_panfilov",
        "rogers_mcculloch",
        "mitchell_schaeffer",
    }
    assert baseline_candidates("all-neural", "ap")[0].reaction == "neural"
    assert set(BASELINES) == {"physics", "hybrid-gat", "diff-only", "react-only", "all-neural"}
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_candidates("hdtwingen", "ap")


def test_physics_baseline_runs_end_to_end(tiny):
    result = run_baseline(
        "physics",
        tiny,
        epochs=1,
        finetune_epochs=1,
        config=TrainingConfig(batch_size=3, checkpoint_frames=5, compile=False),
    )
    summary = result.summary()
    assert summary["diffusion"] == "laplacian_nodewise"
    assert summary["test"]["mse"] < 0.05
    assert len(summary["screening"]) == 1
