"""Tests for leads_engine.plots: every function writes a sane PNG, NaN ATs and tets included."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from leads_engine.plots import (
    boundary_faces,
    plot_activation_comparison,
    plot_activation_grid,
    plot_activation_map,
    plot_traces,
    plot_training_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_side: int = 200) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert min_side <= img.shape[0] <= 4000 and min_side <= img.shape[1] <= 4000
    assert img[..., :3].std() > 0.01  # not a blank canvas


def grid_surface(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A triangulated, gently curved n x n sheet."""
    xs, ys = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
    points = np.column_stack([xs.ravel(), ys.ravel(), 0.2 * np.sin(3 * xs.ravel())])
    idx = np.arange(n * n).reshape(n, n)
    a, b = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel()
    c, d = idx[:-1, 1:].ravel(), idx[1:, 1:].ravel()
    cells = np.concatenate([np.column_stack([a, b, d]), np.column_stack([a, d, c])])
    return points, cells


def cube_tets() -> tuple[np.ndarray, np.ndarray]:
    """Unit cube split into 6 tetrahedra around the main diagonal 0-6 (12 boundary faces)."""
    points = np.array(
        [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]],
        dtype=float,
    )
    cells = np.array(
        [[0, 1, 2, 6], [0, 2, 3, 6], [0, 3, 7, 6], [0, 7, 4, 6], [0, 4, 5, 6], [0, 5, 1, 6]]
    )
    return points, cells


def test_boundary_faces_of_tets() -> None:
    points, cells = cube_tets()
    faces = boundary_faces(cells)
    assert faces.shape == (12, 3)  # 2 triangles per cube side
    # The main diagonal 0-6 is interior: no boundary face contains both nodes.
    assert not any({0, 6} <= set(f) for f in faces.tolist())
    # Every boundary face lies on a cube side: one coordinate constant at 0 or 1.
    for f in faces:
        p = points[f]
        assert np.any(np.all(p == p[0], axis=0))
    tri = np.array([[0, 1, 2]])
    np.testing.assert_array_equal(boundary_faces(tri), tri)
    with pytest.raises(ValueError):
        boundary_faces(np.zeros((2, 5), dtype=int))


def test_plot_activation_map_with_nan(tmp_path: Path) -> None:
    points, cells = grid_surface()
    at = 40.0 * points[:, 0] + 5.0
    at[:4] = np.nan
    out = plot_activation_map(points, cells, at, tmp_path / "sub" / "dir" / "at.png")
    assert out == tmp_path / "sub" / "dir" / "at.png"
    assert_png(out)


def test_plot_activation_map_tets_torch_and_limits(tmp_path: Path) -> None:
    points, cells = cube_tets()
    at = torch.tensor([0.0, 5.0, 10.0, 5.0, 5.0, 10.0, float("nan"), 10.0])
    out = plot_activation_map(points, cells, at, str(tmp_path / "tet.png"), vmin=0, vmax=20)
    assert_png(out)


def test_plot_activation_map_all_nan(tmp_path: Path) -> None:
    points, cells = cube_tets()
    out = plot_activation_map(points, cells, np.full(8, np.nan), tmp_path / "nan.png")
    assert_png(out)


def test_plot_activation_map_rejects_wrong_length(tmp_path: Path) -> None:
    points, cells = cube_tets()
    with pytest.raises(ValueError):
        plot_activation_map(points, cells, np.zeros(5), tmp_path / "bad.png")


def test_plot_activation_comparison(tmp_path: Path) -> None:
    points, cells = grid_surface()
    at_true = 30.0 * points[:, 0]
    at_pred = at_true + np.random.default_rng(0).normal(0, 2.0, len(at_true))
    at_true[0] = np.nan
    at_pred[5] = np.nan
    out = plot_activation_comparison(points, cells, at_true, at_pred, tmp_path / "cmp.png")
    assert_png(out)
    tp, tc = cube_tets()
    out_tet = plot_activation_comparison(
        tp, tc, np.arange(8.0), np.arange(8.0)[::-1], tmp_path / "cmp_tet.png", titles=("a", "b")
    )
    assert_png(out_tet)


def test_plot_traces(tmp_path: Path) -> None:
    t = np.linspace(0.0, 100.0, 51)
    u = 1.0 / (1.0 + np.exp(-(t[:, None] - np.array([10.0, 30.0, 50.0])) / 2.0))
    out = plot_traces(t, u, [0, 2], tmp_path / "traces.png")
    assert_png(out)
    out_ref = plot_traces(
        t,
        torch.tensor(u),
        [0, 1, 2],
        tmp_path / "traces_ref.png",
        labels=["apex", "mid", "base"],
        u_ref=np.clip(u + 0.05, 0, 1),
    )
    assert_png(out_ref)
    with pytest.raises(ValueError):
        plot_traces(t, u, [0, 3], tmp_path / "bad.png")


def test_plot_training_curves(tmp_path: Path) -> None:
    curves = {"train": [1.0, 0.5, 0.2, 0.1, 0.08], "val": [1.2, 0.7, 0.4, 0.3]}
    assert_png(plot_training_curves(curves, tmp_path / "curves.png"))
    # Non-positive values cannot be drawn on a log axis: falls back to linear, still writes.
    assert_png(plot_training_curves({"loss": [0.0, -1.0, float("nan")]}, tmp_path / "lin.png"))
    assert_png(plot_training_curves(curves, tmp_path / "lin2.png", ylabel="AT MAE", logy=False))
    with pytest.raises(ValueError):
        plot_training_curves({}, tmp_path / "empty.png")


def test_plot_activation_grid_rows_of_methods(tmp_path: Path) -> None:
    points, cells = grid_surface()
    truth = points[:, 0] * 40.0
    silent = np.full(len(truth), np.nan)
    silent[:3] = 0.0  # a model whose wave dies at the pacing site
    rows = [
        ("AP", points, cells, {"truth": truth, "good": truth + 1.0, "no wave": silent}),
        ("RM", points, cells, {"truth": truth, "good": truth * 1.1}),
    ]
    path = plot_activation_grid(rows, tmp_path / "grid.png")
    assert_png(path)
    with pytest.raises(ValueError, match="no activation maps"):
        plot_activation_grid([], tmp_path / "empty.png")
    with pytest.raises(ValueError):
        plot_activation_grid([("AP", points, cells, {"truth": truth[:-1]})], tmp_path / "x.png")


def test_figures_drawn_from_many_threads_at_once_all_succeed(tmp_path: Path) -> None:
    """The server draws figures in worker threads; matplotlib's text layout is shared by the
    process, so concurrent draws must not break one another (a soak run saw 4 of 39 concurrent
    evaluations fail before the figures were drawn one at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    curves = {"train": list(np.geomspace(1.0, 1e-4, 12)), "val": list(np.geomspace(2, 2e-4, 12))}

    def draw(i: int) -> Path:
        noisy = {k: [v * (1 + 0.1 * rng.random()) for v in vs] for k, vs in curves.items()}
        return plot_training_curves(noisy, tmp_path / f"curves_{i}.png", title=f"run {i} ($x$)")

    with ThreadPoolExecutor(max_workers=8) as pool:
        paths = list(pool.map(draw, range(48)))
    for path in paths:
        assert_png(path)
