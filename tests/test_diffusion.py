"""Diffusion catalog: every template's contract, the physical operators, and the loader."""

from __future__ import annotations

import ast
import inspect
import math
from importlib import resources

import numpy as np
import pytest
import torch

from leads_engine.diffusion import (
    DiffusionSpecError,
    build_diffusion,
    list_templates,
    load_diffusion_class,
    parameter_count,
    resolve_hyperparameters,
    template_info,
    template_source,
)
from leads_engine.fibers import rule_based_fibers
from leads_engine.graph import MeshGraph
from leads_engine.heart_mesh import make_lv_mesh

TEMPLATES = [info.name for info in list_templates()]
ALLOWED_IMPORTS = {"torch", "torch_geometric", "math"}


@pytest.fixture(scope="module")
def mesh():
    plain = make_lv_mesh(200)  # with fibres: laplacian_anisotropic needs them
    return plain.with_fibers(rule_based_fibers(plain))


@pytest.fixture(scope="module")
def graphs(mesh):
    return {b: MeshGraph.from_mesh(mesh, b) for b in (1, 2)}


def _field(mesh, batch_size: int, seed: int = 0) -> torch.Tensor:
    """A smooth-ish random potential per sample, [B*N, 1]."""
    generator = torch.Generator().manual_seed(seed)
    pos = torch.tensor(np.array(mesh.points), dtype=torch.float32)
    samples = []
    for _ in range(batch_size):
        direction = torch.randn(3, generator=generator)
        wave = torch.sin(0.3 * pos @ direction).unsqueeze(1)
        samples.append(wave + 0.1 * torch.randn(mesh.n_nodes, 1, generator=generator))
    return torch.cat(samples)


def _build(name: str, num_nodes: int, seed: int = 0, **hyperparameters) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_diffusion(name, num_nodes, hyperparameters or None)


# ---- every template -------------------------------------------------------------------


@pytest.mark.parametrize("name", TEMPLATES)
def test_forward_shape_dtype_finite(name, mesh, graphs):
    module = _build(name, mesh.n_nodes)
    out = module(_field(mesh, 2), graphs[2])
    assert out.shape == (2 * mesh.n_nodes, 1)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", TEMPLATES)
def test_gradients_reach_every_parameter(name, mesh, graphs):
    module = _build(name, mesh.n_nodes)
    u = _field(mesh, 2).requires_grad_()
    target = torch.randn(2 * mesh.n_nodes, 1, generator=torch.Generator().manual_seed(1))
    ((module(u, graphs[2]) - target) ** 2).mean().backward()
    assert u.grad is not None and torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0
    params = dict(module.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    if params:
        assert any(p.grad.abs().sum() > 0 for p in params.values())


@pytest.mark.parametrize("name", TEMPLATES)
def test_batching_matches_single_sample(name, mesh, graphs):
    module = _build(name, mesh.n_nodes)
    pair = _field(mesh, 2, seed=3)
    n = mesh.n_nodes
    with torch.no_grad():
        batched = module(pair, graphs[2])
        alone = module(pair[n:], graphs[1])
    torch.testing.assert_close(batched[n:], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TEMPLATES)
def test_same_seed_same_output(name, mesh, graphs):
    u = _field(mesh, 2)
    first = _build(name, mesh.n_nodes, seed=7)(u, graphs[2])
    second = _build(name, mesh.n_nodes, seed=7)(u, graphs[2])
    torch.testing.assert_close(first, second, rtol=0, atol=0)


@pytest.mark.parametrize("name", TEMPLATES)
def test_uniform_field_gives_zero(name, mesh, graphs):
    module = _build(name, mesh.n_nodes)
    with torch.no_grad():
        out = module(torch.full((2 * mesh.n_nodes, 1), -0.7), graphs[2])
    assert out.abs().max() < 1e-5


@pytest.mark.parametrize("end", ["min", "max"])
@pytest.mark.parametrize("name", TEMPLATES)
def test_hyperparameter_range_ends_build_and_run(name, end, mesh, graphs):
    specs = template_info(name).hyperparameters
    values = {
        key: spec["choices"][0 if end == "min" else -1] if spec["type"] == "choice" else spec[end]
        for key, spec in specs.items()
    }
    out = _build(name, mesh.n_nodes, **values)(_field(mesh, 2), graphs[2])
    assert out.shape == (2 * mesh.n_nodes, 1) and torch.isfinite(out).all()


# ---- physics --------------------------------------------------------------------------


def test_laplacian_nodewise_matches_mesh_laplacian(mesh, graphs):
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.25, 1.9, mesh.n_nodes)
    module = _build("laplacian_nodewise", mesh.n_nodes)
    with torch.no_grad():
        module.raw_log_factor.copy_(torch.as_tensor(np.log(sigma)))  # global level 1
        torch.testing.assert_close(
            module.conductivity.double(), torch.as_tensor(sigma), rtol=1e-6, atol=1e-6
        )
        u = _field(mesh, 2)
        out = module(u, graphs[2]).double().numpy()
    laplacian = mesh.laplacian(sigma, per="node")
    u_np = u.double().numpy().reshape(2, mesh.n_nodes)
    expected = np.concatenate([laplacian @ sample for sample in u_np])[:, None]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_laplacian_global_is_sigma_times_unit_laplacian(mesh, graphs):
    module = _build("laplacian_global", mesh.n_nodes, conductivity=0.7)
    assert math.isclose(float(module.conductivity.detach()), 0.7, rel_tol=1e-6)
    u = _field(mesh, 2)
    with torch.no_grad():
        out = module(u, graphs[2]).double().numpy()
    u_np = u.double().numpy().reshape(2, mesh.n_nodes)
    expected = 0.7 * np.concatenate([mesh.laplacian() @ sample for sample in u_np])[:, None]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_mean_aggregation_constant_is_zero_and_rate_scales(mesh, graphs):
    module = _build("mean_aggregation", mesh.n_nodes, rate=2.5)
    assert parameter_count("mean_aggregation", mesh.n_nodes) == 0
    constant = torch.full((2 * mesh.n_nodes, 1), 3.0)
    assert module(constant, graphs[2]).abs().max() < 1e-6
    u = _field(mesh, 2)
    unit = _build("mean_aggregation", mesh.n_nodes)(u, graphs[2])
    torch.testing.assert_close(module(u, graphs[2]), 2.5 * unit)


# ---- catalog --------------------------------------------------------------------------


def test_catalog_files_and_entries_match():
    folder = resources.files("leads_catalogs") / "diffusion"
    files = {p.name for p in folder.iterdir() if p.name.endswith(".py")} - {"__init__.py"}
    entries = list_templates()
    assert {info.file for info in entries} == files
    assert len({info.name for info in entries}) == len(entries)
    for info in entries:
        assert info.file == f"{info.name}.py"
        assert info.summary and info.equation
        assert info.family in {"physical", "neural"}
        # conductances held over frames (physical: 1, networks: 2), the flux at every sub-step
        expected = ("every_frame", 1) if info.family == "physical" else ("every_2_frames", 2)
        assert (info.evaluation, info.refresh_frames) == expected


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_source_is_self_contained(name):
    tree = ast.parse(template_source(name))
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    assert [c.name for c in classes] == ["Diffusion"]
    assert ast.get_docstring(classes[0]), "the equation belongs in the class docstring"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots = {(node.module or "").split(".")[0]}
        else:
            continue
        assert roots <= ALLOWED_IMPORTS, f"{name} imports {roots - ALLOWED_IMPORTS}"


@pytest.mark.parametrize("name", TEMPLATES)
def test_signature_and_parameter_count_match_catalog(name, mesh):
    cls = load_diffusion_class(template_source(name))
    signature = inspect.signature(cls.__init__)
    specs = template_info(name).hyperparameters
    assert list(signature.parameters)[1:] == ["num_nodes", *specs]
    for key, spec in specs.items():
        assert signature.parameters[key].default == spec["default"]
    module = _build(name, mesh.n_nodes)
    assert parameter_count(name, mesh.n_nodes) == sum(p.numel() for p in module.parameters())


def test_resolve_hyperparameters_fills_defaults_and_widens_ints():
    assert resolve_hyperparameters("gcn") == {
        "hidden": 16,
        "layers": 2,
        "activation": "tanh",
        "conductivity": 1.0,
    }
    resolved = resolve_hyperparameters("laplacian_global", {"conductivity": 2})
    assert resolved == {"conductivity": 2.0} and isinstance(resolved["conductivity"], float)


@pytest.mark.parametrize(
    ("name", "values", "fragments"),
    [
        ("gcn", {"width": 8}, ["'width'", "hidden"]),
        ("gcn", {"hidden": "16"}, ["'hidden'", "'16'", "integer"]),
        ("gcn", {"hidden": True}, ["'hidden'", "True", "integer"]),
        ("gcn", {"hidden": 16.0}, ["'hidden'", "16.0"]),
        ("gcn", {"hidden": 1000}, ["'hidden'", "1000", "[4, 64]"]),
        ("chebyshev", {"K": 0}, ["'K'", "0", "[1, 6]"]),
        ("laplacian_global", {"conductivity": -1.0}, ["'conductivity'", "-1.0"]),
        ("laplacian_global", {"conductivity": "1"}, ["'conductivity'", "number"]),
        ("gat", {"activation": "sigmoid"}, ["'activation'", "'sigmoid'", "tanh"]),
    ],
)
def test_resolve_hyperparameters_errors_name_the_parameter(name, values, fragments):
    with pytest.raises(DiffusionSpecError) as error:
        resolve_hyperparameters(name, values)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_unknown_template_lists_known_names():
    with pytest.raises(DiffusionSpecError, match="known templates: .*laplacian_global"):
        template_info("heat_kernel")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("import torch\n", "no class named 'Diffusion'"),
        ("class Diffusion:\n    pass\n", "subclass of torch.nn.Module"),
        ("class Diffusion(\n", "syntax error"),
        ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ],
)
def test_load_diffusion_class_refuses_bad_sources(source, message):
    with pytest.raises(DiffusionSpecError, match=message):
        load_diffusion_class(source)


def test_edited_source_overrides_catalog(mesh, graphs):
    edited = template_source("mean_aggregation").replace(
        "per_node = self.rate * graph", "per_node = 2.0 * self.rate * graph"
    )
    assert edited != template_source("mean_aggregation")
    u = _field(mesh, 2)
    original = build_diffusion("mean_aggregation", mesh.n_nodes)(u, graphs[2])
    doubled = build_diffusion("mean_aggregation", mesh.n_nodes, source=edited)(u, graphs[2])
    torch.testing.assert_close(doubled, 2.0 * original)
    with pytest.raises(DiffusionSpecError, match="'rate'"):
        build_diffusion("mean_aggregation", mesh.n_nodes, {"rate": "fast"}, source=edited)
