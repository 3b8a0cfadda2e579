"""Recordings: observation operators, the EGM stand-in, the importer and its refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from leads_engine.cli import main
from leads_engine.dataset import DatasetError, load_dataset
from leads_engine.generator import BenchmarkConfig, generate_benchmark
from leads_engine.metrics import activation_summary
from leads_engine.observation import (
    ContactNodeObservation,
    IdentityObservation,
    LeadFieldObservation,
    electrode_correlation,
    infinite_medium_lead_field,
    observation_for,
)
from leads_engine.recordings import (
    RecordingError,
    electrodes_around,
    import_recording,
    make_egm_standin,
    standin_config,
)
from leads_engine.spec import CandidateSpec
from leads_engine.training import TrainingConfig, evaluate, fit

#: A small stand-in: 8 beats of 70 ms on the 200-node mesh, 32 electrodes. The scar and the
#: stimulus are shrunk so that 8 pacing sites fit on the small ventricle.
SMALL = {
    "n_samples": 8,
    "split_sizes": (4, 2, 2),
    "duration_ms": 70.0,
    "seed": 1,
    "scar_radius_mm": 3.0,
    "scar_border_mm": 2.0,
    "pacing_radius_mm": 4.0,
    "n_electrodes": 32,
}


@pytest.fixture(scope="module")
def egm(small_mesh):
    return make_egm_standin(standin_config("ap", **SMALL), mesh=small_mesh, name="egm_small")


@pytest.fixture(scope="module")
def tmp_set(small_mesh):
    config = BenchmarkConfig(
        reaction="ap", n_samples=4, split_sizes=(2, 1, 1), duration_ms=40.0, seed=1
    )
    return generate_benchmark(config, mesh=small_mesh, name="tmp")


# ---- operators -------------------------------------------------------------------------------


def test_a_set_without_recording_is_observed_as_tmp(tmp_set):
    operator = observation_for(tmp_set)
    assert isinstance(operator, IdentityObservation) and operator.name == "tmp"
    targets = operator.targets(tmp_set, np.array([0, 1]))
    assert torch.equal(targets, torch.from_numpy(tmp_set.u[:2, 1:]))


def test_lead_field_sees_wavefronts_not_uniform_potentials(small_mesh):
    positions = electrodes_around(small_mesh, 16)
    H = infinite_medium_lead_field(small_mesh, positions)
    assert H.shape == (16, small_mesh.n_nodes)
    np.testing.assert_allclose(H.sum(axis=1), 0.0, atol=1e-9 * np.abs(H).max())
    # electrodes lie outside the heart on the enclosing ellipsoid
    low, high = small_mesh.points.min(0), small_mesh.points.max(0)
    centre, half = (low + high) / 2, (high - low) / 2
    assert (((positions - centre) / half) ** 2).sum(axis=1).min() > 1.0
    # a depolarised patch gives its strongest signal on the nearest electrode
    patch = small_mesh.graph_distances(0)[0] <= 4.0
    signal = np.abs(H @ patch.astype(float))
    nearest = np.argmin(((positions - small_mesh.points[0]) ** 2).sum(axis=1))
    assert signal.argmax() == nearest


def test_recording_uses_lead_field_with_training_split_standardisation(egm):
    operator = observation_for(egm)
    assert isinstance(operator, LeadFieldObservation) and operator.name == "lead_field"
    train = egm.extras["signals"][egm.indices("train")].astype(np.float64)
    np.testing.assert_allclose(operator.standardisation.mean, train.mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(operator.standardisation.scale, train.std(axis=(0, 1)), rtol=1e-4)
    # through the operator the true TMP reproduces the targets up to noise and wander
    index = egm.indices("test")
    raw = operator.raw(torch.from_numpy(make_tmp(egm)[index, 1:]))
    assert electrode_correlation(raw.numpy(), egm.extras["signals"][index, 1:]).mean() > 0.95
    assert observation_for(egm, normalisation="none").standardisation is None


def make_tmp(egm) -> np.ndarray:
    """The stand-in's hidden TMP, re-simulated (the data set does not carry it)."""
    return generate_benchmark(egm_benchmark(egm), mesh=egm.mesh()).u


def egm_benchmark(egm) -> BenchmarkConfig:
    config = dict(egm.meta["egm_config"]["benchmark"])
    config["split_sizes"] = tuple(config["split_sizes"])
    config["gradient_apex_base"] = tuple(config["gradient_apex_base"])
    return BenchmarkConfig(**config)


def test_contact_nodes_observe_the_tmp_under_the_electrodes(tmp_set):
    nodes = torch.tensor([3, 50, 7])
    operator = ContactNodeObservation(nodes)
    u = torch.from_numpy(tmp_set.u[:2])
    assert torch.equal(operator.observe(u), u[..., nodes])


def test_electrode_correlation_is_pearson_per_electrode():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(3, 40, 4))
    assert np.allclose(electrode_correlation(2 * truth + 1, truth), 1.0)
    assert np.allclose(electrode_correlation(-truth, truth), -1.0)
    flat = truth.copy()
    flat[:, :, 2] = 5.0
    assert np.isnan(electrode_correlation(flat, truth)[2])


# ---- the stand-in ----------------------------------------------------------------------------


def test_standin_is_a_recording_without_tmp_and_round_trips(egm, small_mesh, tmp_path):
    assert egm.u is None and egm.is_recording
    assert egm.extras["signals"].shape == (8, egm.n_frames, 32)
    assert egm.extras["H"].shape == (32, small_mesh.n_nodes)
    assert egm.meta["observation"] == {"kind": "lead_field", "normalisation": "standardise"}
    loaded = load_dataset(egm.save(tmp_path / "egm.npz"))
    assert loaded.u is None
    for key in ("H", "signals", "electrode_positions", "measured_activation_times"):
        assert np.array_equal(loaded.extras[key], egm.extras[key]), key
    again = make_egm_standin(standin_config("ap", **SMALL), mesh=small_mesh)
    assert np.array_equal(again.extras["signals"], egm.extras["signals"])
    # the rollout starts from the pacing stimulus, identical to the simulation's first frame
    np.testing.assert_array_equal(loaded.initial_tmp(), make_tmp(egm)[:, 0])


def test_physics_oracle_through_the_lead_field_recovers_activation_times(egm):
    """Trained on electrograms only (no TMP), the oracle's AT error is below 5% of the window."""
    spec = CandidateSpec(reaction="ap", diffusion="laplacian_nodewise")
    config = TrainingConfig(
        epochs=8, batch_size=2, checkpoint_frames=5, compile=False, physical_learning_rate=5e-2
    )
    result = fit(spec, egm, config)
    assert result.status == "ok"
    assert result.best_val_loss < 0.5 * result.val_losses[0]
    untrained = evaluate(spec, egm, None, "test", config)
    evaluation = evaluate(spec, egm, result.state_dict, "test", config)
    test = egm.indices("test")
    window = activation_summary(egm.extras["measured_activation_times"][test])[
        "total_activation_time_mean"
    ]
    assert evaluation.at_source == "measured" and evaluation.observation == "lead_field"
    assert evaluation.activation_error.n_compared == len(test) * egm.n_nodes
    assert evaluation.activation_error.mae < 0.05 * window  # measured: ~0.6 ms of ~48 ms
    assert evaluation.activation_error.mae < untrained.activation_error.mae
    assert evaluation.egm_correlation > 0.95
    assert len(evaluation.per_sample_at_mae) == len(test)
    summary = evaluation.summary()
    assert summary["egm_correlation"] == evaluation.egm_correlation
    assert summary["at_source"] == "measured" and summary["tmp_mse"] is None


# ---- the importer ----------------------------------------------------------------------------


@pytest.fixture
def recording_files(egm, small_mesh, tmp_path) -> dict[str, Path]:
    """The stand-in split into the files a lab would hand over (mesh as VTK)."""
    files = {"mesh": tmp_path / "heart.vtk"}
    small_mesh.save(files["mesh"])
    arrays = {
        "signals": egm.extras["signals"],
        "times": egm.t,
        "electrodes": egm.extras["electrode_positions"],
        "lead_field": egm.extras["H"],
        "pacing_sites": egm.pacing_site,
        "activation_times": egm.extras["measured_activation_times"],
    }
    for key, value in arrays.items():
        files[key] = tmp_path / f"{key}.npy"
        np.save(files[key], value)
    return files


def test_import_through_the_cli_writes_a_trainable_recording(recording_files, leads_home, egm):
    f = recording_files
    argv = ["import", "--mesh", str(f["mesh"]), "--signals", str(f["signals"]), "--times"]
    argv += [str(f["times"]), "--electrodes", str(f["electrodes"]), "--pacing-sites"]
    argv += [str(f["pacing_sites"]), "--activation-times", str(f["activation_times"])]
    assert main([*argv, "--split", "4", "2", "2", "--name", "utah_like"]) == 0
    data = load_dataset("utah_like")
    assert data.u is None and data.conductivity is None
    assert data.meta["observation"]["kind"] == "lead_field"
    np.testing.assert_allclose(data.extras["H"], egm.extras["H"], rtol=1e-6)
    assert sorted(data.split.tolist()) == sorted(["train"] * 4 + ["val"] * 2 + ["test"] * 2)
    config = TrainingConfig(epochs=1, batch_size=4, checkpoint_frames=5, compile=False)
    spec = CandidateSpec(reaction="ap", diffusion="laplacian_global")
    result = fit(spec, data, config)
    assert result.status == "ok"
    assert evaluate(spec, data, result.state_dict, "test", config).at_source == "measured"


def test_per_electrode_activation_times_are_compared_at_their_nodes(egm, small_mesh):
    signals = egm.extras["signals"]
    nodes = np.array([0, 40, 80, 120])
    at = egm.extras["measured_activation_times"][:, nodes]
    data = import_recording(
        small_mesh,
        signals[:, :, :4],
        egm.t,
        contact_nodes=nodes,
        activation_times_ms=at,
        split=(4, 2, 2),
    )
    assert data.meta["observation"]["kind"] == "contact_nodes"
    assert isinstance(observation_for(data), ContactNodeObservation)
    np.testing.assert_array_equal(data.pacing_site, nodes[np.nanargmin(at, axis=1)])
    config = TrainingConfig(checkpoint_frames=5, compile=False)
    spec = CandidateSpec(reaction="ap", diffusion="laplacian_global")
    evaluation = evaluate(spec, data, None, "test", config)
    assert evaluation.activation_error.n_compared + evaluation.activation_error.n_missing_pred == 8
    assert np.isnan(np.delete(evaluation.at_true, nodes, axis=1)).all()


def _import(files: dict[str, Path], **overrides):
    arguments = {
        "signals": files["signals"],
        "times": files["times"],
        "lead_field": files["lead_field"],
        "pacing_sites": files["pacing_sites"],
    }
    arguments.update(overrides)
    return import_recording(files["mesh"], **arguments)


def test_import_refuses_a_signals_shape_mismatch(recording_files, egm):
    with pytest.raises(RecordingError, match=r"signals: expected shape .* found \(36, 32\)"):
        _import(recording_files, signals=egm.extras["signals"][0])
    with pytest.raises(RecordingError, match=r"times: expected shape \(36,\).* found \(30,\)"):
        _import(recording_files, times=egm.t[:30])
    with pytest.raises(RecordingError, match=r"H: has 31 rows but the signals have 32"):
        _import(recording_files, lead_field=egm.extras["H"][:31])
    with pytest.raises(RecordingError, match=r"pacing_sites: expected shape \(8,\)"):
        _import(recording_files, pacing_sites=egm.pacing_site[:3])


def test_import_refuses_nan_runs_naming_electrode_and_frames(recording_files, egm):
    signals = egm.extras["signals"].copy()
    signals[2, 10:14, 5] = np.nan
    with pytest.raises(RecordingError, match="signals: NaN.*sample 2, electrode 5, frames 10-13"):
        _import(recording_files, signals=signals)


def test_import_refuses_a_lead_field_that_does_not_match_the_mesh(recording_files, egm):
    H = np.pad(egm.extras["H"], ((0, 0), (0, 7)))
    with pytest.raises(RecordingError, match="H: has 207 columns but the mesh has 200 nodes"):
        _import(recording_files, lead_field=H)


def test_import_refuses_seconds_and_uneven_frames(recording_files, egm):
    with pytest.raises(RecordingError, match="times: .*looks like seconds"):
        _import(recording_files, times=egm.t / 1000.0)
    uneven = egm.t.copy()
    uneven[20:] += 0.5
    with pytest.raises(RecordingError, match="times: .*equally spaced.*frames 19-20"):
        _import(recording_files, times=uneven)


def test_import_cli_reports_the_refusal(recording_files, leads_home, egm, tmp_path, capsys):
    bad = tmp_path / "bad_H.npy"
    np.save(bad, egm.extras["H"][:, :150])
    f = recording_files
    argv = ["import", "--mesh", str(f["mesh"]), "--signals", str(f["signals"]), "--times"]
    argv += [str(f["times"]), "--lead-field", str(bad), "--pacing-sites", str(f["pacing_sites"])]
    assert main([*argv, "--name", "broken"]) == 2
    assert "H: has 150 columns but the mesh has 200 nodes" in capsys.readouterr().err
    assert not (leads_home / "datasets" / "broken.npz").exists()


def test_the_data_set_refuses_inconsistent_recording_fields(egm):
    extras = dict(egm.extras)
    extras["electrode_positions"] = extras["electrode_positions"][:5]
    fields = {
        "points": egm.points,
        "cells": egm.cells,
        "u": None,
        "t": egm.t,
        "pacing_site": egm.pacing_site,
        "split": egm.split,
        "conductivity": None,
        "meta": egm.meta,
    }
    from leads_engine.dataset import EPDataset

    with pytest.raises(DatasetError, match=r"electrode_positions: expected \[32, 3\]"):
        EPDataset(**fields, extras=extras)
    with pytest.raises(DatasetError, match="u: missing; only a recording"):
        EPDataset(**fields, extras={"H": egm.extras["H"]})
    bad_meta = {**egm.meta, "observation": {"kind": "ecg12"}}
    with pytest.raises(DatasetError, match="meta.observation.kind"):
        EPDataset(**{**fields, "meta": bad_meta}, extras=dict(egm.extras))


def test_make_egm_cli_writes_the_standin(leads_home):
    argv = ["make-egm", "--reaction", "ap", "--samples", "5", "--split", "3", "1", "1"]
    assert main([*argv, "--duration", "10", "--electrodes", "16", "--name", "egm_cli"]) == 0
    data = load_dataset("egm_cli")
    assert data.u is None and data.extras["signals"].shape == (5, 6, 16)
    assert data.summary()["split"] == {"train": 3, "val": 1, "test": 1}
