"""The hybrid model and the trainer: reproducibility, honesty about failure, physics."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from leads_engine.diffusion import template_info
from leads_engine.spec import CandidateSpec
from leads_engine.training import (
    TrainingConfig,
    TrainingProgress,
    diagnose,
    evaluate,
    fit,
)

FAST = TrainingConfig(epochs=2, batch_size=2, checkpoint_frames=5, compile=False)


def test_same_spec_and_seed_train_to_the_same_numbers(tiny):
    spec = CandidateSpec(reaction="ap", diffusion="gcn", seed=7)
    first = fit(spec, tiny, FAST)
    second = fit(spec, tiny, FAST)
    assert first.status == second.status == "ok"
    assert first.train_losses == second.train_losses
    assert first.val_losses == second.val_losses
    for key, value in first.state_dict.items():
        assert torch.equal(value, second.state_dict[key]), key


def test_a_different_seed_gives_different_weights(tiny):
    a = fit(CandidateSpec(reaction="ap", diffusion="gcn", seed=1), tiny, FAST)
    b = fit(CandidateSpec(reaction="ap", diffusion="gcn", seed=2), tiny, FAST)
    assert a.train_losses != b.train_losses


def test_fit_reports_curves_progress_and_keeps_the_best_epoch(tiny):
    events: list[TrainingProgress] = []
    config = TrainingConfig(epochs=3, batch_size=2, checkpoint_frames=5, compile=False)
    result = fit(
        CandidateSpec(reaction="ap", diffusion="laplacian_global"),
        tiny,
        config,
        progress=events.append,
    )
    assert result.status == "ok"
    assert len(result.train_losses) == len(result.val_losses) == 3
    assert result.best_val_loss == min(result.val_losses)
    assert result.best_epoch == int(np.argmin(result.val_losses)) + 1
    epochs = [e for e in events if e.phase == "epoch"]
    assert [e.epoch for e in epochs] == [1, 2, 3]
    assert [e for e in events if e.phase == "train"][0].batches == 2  # 3 samples, batch 2
    assert result.parameter_count == 1 + 6  # conductivity + AP's five parameters + time scale
    assert result.diagnosis.text and result.diagnosis.verdict in {
        "good_fit",
        "underfitting",
        "overfitting",
    }


def test_the_learning_rate_scale_scales_every_group():
    from leads_engine.hybrid import HybridModel
    from leads_engine.training import _optimizer

    spec = CandidateSpec(
        reaction="ap",
        diffusion="laplacian_nodewise",
        reaction_residual={"hidden": 8, "layers": 1},
    )
    model = HybridModel.from_spec(spec, 20)
    config = TrainingConfig(conductivity_learning_rate=0.03)
    full = sorted(g["lr"] for g in _optimizer(model, config).param_groups)
    scaled = sorted(
        g["lr"] for g in _optimizer(model, replace(config, learning_rate_scale=0.3)).param_groups
    )
    assert len(full) == 3  # the reaction, the conductivities, the residual's network
    assert scaled == pytest.approx([0.3 * rate for rate in full])


def test_the_warm_up_rises_linearly_then_the_cosine_decays():
    from leads_engine.training import _learning_rate_factor

    total, final, warmup = 20, 0.1, 4
    factors = [_learning_rate_factor(total, final, warmup, step) for step in range(total)]
    assert factors[:warmup] == pytest.approx([0.2, 0.4, 0.6, 0.8])  # step+1 of warmup+1
    assert factors[warmup] == pytest.approx(1.0)  # the cosine starts at the full rate...
    assert factors[-1] == pytest.approx(final)  # ...and ends at its final fraction
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1 :], strict=False))
    # without a warm-up: the half cosine over every step, as before
    plain = [_learning_rate_factor(total, final, 0, step) for step in range(total)]
    assert plain[0] == pytest.approx(1.0) and plain[-1] == pytest.approx(final)


def test_a_fit_warms_its_learning_rates_up_over_the_first_epoch(tiny, monkeypatch):
    """The steps the optimizer takes: one epoch (3 batches of 1) rising, then the cosine."""
    rates: list[float] = []
    step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"] / self.param_groups[0]["initial_lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    spec = CandidateSpec(reaction="ap", diffusion="laplacian_global")
    config = replace(FAST, batch_size=1, warmup_epochs=1.0)
    assert fit(spec, tiny, config).status == "ok"
    assert rates[:3] == pytest.approx([0.25, 0.5, 0.75])
    assert rates[3] == pytest.approx(1.0) and rates[-1] == pytest.approx(config.final_lr_fraction)
    rates.clear()
    assert fit(spec, tiny, replace(config, warmup_epochs=0.0)).status == "ok"
    assert rates[0] == pytest.approx(1.0)  # no warm-up: full steps at once


def test_patience_grows_with_a_long_fit_only():
    """The search's and the default fine-tuning's fits (3-10 epochs) keep the fixed patience of
    5; a 60-epoch fine-tuning waits 30 epochs, past its noisy large-step first half."""
    assert [TrainingConfig(epochs=e).patience_for_fit() for e in (1, 3, 10)] == [5] * 3
    assert TrainingConfig(epochs=12).patience_for_fit() == 6
    assert TrainingConfig(epochs=60).patience_for_fit() == 30
    assert TrainingConfig(epochs=60, patience=40).patience_for_fit() == 40
    assert TrainingConfig(epochs=60, patience_fraction=0.0).patience_for_fit() == 5


def test_without_a_batch_size_each_template_trains_with_its_catalog_batch(tiny):
    """Physical templates take many small steps (batch 2), neural ones batches of 10;
    an explicit batch size overrides both."""
    physical, neural = template_info("laplacian_nodewise"), template_info("gcn")
    assert (physical.batch_size, physical.conductivity_learning_rate) == (2, 0.03)
    assert (neural.batch_size, neural.conductivity_learning_rate) == (10, 0.1)
    resolved = TrainingConfig(conductivity_learning_rate=0.05).for_template("gat")
    assert (resolved.batch_size, resolved.conductivity_learning_rate) == (10, 0.05)
    frozen = TrainingConfig(conductivity_learning_rate=0.0).for_template("laplacian_global")
    assert frozen.conductivity_learning_rate == 0.0  # an explicit 0 is kept, not "left open"

    def batches(diffusion: str, batch_size: int | None) -> int:
        events: list[TrainingProgress] = []
        config = TrainingConfig(epochs=1, batch_size=batch_size, compile=False)
        fit(CandidateSpec(reaction="ap", diffusion=diffusion), tiny, config, events.append)
        return [e for e in events if e.phase == "train"][0].batches

    assert batches("laplacian_nodewise", None) == 2  # 3 training beats in batches of 2
    assert batches("gcn", None) == 1  # 3 training beats in one batch of (up to) 10
    assert batches("gcn", 1) == 3


def test_training_lowers_the_loss_of_the_physics_oracle(tiny):
    config = TrainingConfig(
        epochs=4, batch_size=3, checkpoint_frames=5, compile=False, physical_learning_rate=0.1
    )
    # start from a wrong conductivity: training must move towards the data's
    spec = CandidateSpec(
        reaction="ap",
        diffusion="laplacian_nodewise",
        diffusion_hyperparameters={"conductivity": 0.4},
    )
    result = fit(spec, tiny, config)
    assert result.status == "ok"
    assert result.val_losses[-1] < 0.7 * result.val_losses[0]


def test_a_diverging_candidate_is_recorded_unstable_quickly(tiny):
    spec = CandidateSpec(
        reaction="ap",
        diffusion="laplacian_global",
        diffusion_hyperparameters={"conductivity": 90.0},  # explicit Euler far past its limit
    )
    started = time.perf_counter()
    result = fit(spec, tiny, FAST)
    assert time.perf_counter() - started < 10
    assert result.status == "unstable"
    assert result.failure["epoch"] == 1 and result.failure["step"] >= 1
    assert result.failure["time_ms"] > 0
    assert result.best_val_loss is None and result.state_dict is None
    assert result.diagnosis.verdict == "unstable"
    assert "epoch 1" in result.diagnosis.text


def test_evaluate_scores_the_test_split(tiny):
    spec = CandidateSpec(reaction="ap", diffusion="laplacian_global")
    result = fit(spec, tiny, FAST)
    evaluation = evaluate(spec, tiny, result.state_dict, "test", FAST)
    test = tiny.indices("test")
    assert evaluation.u_pred.shape == tiny.u[test].shape
    manual = np.mean((evaluation.u_pred[:, 1:] - tiny.u[test, 1:]) ** 2)
    assert math.isclose(evaluation.mse, manual, rel_tol=1e-6)
    assert evaluation.at_true.shape == (len(test), tiny.n_nodes)
    assert evaluation.activation_error.n_compared > 0
    assert set(evaluation.summary()) >= {"mse", "at_mae_ms"}


def test_neural_reaction_trains(tiny):
    result = fit(
        CandidateSpec(reaction="neural", diffusion="laplacian_global"),
        tiny,
        TrainingConfig(epochs=1, batch_size=3, checkpoint_frames=5, compile=False),
    )
    assert result.status == "ok" and result.parameter_count > 100


@pytest.mark.parametrize(
    ("train", "val", "verdict"),
    [
        ([0.02, 0.01, 0.005], [0.021, 0.011, 0.0052], "good_fit"),
        ([0.01, 0.005, 0.001], [0.02, 0.02, 0.02], "overfitting"),
        ([0.08, 0.079, 0.079], [0.08, 0.0795, 0.079], "underfitting"),
    ],
)
def test_diagnosis_names_the_problem(train, val, verdict):
    diagnosis = diagnose(train, val, "ok", 100, data_variance=0.2)
    assert diagnosis.verdict == verdict
    assert f"{diagnosis.parameter_count} parameters" in diagnosis.text


def test_compiled_and_eager_integrators_agree(tiny):
    spec = CandidateSpec(reaction="rm", diffusion="gcn", seed=4)
    eager = fit(spec, tiny, TrainingConfig(epochs=1, batch_size=3, compile=False))
    compiled = fit(spec, tiny, TrainingConfig(epochs=1, batch_size=3, compile=True))
    assert compiled.status == eager.status == "ok"
    np.testing.assert_allclose(compiled.val_losses, eager.val_losses, rtol=1e-4)
