"""Figures for activation maps, TMP traces and training curves (PNG, headless).

The functions take plain arrays, so this module does not depend on the mesh class:

* ``points [n, 3]`` node coordinates (``[n, 2]`` is accepted and drawn at ``z = 0``);
* ``cells [m, 3]`` surface triangles or ``[m, 4]`` tetrahedra; for tetrahedra the boundary
  surface (faces that belong to exactly one tet) is drawn;
* activation times ``at [n]`` in ms with ``NaN`` for nodes that never activate.

Every figure is a standalone :class:`matplotlib.figure.Figure` rendered with the Agg canvas,
so nothing touches the global pyplot state and no display is needed.  Each function writes
a PNG (creating parent directories) and returns its :class:`pathlib.Path`.

The functions may be called from several threads (the server draws figures off its event
loop), but matplotlib's text layout is not thread-safe: its mathtext parser is shared by the
whole process, and two figures drawn at once made one fail (``ParseException: Expected end of
text, found '$'``, 4 of 39 concurrent evaluations in a soak run). So one figure is drawn at a
time in a process (:func:`_one_figure_at_a_time`).
"""

from __future__ import annotations

import functools
import textwrap
import threading
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # also registers the "3d" projection

from leads_engine.metrics import _to_numpy, at_mae

__all__ = [
    "boundary_faces",
    "plot_activation_comparison",
    "plot_activation_map",
    "plot_traces",
    "plot_training_curves",
]

DPI = 110
NOT_ACTIVATED_RGBA = (0.82, 0.82, 0.82, 1.0)  # light grey for faces touching a NaN AT
AT_CMAP = "turbo_r"  # early = red, late = blue, the usual convention for activation maps
ERROR_CMAP = "magma_r"
# (elevation, azimuth) of the two panels per map: "front" and the opposite side.
VIEWS: tuple[tuple[str, float, float], ...] = (("front", 20.0, -60.0), ("back", 20.0, 120.0))

PathLikeStr = str | PathLike[str]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


#: held while a figure is drawn: matplotlib's text layout is process-wide and not thread-safe
_DRAWING = threading.RLock()
_Plot = TypeVar("_Plot", bound=Callable[..., Path])


def _one_figure_at_a_time(plot: _Plot) -> _Plot:
    """Draw the decorated figure while holding the process's drawing lock."""

    @functools.wraps(plot)
    def draw(*args: Any, **kwargs: Any) -> Path:
        with _DRAWING:
            return plot(*args, **kwargs)

    return draw  # type: ignore[return-value]


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLikeStr) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=DPI, format="png")
    finally:
        fig.clear()  # the figure is not registered with pyplot: clearing frees it
    return out


def boundary_faces(cells: Any) -> np.ndarray:
    """Surface triangles of a mesh.

    Triangles ``[m, 3]`` are returned unchanged.  For tetrahedra ``[m, 4]`` the boundary
    faces are those that belong to exactly one tet (interior faces are shared by two).

    Returns:
        int64 array ``[k, 3]`` of node indices.
    """
    c = _to_numpy(cells, dtype=np.int64)
    if c.ndim != 2 or c.shape[1] not in (3, 4):
        raise ValueError(f"cells must be [m, 3] triangles or [m, 4] tets, got {c.shape}")
    if c.shape[1] == 3:
        return c
    local = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
    faces = c[:, local].reshape(-1, 3)  # [4m, 3]
    keys = np.sort(faces, axis=1)
    _, first, counts = np.unique(keys, axis=0, return_index=True, return_counts=True)
    return faces[np.sort(first[counts == 1])]


def _check_mesh(points: Any, cells: Any, n_values: int | None = None) -> tuple[np.ndarray, ...]:
    pts = _to_numpy(points)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise ValueError(f"points must be [n, 3], got {pts.shape}")
    if pts.shape[1] == 2:
        pts = np.column_stack([pts, np.zeros(len(pts))])
    faces = boundary_faces(cells)
    if faces.size and (faces.min() < 0 or faces.max() >= len(pts)):
        raise ValueError(f"cells index nodes outside [0, {len(pts)})")
    if n_values is not None and n_values != len(pts):
        raise ValueError(f"activation map has {n_values} values but the mesh has {len(pts)} nodes")
    return pts, faces


def _check_at(at: Any) -> np.ndarray:
    a = _to_numpy(at)
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 1:
        raise ValueError(f"activation map must be [nodes] (one sample), got shape {a.shape}")
    return a


def _color_range(*maps: np.ndarray) -> tuple[float, float]:
    finite = np.concatenate([m[np.isfinite(m)] for m in maps])
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def _draw_surface(
    ax: Any,
    pts: np.ndarray,
    faces: np.ndarray,
    values: np.ndarray,
    norm: Normalize,
    cmap: str,
    elev: float,
    azim: float,
) -> None:
    """Draw the surface on a 3-D axis, each face coloured by the mean value of its nodes."""
    face_vals = values[faces].mean(axis=1)  # NaN if any node of the face is NaN
    colors = matplotlib.colormaps[cmap](norm(face_vals))
    colors[~np.isfinite(face_vals)] = NOT_ACTIVATED_RGBA
    ax.add_collection3d(
        Poly3DCollection(pts[faces], facecolors=colors, edgecolors="none", linewidths=0.0)
    )
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = np.maximum(hi - lo, 1e-9 * max(float(np.max(hi - lo)), 1.0))
    ax.set_xlim(lo[0], lo[0] + span[0])
    ax.set_ylim(lo[1], lo[1] + span[1])
    ax.set_zlim(lo[2], lo[2] + span[2])
    ax.set_box_aspect(np.maximum(span, 0.05 * span.max()))
    ax.view_init(elev=elev, azim=azim)
    ax.set_axis_off()


def _n_nan(a: np.ndarray) -> int:
    return int((~np.isfinite(a)).sum())


# --------------------------------------------------------------------------------------------
# Activation maps
# --------------------------------------------------------------------------------------------


@_one_figure_at_a_time
def plot_activation_map(
    points: Any,
    cells: Any,
    at: Any,
    path: PathLikeStr,
    title: str = "Activation time (ms)",
    vmin: float | None = None,
    vmax: float | None = None,
    *,
    cmap: str = AT_CMAP,
) -> Path:
    """Activation-time map on the mesh surface, seen from the front and from the back.

    Each surface face is coloured by the mean AT of its nodes; faces touching a node that
    never activates (``NaN``) are drawn light grey, and the number of non-activated nodes is
    reported in the title.

    Args:
        points: node coordinates ``[n, 3]``.
        cells: triangles ``[m, 3]`` or tetrahedra ``[m, 4]`` (boundary faces are drawn).
        at: activation times ``[n]`` in ms, ``NaN`` = not activated.
        path: output PNG path (parent directories are created).
        title: figure title.
        vmin, vmax: colour-scale limits in ms (default: range of the finite ATs).
        cmap: matplotlib colormap name.

    Returns:
        The path of the written PNG.
    """
    a = _check_at(at)
    pts, faces = _check_mesh(points, cells, len(a))
    lo, hi = _color_range(a)
    norm = Normalize(vmin=lo if vmin is None else vmin, vmax=hi if vmax is None else vmax)

    fig = _new_figure((10.0, 4.8))
    axes = []
    for i, (view, elev, azim) in enumerate(VIEWS):
        ax = fig.add_subplot(1, len(VIEWS), i + 1, projection="3d")
        _draw_surface(ax, pts, faces, a, norm, cmap, elev, azim)
        ax.set_title(view)
        axes.append(ax)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.7, label="AT (ms)")
    n_nan = _n_nan(a)
    fig.suptitle(f"{title}\n{n_nan} of {len(a)} nodes not activated (grey)")
    return _save(fig, path)


@_one_figure_at_a_time
def plot_activation_comparison(
    points: Any,
    cells: Any,
    at_true: Any,
    at_pred: Any,
    path: PathLikeStr,
    titles: tuple[str, str] = ("true", "predicted"),
    *,
    cmap: str = AT_CMAP,
) -> Path:
    """True, predicted and absolute-error activation maps side by side.

    Rows are the front and back views; columns are the true map, the predicted map (both on
    the same colour scale) and ``|at_pred - at_true|`` (own scale).  Faces touching a
    non-activated node are grey.  The suptitle reports the AT MAE over nodes activated in
    both maps and the counts of nodes activated in only one of them (see
    :func:`leads_engine.metrics.at_mae`).

    Returns:
        The path of the written PNG.
    """
    a_true = _check_at(at_true)
    a_pred = _check_at(at_pred)
    if a_true.shape != a_pred.shape:
        raise ValueError(f"at_true has shape {a_true.shape} but at_pred has {a_pred.shape}")
    pts, faces = _check_mesh(points, cells, len(a_true))
    err = np.abs(a_pred - a_true)  # NaN where either map is NaN

    norm_at = Normalize(*_color_range(a_true, a_pred))
    err_hi = _color_range(err)[1] if np.isfinite(err).any() else 1.0
    norm_err = Normalize(vmin=0.0, vmax=max(err_hi, 1e-12))

    panels = (
        (f"{titles[0]} ({_n_nan(a_true)} not activated)", a_true, norm_at, cmap),
        (f"{titles[1]} ({_n_nan(a_pred)} not activated)", a_pred, norm_at, cmap),
        ("|error|", err, norm_err, ERROR_CMAP),
    )
    fig = _new_figure((13.5, 4.2 * len(VIEWS)))
    axes = np.empty((len(VIEWS), len(panels)), dtype=object)
    for r, (view, elev, azim) in enumerate(VIEWS):
        for c, (name, values, norm, cm) in enumerate(panels):
            ax = fig.add_subplot(len(VIEWS), len(panels), r * len(panels) + c + 1, projection="3d")
            _draw_surface(ax, pts, faces, values, norm, cm, elev, azim)
            ax.set_title(f"{name}\n{view}" if r == 0 else view, fontsize=9)
            axes[r, c] = ax
    fig.colorbar(
        ScalarMappable(norm=norm_at, cmap=cmap),
        ax=list(axes[:, :2].ravel()),
        shrink=0.6,
        label="AT (ms)",
    )
    fig.colorbar(
        ScalarMappable(norm=norm_err, cmap=ERROR_CMAP),
        ax=list(axes[:, 2]),
        shrink=0.6,
        label="|error| (ms)",
    )
    e = at_mae(a_pred, a_true)
    fig.suptitle(
        f"AT MAE = {e.mae:.2f} ms over {e.n_compared} nodes; "
        f"missing in prediction: {e.n_missing_pred}, spurious in prediction: {e.n_missing_true}"
    )
    return _save(fig, path)


#: characters per line of a panel title in :func:`plot_activation_grid` (a 3.2-inch panel)
TITLE_CHARACTERS = 38


@_one_figure_at_a_time
def plot_activation_grid(
    rows: list[tuple[str, Any, Any, dict[str, Any]]],
    path: PathLikeStr,
    *,
    cmap: str = AT_CMAP,
) -> Path:
    """Activation maps side by side: one row per data set, one column per map (front view).

    Each row is ``(label, points, cells, {column title: at [n]})``; the maps of a row share
    one colour scale (the first column is usually the truth), and each panel's title carries
    its AT MAE against the row's first map.
    """
    if not rows:
        raise ValueError("no activation maps to draw")
    columns = max(len(maps) for *_, maps in rows)
    fig = _new_figure((3.2 * columns + 1.0, 3.4 * len(rows)))
    view, elev, azim = VIEWS[0]
    for r, (label, points, cells, maps) in enumerate(rows):
        values = [_check_at(at) for at in maps.values()]
        pts, faces = _check_mesh(points, cells, len(values[0]))
        norm = Normalize(*_color_range(*values))
        reference = values[0]
        for c, (title, at) in enumerate(zip(maps, values, strict=True)):
            ax = fig.add_subplot(len(rows), columns, r * columns + c + 1, projection="3d")
            _draw_surface(ax, pts, faces, at, norm, cmap, elev, azim)
            error = at_mae(at, reference)
            missed = error.missed_fraction
            note = "" if c == 0 else f"\nAT MAE {error.mae:.2f} ms"
            note += f", {missed:.0%} never activated" if missed >= 0.005 else ""
            # wrapped to the panel's width: method names run long ("Best catalog structure ...")
            heading = textwrap.fill(f"{label}: {title}", width=TITLE_CHARACTERS)
            ax.set_title(f"{heading}{note}", fontsize=8)
        fig.colorbar(
            ScalarMappable(norm=norm, cmap=cmap),
            ax=fig.axes[-len(values) :],
            shrink=0.6,
            label="AT (ms)",
        )
    fig.suptitle(f"Activation times of the first test beat ({view} view)")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Traces and curves
# --------------------------------------------------------------------------------------------


@_one_figure_at_a_time
def plot_traces(
    t: Any,
    u: Any,
    nodes: Sequence[int],
    path: PathLikeStr,
    labels: Sequence[str] | None = None,
    *,
    u_ref: Any = None,
    series_labels: tuple[str, str] = ("predicted", "true"),
    title: str = "TMP traces",
) -> Path:
    """TMP versus time at selected nodes of one sample.

    Args:
        t: frame times in ms ``[frames]``.
        u: normalised TMP of one sample ``[frames, nodes]`` (drawn solid).
        nodes: node indices to plot.
        path: output PNG path.
        labels: one legend label per entry of ``nodes`` (default ``"node <i>"``).
        u_ref: optional second trajectory ``[frames, nodes]`` drawn dashed in the same colour
            per node, e.g. the ground truth when ``u`` is a prediction.
        series_labels: legend names of the solid (``u``) and dashed (``u_ref``) series.
        title: axes title.

    Returns:
        The path of the written PNG.
    """
    tt = _to_numpy(t)
    uu = _to_numpy(u)
    node_idx = [int(i) for i in nodes]
    if uu.ndim != 2 or tt.ndim != 1 or uu.shape[0] != tt.shape[0]:
        raise ValueError(f"expected t [frames] and u [frames, nodes], got {tt.shape}, {uu.shape}")
    if any(i < -uu.shape[1] or i >= uu.shape[1] for i in node_idx):
        raise ValueError(f"node index out of range for {uu.shape[1]} nodes: {node_idx}")
    if labels is not None and len(labels) != len(node_idx):
        raise ValueError(f"got {len(labels)} labels for {len(node_idx)} nodes")
    ref = None
    if u_ref is not None:
        ref = _to_numpy(u_ref)
        if ref.shape != uu.shape:
            raise ValueError(f"u_ref has shape {ref.shape} but u has {uu.shape}")
    names = list(labels) if labels is not None else [f"node {i}" for i in node_idx]

    fig = _new_figure((7.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    colors = matplotlib.colormaps["tab10"]
    for j, (i, name) in enumerate(zip(node_idx, names, strict=True)):
        color = colors(j % 10)
        ax.plot(tt, uu[:, i], color=color, lw=1.6, label=name)
        if ref is not None:
            ax.plot(tt, ref[:, i], color=color, lw=1.4, ls="--")
    handles, _ = ax.get_legend_handles_labels()
    if ref is not None:
        handles += [
            Line2D([], [], color="k", lw=1.6, ls="-", label=series_labels[0]),
            Line2D([], [], color="k", lw=1.4, ls="--", label=series_labels[1]),
        ]
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("normalised TMP u")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


@_one_figure_at_a_time
def plot_training_curves(
    curves: Mapping[str, Sequence[float]],
    path: PathLikeStr,
    ylabel: str = "MSE",
    logy: bool = True,
    *,
    title: str = "Training curves",
) -> Path:
    """One line per named curve (e.g. ``{"train": [...], "val": [...]}``) versus epoch.

    Epochs are numbered from 1.  With ``logy`` the y axis is logarithmic, unless some finite
    value is ``<= 0`` (not representable on a log axis), in which case it falls back to a
    linear axis.

    Returns:
        The path of the written PNG.
    """
    if not curves:
        raise ValueError("plot_training_curves: no curves given")
    data = {name: _to_numpy(values).ravel() for name, values in curves.items()}

    fig = _new_figure((6.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for name, y in data.items():
        ax.plot(np.arange(1, len(y) + 1), y, lw=1.5, label=name, marker="." if len(y) < 30 else "")
    finite = np.concatenate([y[np.isfinite(y)] for y in data.values()])
    if logy and finite.size and np.all(finite > 0):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
