"""The hybrid model and the trainer: reproducibility, honesty about failure, physics."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from leads_engine.diffusion import template_info
from leads_engine.generator import BenchmarkConfig, generate_benchmark
from leads_engine.graph import MeshGraph
from leads_engine.hybrid import HybridModel
from leads_engine.metrics import activation_times
from leads_engine.simulator import SimulationDiverged
from leads_engine.spec import CandidateSpec
from leads_engine.training import (
    TrainingConfig,
    TrainingProgress,
    diagnose,
    evaluate,
    fit,
)

FAST = TrainingConfig(epochs=2, batch_size=2, checkpoint_frames=5, compile=False)


@pytest.fixture(scope="module")
def tiny(small_mesh):
    """An Aliev-Panfilov set on the 200-node mesh: 6 samples, 60 ms."""
    config = BenchmarkConfig(
        reaction="ap", n_samples=6, split_sizes=(3, 2, 1), duration_ms=60.0, seed=3
    )
    return generate_benchmark(config, mesh=small_mesh, name="tiny")


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


def test_rollout_reports_the_frame_of_a_blow_up(tiny):
    model = HybridModel.from_spec(
        CandidateSpec(
            reaction="ap",
            diffusion="laplacian_global",
            diffusion_hyperparameters={"conductivity": 90.0},
        ),
        tiny.n_nodes,
    )
    graph = MeshGraph.from_mesh(tiny.mesh(), 1)
    with pytest.raises(SimulationDiverged) as caught, torch.no_grad():
        model.rollout(torch.from_numpy(tiny.u[:1, 0]), graph, 20, 2.0, 5)
    assert caught.value.step % 5 == 0 and caught.value.time > 0


def test_checkpointing_does_not_change_gradients(tiny):
    spec = CandidateSpec(reaction="ms", diffusion="gat", seed=0)
    graph = MeshGraph.from_mesh(tiny.mesh(), 2)
    u0 = torch.from_numpy(tiny.u[:2, 0])
    target = torch.from_numpy(tiny.u[:2, 1:])
    grads = []
    for chunk in (None, 4):
        model = HybridModel.from_spec(spec, tiny.n_nodes)
        predicted = model.rollout(u0, graph, tiny.n_frames - 1, 2.0, 5, checkpoint_frames=chunk)
        torch.mean((predicted - target) ** 2).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def _true_structure_mse(dataset, reaction_substeps=None) -> tuple[float, float]:
    """Trajectory MSE and AT MAE of the true reaction and conductivity at the training step."""
    spec = CandidateSpec(reaction=dataset.meta["reaction"], diffusion="laplacian_nodewise")
    model = HybridModel.from_spec(spec, dataset.n_nodes)
    with torch.no_grad():  # global level 1, per-node factor = sigma
        model.diffusion.raw_log_factor.copy_(torch.log(torch.tensor(dataset.conductivity)))
    graph = MeshGraph.from_mesh(dataset.mesh(), dataset.n_samples)
    with torch.no_grad():
        predicted = model.rollout(
            torch.from_numpy(dataset.u[:, 0]),
            graph,
            dataset.n_frames - 1,
            2.0,
            TrainingConfig.steps_per_frame,
            reaction_substeps=reaction_substeps,
        ).numpy()
    at_true = activation_times(dataset.u, dataset.t)
    at_pred = activation_times(np.concatenate([dataset.u[:, :1], predicted], 1), dataset.t)
    both = np.isfinite(at_true) & np.isfinite(at_pred)
    mse = float(np.mean((predicted - dataset.u[:, 1:]) ** 2))
    return mse, float(np.abs(at_true - at_pred)[both].mean())


def test_physics_rollout_reproduces_the_data_with_the_true_conductivity(tiny):
    """The hybrid integrator with the true structure tracks the generator's 0.05 ms simulation
    at the training step (0.4 ms, the reaction sub-stepped as Aliev-Panfilov asks)."""
    mse, at_error = _true_structure_mse(tiny)
    assert mse < 1e-4
    assert at_error < 0.3  # ms


def test_conductances_are_held_over_the_catalog_s_refresh_interval(tiny):
    """A network's conductances are evaluated every ``refresh_frames`` frames (chunks of the
    checkpointing start on a refresh); for a state-independent operator holding them longer
    changes nothing."""
    graph = MeshGraph.from_mesh(tiny.mesh(), 2)
    u0 = torch.from_numpy(tiny.u[:2, 0])
    model = HybridModel.from_spec(CandidateSpec(reaction="ap", diffusion="gcn"), tiny.n_nodes)
    assert model.refresh_frames == 2
    calls = []
    original = model.diffusion.edge_conductance
    model.diffusion.edge_conductance = lambda u, g: calls.append(1) or original(u, g)
    with torch.no_grad():
        model.rollout(u0, graph, 11, 2.0, 5, checkpoint_frames=5)
    assert len(calls) == 6  # chunks of 4 frames (5 rounded down to the interval): 0-3, 4-7, 8-10
    physical = HybridModel.from_spec(
        CandidateSpec(reaction="ap", diffusion="laplacian_nodewise"), tiny.n_nodes
    )
    with torch.no_grad():
        every_frame = physical.rollout(u0, graph, 11, 2.0, 5)
        physical.refresh_frames = 3
        held = physical.rollout(u0, graph, 11, 2.0, 5)
    torch.testing.assert_close(held, every_frame, rtol=0, atol=0)


def test_stiff_reaction_is_sub_stepped_to_track_the_data(small_mesh):
    """Mitchell-Schaeffer's 0.3 ms inward current is under-resolved by a plain 0.4 ms Euler
    step; the reaction's own sub-steps bring the true structure back onto the data."""
    config = BenchmarkConfig(
        reaction="ms", n_samples=3, split_sizes=(1, 1, 1), duration_ms=60.0, seed=1
    )
    dataset = generate_benchmark(config, mesh=small_mesh, name="tiny_ms")
    assert (
        HybridModel.from_spec(
            CandidateSpec(reaction="ms", diffusion="laplacian_global"), dataset.n_nodes
        ).reaction.reaction_substeps(0.4)
        == 4
    )
    plain, plain_at = _true_structure_mse(dataset, reaction_substeps=1)
    substepped, substepped_at = _true_structure_mse(dataset)
    assert substepped < plain / 10
    assert substepped < 5e-4
    assert substepped_at < plain_at


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


def test_a_module_without_edge_conductance_is_integrated_through_forward(tiny):
    """An edited template may drop the flux form: its rate is then used at every sub-step."""
    from leads_engine.diffusion import template_source

    source = (
        template_source("laplacian_global")
        .replace("def edge_conductance(", "def _unused_conductance(")
        .replace("self.edge_conductance(u, graph)", "self._unused_conductance(u, graph)")
    )
    spec = CandidateSpec(reaction="ap", diffusion="laplacian_global", diffusion_source=source)
    flux = HybridModel.from_spec(
        CandidateSpec(reaction="ap", diffusion="laplacian_global"), tiny.n_nodes
    )
    plain = HybridModel.from_spec(spec, tiny.n_nodes)
    assert flux.flux_form and not plain.flux_form
    graph = MeshGraph.from_mesh(tiny.mesh(), 1)
    u0 = torch.from_numpy(tiny.u[:1, 0])
    with torch.no_grad():
        a = flux.rollout(u0, graph, 10, 2.0, 5)
        b = plain.rollout(u0, graph, 10, 2.0, 5)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
