"""CUDA against CPU: the simulator, the hybrid rollout and the trainer give the same numbers.

Skipped without a CUDA device. Every check runs the same computation on CPU and on the GPU
(float32, same seed and weights) and compares: a GPU path that silently differs (a tensor left
on the CPU, a non-deterministic reduction that drifts, an unstable run reported as ok) fails
here. The measured differences are recorded as test properties (``--junitxml`` keeps them).

``LEADS_TEST_DEVICE=cpu`` runs the file with "cpu" in place of "cuda" (a dry run of the test
logic on a machine without a GPU; every comparison is then trivially exact).
"""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import pytest
import torch

from leads_engine.graph import MeshGraph
from leads_engine.hybrid import HybridModel
from leads_engine.reactions import build_reaction
from leads_engine.recordings import make_egm_standin, standin_config
from leads_engine.simulator import Pacing, SimulationDiverged, simulate
from leads_engine.spec import CandidateSpec
from leads_engine.training import TrainingConfig, evaluate, fit

DEVICE = os.environ.get("LEADS_TEST_DEVICE", "cuda")

pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"
)

#: The CPU tests' small training settings (tests/test_training.py), on either device.
FAST = {"epochs": 2, "batch_size": 2, "checkpoint_frames": 5, "compile": False}


def _max_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a = torch.as_tensor(a).detach().cpu().double()
    b = torch.as_tensor(b).detach().cpu().double()
    return float((a - b).abs().max())


# ---- forward simulation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "mode"), [("euler", "initial"), ("euler", "current"), ("rk4", "initial")]
)
def test_simulation_on_the_gpu_matches_the_cpu(small_mesh, record_property, method, mode):
    sites = [0, 50, 100, 150]
    laplacian = small_mesh.laplacian(1.5)
    distances = small_mesh.graph_distances(sites)
    pacing = Pacing(sites, mode=mode, radius=6.0)
    t = np.arange(0.0, 30.0 + 1e-9, 1.0)
    results = {}
    for device in ("cpu", DEVICE):
        reaction = build_reaction("ap", learnable=False)
        with torch.no_grad():
            results[device] = simulate(
                laplacian,
                reaction,
                pacing,
                t,
                distances,
                method=method,
                step_size=0.05,
                device=device,
                guard_every=10,
            )
    cpu, gpu = results["cpu"], results[DEVICE]
    assert gpu.u.device.type == torch.device(DEVICE).type
    assert gpu.u.shape == cpu.u.shape == (len(sites), len(t), small_mesh.n_nodes)
    assert gpu.evaluations == cpu.evaluations
    assert torch.isfinite(gpu.u).all()
    assert float(cpu.u.max()) > 0.9  # a wave was started, so the comparison means something
    record_property("max_abs_diff", _max_diff(gpu.u, cpu.u))
    torch.testing.assert_close(gpu.u.cpu(), cpu.u, rtol=1e-4, atol=1e-4)


def test_a_diverging_simulation_stops_on_the_gpu(small_mesh):
    sites = [0, 100]
    with pytest.raises(SimulationDiverged), torch.no_grad():
        simulate(
            small_mesh.laplacian(300.0),  # explicit Euler far past its stability limit
            build_reaction("ap", learnable=False),
            Pacing(sites),
            np.arange(0.0, 20.0 + 1e-9, 1.0),
            small_mesh.graph_distances(sites),
            step_size=0.1,
            device=DEVICE,
        )


# ---- hybrid rollout --------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["laplacian_nodewise", "gat"])
def test_hybrid_rollout_on_the_gpu_matches_the_cpu(tiny, template, record_property):
    spec = CandidateSpec(reaction="ap", diffusion=template, seed=5)
    cpu_model = HybridModel.from_spec(spec, tiny.n_nodes)
    gpu_model = copy.deepcopy(cpu_model).to(DEVICE)
    # the same seed builds the same weights: from_spec is the trainer's constructor
    for key, value in HybridModel.from_spec(spec, tiny.n_nodes).state_dict().items():
        assert torch.equal(value, cpu_model.state_dict()[key]), key
    u0 = torch.from_numpy(tiny.u[:, 0])
    target = torch.from_numpy(tiny.u[:, 1:])
    n_frames = tiny.n_frames - 1
    frames, grads = {}, {}
    for name, model, device in (("cpu", cpu_model, "cpu"), ("gpu", gpu_model, DEVICE)):
        graph = MeshGraph.from_mesh(tiny.mesh(), tiny.n_samples, device=device)
        with torch.no_grad():
            frames[name] = model.rollout(u0.to(device), graph, n_frames, 2.0, 5).cpu()
        # and the gradients through the checkpointed rollout
        predicted = model.rollout(u0.to(device), graph, n_frames, 2.0, 5, checkpoint_frames=4)
        torch.mean((predicted - target.to(device)) ** 2).backward()
        grads[name] = {k: p.grad.detach().cpu() for k, p in model.named_parameters()}
    assert frames["gpu"].shape == (tiny.n_samples, n_frames, tiny.n_nodes)
    assert float(frames["cpu"].max()) > 0.9
    record_property("max_abs_diff", _max_diff(frames["gpu"], frames["cpu"]))
    torch.testing.assert_close(frames["gpu"], frames["cpu"], rtol=1e-4, atol=1e-4)
    for key, cpu_grad in grads["cpu"].items():
        scale = float(cpu_grad.abs().max())
        assert math.isfinite(scale) and scale > 0, key
        gpu_grad = grads["gpu"][key]
        record_property(f"grad_rel_diff[{key}]", _max_diff(gpu_grad, cpu_grad) / scale)
        torch.testing.assert_close(gpu_grad, cpu_grad, rtol=1e-3, atol=1e-3 * scale, msg=key)


# ---- training and evaluation -----------------------------------------------------------------


@pytest.mark.parametrize("template", ["laplacian_nodewise", "gat"])
def test_fit_on_the_gpu_trains_like_the_cpu(tiny, template, record_property):
    spec = CandidateSpec(reaction="ap", diffusion=template, seed=2)
    gpu_config = TrainingConfig(device=DEVICE, **FAST)
    cpu_config = TrainingConfig(device="cpu", **FAST)
    gpu = fit(spec, tiny, gpu_config)
    cpu = fit(spec, tiny, cpu_config)

    assert gpu.status == "ok", gpu.failure
    assert len(gpu.train_losses) == len(gpu.val_losses) == 2
    assert all(math.isfinite(x) for x in gpu.train_losses + gpu.val_losses)
    assert gpu.best_val_loss is not None and math.isfinite(gpu.best_val_loss)
    assert gpu.best_val_loss == min(gpu.val_losses) <= gpu.val_losses[0]
    assert gpu.best_epoch == int(np.argmin(gpu.val_losses)) + 1
    # the kept weights are on the CPU (loadable anywhere) and finite
    assert gpu.state_dict is not None
    for key, value in gpu.state_dict.items():
        assert value.device.type == "cpu", key
        assert torch.isfinite(value).all(), key
    # same seed, same shuffles: the GPU follows the CPU's curves (loosely: Adam's first steps
    # are about lr * sign(gradient), so rounding noise in a near-zero gradient can show)
    assert cpu.status == "ok"
    record_property("val_losses_gpu", gpu.val_losses)
    record_property("val_losses_cpu", cpu.val_losses)
    np.testing.assert_allclose(gpu.train_losses, cpu.train_losses, rtol=1e-2, atol=1e-6)
    np.testing.assert_allclose(gpu.val_losses, cpu.val_losses, rtol=1e-2, atol=1e-6)

    # the same weights score the same on either device
    on_gpu = evaluate(spec, tiny, gpu.state_dict, "test", gpu_config)
    on_cpu = evaluate(spec, tiny, gpu.state_dict, "test", cpu_config)
    record_property("test_mse_gpu", on_gpu.mse)
    record_property("test_mse_cpu", on_cpu.mse)
    assert math.isfinite(on_gpu.mse)
    assert math.isclose(on_gpu.mse, on_cpu.mse, rel_tol=1e-3, abs_tol=1e-5)
    assert on_gpu.u_pred.shape == on_cpu.u_pred.shape == tiny.u[tiny.indices("test")].shape
    assert np.abs(on_gpu.u_pred - on_cpu.u_pred).max() < 1e-3


def test_a_diverging_candidate_is_recorded_unstable_on_the_gpu(tiny):
    """The approach of tests/test_training.py: explicit Euler far past its stability limit."""
    spec = CandidateSpec(
        reaction="ap",
        diffusion="laplacian_global",
        diffusion_hyperparameters={"conductivity": 90.0},
    )
    gpu = fit(spec, tiny, TrainingConfig(device=DEVICE, **FAST))
    assert gpu.status == "unstable"
    assert gpu.failure["epoch"] == 1 and gpu.failure["step"] >= 1
    assert gpu.failure["time_ms"] > 0
    assert gpu.best_val_loss is None and gpu.state_dict is None
    assert gpu.diagnosis.verdict == "unstable"
    cpu = fit(spec, tiny, TrainingConfig(device="cpu", **FAST))
    assert cpu.status == "unstable"
    # both blow up within a frame (5 Euler steps) of each other
    assert abs(gpu.failure["step"] - cpu.failure["step"]) <= 5


def test_a_lead_field_recording_trains_on_the_gpu(small_mesh):
    """The observation operator follows the model to the GPU (signals, not TMP, are fitted)."""
    small = {
        "n_samples": 6,
        "split_sizes": (3, 2, 1),
        "duration_ms": 40.0,
        "seed": 1,
        "scar_radius_mm": 3.0,
        "scar_border_mm": 2.0,
        "pacing_radius_mm": 4.0,
        "n_electrodes": 16,
    }
    egm = make_egm_standin(standin_config("ap", **small), mesh=small_mesh, name="egm_small")
    spec = CandidateSpec(reaction="ap", diffusion="laplacian_global")
    options = {**FAST, "epochs": 1}
    gpu_config = TrainingConfig(device=DEVICE, **options)
    gpu = fit(spec, egm, gpu_config)
    cpu = fit(spec, egm, TrainingConfig(device="cpu", **options))
    assert gpu.status == cpu.status == "ok"
    np.testing.assert_allclose(gpu.val_losses, cpu.val_losses, rtol=1e-2, atol=1e-6)
    evaluation = evaluate(spec, egm, gpu.state_dict, "test", gpu_config)
    assert math.isfinite(evaluation.mse) and evaluation.observation != "tmp"
