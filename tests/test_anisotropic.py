"""Anisotropic conduction end to end: plane-wave speeds on a flat sheet against the analytic
ratio, the template at the truth through the fused integrator, recovery of the along/across
ratio by a fit, the generator, ``leads-data generate --fibers``, and the server's tools."""

from __future__ import annotations

import math

import leads_server
import numpy as np
import pytest
import torch
from leads_server.scripting import ToolCallError
from server_calls import save_tiny
from test_fibers import in_plane, sheet

from leads_engine.cli import main as leads_data
from leads_engine.dataset import load_dataset
from leads_engine.diffusion import build_diffusion
from leads_engine.fibers import rule_based_fibers
from leads_engine.generator import BenchmarkConfig, conductivity_map, generate_benchmark
from leads_engine.graph import FiberFieldMissing, MeshGraph
from leads_engine.heart_mesh import make_lv_mesh
from leads_engine.hybrid import HybridModel
from leads_engine.metrics import activation_times
from leads_engine.reactions import build_reaction
from leads_engine.simulator import Pacing, simulate
from leads_engine.spec import CandidateSpec
from leads_engine.training import TrainingConfig, fit, load_model

RATIO = 3.0


def _wave_speeds(mesh, laplacian, normals, window=(-8.0, 12.0)) -> list[float]:
    """Plane-wave speed (mm/ms) along each unit ``normal``: a band at ``s < -15 mm`` from the
    sheet's centre starts the wave, and the slope of the activation time against ``s`` on the
    centre line (``|s_perp| < 1 mm``, ``s`` in ``window``) gives the speed."""
    offset = mesh.points - mesh.points.mean(axis=0)
    bands, lines = [], []
    for normal in normals:
        s = offset @ normal
        across = offset @ np.cross([0.0, 0.0, 1.0], normal)
        bands.append(np.where(s < -15.0, 0.0, np.inf))
        lines.append((s, (np.abs(across) < 1.0) & (s >= window[0]) & (s <= window[1])))
    t = np.arange(0.0, 140.0, 0.5)
    result = simulate(
        laplacian,
        build_reaction("ap", learnable=False),
        Pacing(list(range(len(normals))), radius=0.5),
        t,
        np.stack(bands),
        step_size=0.025,  # the isotropic sheet at h = 0.5 mm needs dt < 2 h^2 / (8 sigma)
        device="cpu",
    )
    at = activation_times(result.u.numpy(), t)
    speeds = []
    for sample, (s, line) in enumerate(lines):
        assert np.isfinite(at[sample][line]).all(), "the wave did not cross the window"
        speeds.append(1.0 / np.polyfit(s[line], at[sample][line], 1)[0])
    return speeds


def test_plane_waves_along_and_across_rotated_fibres_match_the_conductivity_ratio():
    """On a 60 mm sheet meshed along x/y with fibres at 30 degrees, a plane wave whose normal
    is the fibre runs sqrt(sigma_l / sigma_t) times faster than one across the fibres, and
    along the fibres as fast as in isotropic tissue of conductivity sigma_l."""
    mesh = sheet(n=121, size=60.0)
    sigma_l = 1.5
    fibre = in_plane(30.0, 1)[0]
    normal = np.cross([0.0, 0.0, 1.0], fibre)
    anisotropic = mesh.with_fibers(np.tile(fibre, (mesh.n_nodes, 1)))
    along, across = _wave_speeds(
        mesh, anisotropic.laplacian(sigma_l, transverse=sigma_l / RATIO), [fibre, normal]
    )
    (isotropic,) = _wave_speeds(mesh, mesh.laplacian(sigma_l), [fibre])
    assert along / across == pytest.approx(math.sqrt(RATIO), rel=0.05)
    assert along == pytest.approx(isotropic, rel=0.02)
    assert 0.3 < along < 0.7  # mm/ms: the AP wave at sigma = 1.5 on this sheet runs ~0.47


@pytest.fixture(scope="module")
def anisotropic_set():
    """AP with rule-based fibres, conductivities 3x larger along than across, 300 nodes."""
    config = BenchmarkConfig(
        reaction="ap",
        n_samples=20,
        split_sizes=(16, 2, 2),
        duration_ms=120.0,
        fibers="rule",
        anisotropy=RATIO,
        seed=0,
    )
    return generate_benchmark(config, make_lv_mesh(300), name="aniso_ap")


def test_the_generator_stores_fibres_and_what_the_ratio_means(anisotropic_set):
    data = anisotropic_set
    assert data.fibers.shape == (300, 3) and data.anisotropy == RATIO
    assert data.meta["diffusion"] == "fe_laplacian_anisotropic"
    assert data.meta["fibers"]["source"] == "rule" and data.meta["fibers"]["per"] == "node"
    assert "sqrt" in data.meta["fibers"]["ratio_of"]
    assert data.meta["config"]["anisotropy"] == RATIO
    # every node activates, and later than in the isotropic set (across-fibre conduction is slower)
    at = activation_times(data.u, data.t)
    assert np.isfinite(at).all()
    config = BenchmarkConfig(**{**data.meta["config"], "fibers": "none", "anisotropy": 1.0})
    isotropic = generate_benchmark(config, make_lv_mesh(300))
    assert "fibers" not in isotropic.extras and "fibers" not in isotropic.meta
    assert np.nanmean(at) > 1.1 * np.nanmean(activation_times(isotropic.u, isotropic.t))


def test_equal_conductivities_along_and_across_give_the_isotropic_set():
    common = {"n_samples": 2, "split_sizes": (1, 1, 0), "duration_ms": 30.0, "seed": 1}
    mesh = make_lv_mesh(200)
    isotropic = generate_benchmark(BenchmarkConfig(**common), mesh)
    fibred = generate_benchmark(BenchmarkConfig(**common, fibers="rule", anisotropy=1.0), mesh)
    np.testing.assert_allclose(fibred.u, isotropic.u, atol=1e-5)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"anisotropy": 3.0}, "needs fibres"),
        ({"fibers": "dti"}, "fibers must be one of"),
        ({"fibers": "rule", "anisotropy": 0.0}, "positive ratio"),
        ({"fibers": "rule", "anisotropy": math.nan}, "positive ratio"),
    ],
)
def test_bad_generator_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        BenchmarkConfig(**settings)


def test_fibres_from_the_mesh_are_required_when_asked_for():
    config = BenchmarkConfig(n_samples=2, split_sizes=(1, 1, 0), fibers="mesh", anisotropy=2.0)
    with pytest.raises(ValueError, match="needs a mesh with a fibre field"):
        generate_benchmark(config, make_lv_mesh(100))


def test_the_template_at_the_truth_reproduces_the_data_through_the_fused_integrator(
    anisotropic_set,
):
    """The trainer's multirate Euler (dt = 0.4 ms, 12x the generator's) with the true tensor
    stays stable and close to the data; the isotropic template at the along-fibre truth does
    not, which is what makes the ratio identifiable."""
    data = anisotropic_set
    sigma = conductivity_map(
        data.mesh(), BenchmarkConfig(**data.meta["config"]), np.random.default_rng(0)
    ).sigma
    np.testing.assert_allclose(sigma, data.conductivity)
    level = 1.5
    graph = MeshGraph.from_mesh(data.mesh(), 4)
    u0 = torch.from_numpy(data.u[:4, 0])
    target = torch.from_numpy(data.u[:4, 1:])

    def rollout(diffusion: str, **raw: torch.Tensor) -> float:
        module = build_diffusion(diffusion, data.n_nodes, {"conductivity": level})
        with torch.no_grad():
            module.raw_log_factor.copy_(torch.as_tensor(np.log(sigma / level)))
            for name, value in raw.items():
                getattr(module, name).copy_(value)
        model = HybridModel(module, build_reaction("ap", learnable=False))
        with torch.no_grad():
            predicted = model.rollout(u0, graph, data.n_frames - 1, 2.0, 5)
        return float(((predicted - target) ** 2).mean())

    across = torch.tensor(math.log(math.expm1(level / RATIO)))
    anisotropic = rollout("laplacian_anisotropic", raw_across=across)
    isotropic = rollout("laplacian_nodewise")
    assert anisotropic < 2e-3
    assert isotropic > 5 * anisotropic


def test_the_anisotropic_template_recovers_the_ratio(anisotropic_set):
    """An engine fit from an isotropic start (ratio 1), learnable AP reaction, 8 epochs."""
    spec = CandidateSpec(reaction="ap", diffusion="laplacian_anisotropic")
    config = TrainingConfig(epochs=8, checkpoint_frames=10, compile=False)
    result = fit(spec, anisotropic_set, config)
    assert result.status == "ok"
    assert result.val_losses[-1] < 0.1 * result.val_losses[0]
    model = load_model(spec, anisotropic_set, result.state_dict)
    ratio = float(model.diffusion.anisotropy_ratio.detach())
    assert ratio == pytest.approx(RATIO, rel=0.15)


def test_the_template_refuses_a_data_set_without_fibres(tiny):
    spec = CandidateSpec(reaction="ap", diffusion="laplacian_anisotropic")
    with pytest.raises(FiberFieldMissing, match="needs a fibre field"):
        fit(spec, tiny, TrainingConfig(epochs=1, compile=False))


# ---- command line and tools ------------------------------------------------------------


def test_leads_data_generate_with_rule_fibres(tmp_path, capsys):
    arguments = ["generate", "--reaction", "ap", "--samples", "3", "--split", "1", "1", "1"]
    arguments += ["--duration", "20", "--out", str(tmp_path)]
    assert leads_data([*arguments, "--fibers", "rule", "--anisotropy", "3"]) == 0
    data = load_dataset(tmp_path / "ap.npz")
    assert data.fibers.shape == (1119, 3) and data.anisotropy == 3.0
    assert leads_data([*arguments, "--anisotropy", "3", "--name", "x"]) == 2
    assert "needs a fibre field" in capsys.readouterr().err.replace("\n", " ")
    assert leads_data([*arguments, "--fibers", "mesh", "--name", "y"]) == 2
    assert "--fibers mesh reads the fibres of a --mesh file" in capsys.readouterr().err


def test_leads_data_generate_with_fibres_from_a_mesh_file(tmp_path, capsys):
    mesh = make_lv_mesh(300)

    fibred = mesh.with_fibers(rule_based_fibers(mesh, helix_angle_deg=-30.0))
    fibred.save(tmp_path / "lv.vtu")
    mesh.save(tmp_path / "plain.vtu")
    arguments = ["generate", "--reaction", "ap", "--samples", "3", "--split", "1", "1", "1"]
    arguments += ["--duration", "20", "--out", str(tmp_path), "--fibers", "mesh"]
    assert leads_data([*arguments, "--mesh", str(tmp_path / "lv.vtu"), "--anisotropy", "2"]) == 0
    data = load_dataset(tmp_path / "ap.npz")
    np.testing.assert_allclose(data.fibers, fibred.fibers, atol=1e-12)
    assert data.meta["fibers"]["source"] == "mesh" and data.anisotropy == 2.0
    assert leads_data([*arguments, "--mesh", str(tmp_path / "plain.vtu"), "--name", "z"]) == 2
    assert "no fibre field" in capsys.readouterr().err


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_tools_train_and_evaluate_the_anisotropic_template(leads_home):
    save_tiny(leads_home, "aniso_tiny", fibers="rule", anisotropy=RATIO)
    save_tiny(leads_home, "tiny")
    async with leads_server.connect(archive=leads_home / "archive.duckdb") as tools:
        catalogs = await tools.list_catalogs()
        names = [t.name for t in catalogs.diffusion_templates]
        assert "laplacian_anisotropic" in names
        session = await tools.start_session(
            dataset="aniso_tiny", budget=2, epochs=2, anonymise=False
        )
        await tools.select_reaction(session.session_id, "aliev_panfilov")
        await tools.select_diffusion(
            session.session_id, "laplacian_anisotropic", {"anisotropy": 2.0}
        )
        trained = await tools.train_candidate(session.session_id)
        assert trained.status == "ok" and trained.diffusion == "laplacian_anisotropic"
        evaluation = await tools.evaluate_candidate(session.session_id, trained.candidate_id)
        assert math.isfinite(evaluation.mse) and evaluation.mse < 0.05
        # a set without fibres: refused when selected, before any training, saying why
        plain = await tools.start_session(dataset="tiny", budget=2, epochs=1, anonymise=False)
        await tools.select_reaction(plain.session_id, "aliev_panfilov")
        with pytest.raises(ToolCallError, match="needs a fibre field.*laplacian_nodewise"):
            await tools.select_diffusion(plain.session_id, "laplacian_anisotropic")
