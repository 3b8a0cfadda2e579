r"""Fibre fields of cardiac tissue: validation, per-cell directions and a rule-based field.

Myocardium conducts faster along its fibres than across them. With ``f`` the unit fibre
direction the conductivity tensor of the monodomain equation is

.. math::
    D = \sigma_t I + (\sigma_l - \sigma_t)\, f f^\top

(``sigma_l`` along the fibres, ``sigma_t`` across them). On a triangulated surface ``f`` is
tangent to the surface and "across" is the in-surface direction normal to ``f``: ``I`` acts on
the cell's tangent plane, where the P1 gradients live. The stiffness

.. math::
    K_{ab} = \sum_e |e|\, g_a^\top D_e g_b
           = \sum_e |e| \big[\sigma_{l,e} (g_a\!\cdot\! f_e)(g_b\!\cdot\! f_e)
             + \sigma_{t,e} \big(g_a\!\cdot\! g_b - (g_a\!\cdot\! f_e)(g_b\!\cdot\! f_e)\big)\big]

(``g_a`` the gradient of hat function ``a`` on cell ``e``) is linear in both conductivities:
:func:`stiffness_parts` returns the two bracketed local matrices. Unlike the isotropic
cotangent Laplacian, an anisotropic ``K`` can have positive off-diagonal entries (negative
edge conductances) even on a well-shaped mesh; since ``D <= sigma_l I`` the operator's spectral
radius is still at most that of the isotropic operator with ``sigma_l``, so an explicit step
that is stable for ``sigma_l`` stays stable.

A fibre field is given per node or per cell (``[n_nodes, 3]`` or ``[n_cells, 3]``); the sign of
a fibre is meaningless (``f f^T``). :func:`validate_fibers` refuses NaN/Inf, zero vectors, wrong
shapes and, on a surface, fibres that leave the tangent plane by more than
:data:`TANGENT_TOLERANCE`, with a :class:`~leads_engine.mesh.MeshError` naming the first
offending entries. :func:`cell_fibers` turns either kind into one unit fibre per cell.
:func:`rule_based_fibers` builds a helical field about the long axis (the bundled ventricle's
is ``z``), and :func:`read_fiber_field` takes one from a mesh file's point or cell data.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from .mesh import Mesh, MeshError, _basis_gradients, _first

__all__ = [
    "DEFAULT_HELIX_ANGLE_DEG",
    "FIBER_FIELD_NAMES",
    "TANGENT_TOLERANCE",
    "cell_fibers",
    "node_normals",
    "read_fiber_field",
    "rule_based_fibers",
    "stiffness_parts",
    "validate_fibers",
]

#: names a mesh file's point/cell data array may carry a fibre field under (``auto`` lookup).
FIBER_FIELD_NAMES = ("fibers", "fibres", "fiber", "fibre", "f0", "fiber_direction")

#: on a surface, the largest ``|cos|`` of the angle between a fibre and the surface normal
#: (0.1: at most about 5.7 degrees out of the tangent plane); within it fibres are projected.
TANGENT_TOLERANCE = 0.1

#: a fibre shorter than this (before normalisation) is a zero vector.
ZERO_LENGTH = 1e-8

#: helix angle of the rule-based field: the endocardial value of the rule-based methods
#: (Bayer et al. 2012: +60 degrees at the endocardium, -60 at the epicardium).
DEFAULT_HELIX_ANGLE_DEG = 60.0

FiberLocation = Literal["node", "cell"]


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def cell_normals(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Unit normal of each triangle, ``[n_cells, 3]`` (orientation from the node order)."""
    corners = points[cells]
    return _unit(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]))


def node_normals(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Area-weighted unit normal at each node of a triangle mesh, ``[n_nodes, 3]``.

    Neighbouring triangles are flipped to agree with the first one at the node, so an
    inconsistently wound file still gives a usable normal (its sign is arbitrary).
    """
    corners = points[cells]
    weighted = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.zeros_like(points)
    first = np.full(len(points), -1)
    for k in range(3):
        nodes = cells[:, k]
        unset = first[nodes] < 0
        first[nodes[unset]] = np.flatnonzero(unset)
    reference = weighted[first]
    for k in range(3):
        nodes = cells[:, k]
        sign = np.sign(np.einsum("cd,cd->c", weighted, reference[nodes]))
        np.add.at(normals, nodes, weighted * np.where(sign < 0, -1.0, 1.0)[:, None])
    return _unit(normals)


def validate_fibers(
    points: np.ndarray,
    cells: np.ndarray,
    fibers: Any,
    per: FiberLocation | None = None,
) -> tuple[np.ndarray, FiberLocation]:
    """Check a fibre field on a validated mesh; return unit fibres (float64) and their location.

    ``fibers`` is ``[n_nodes, 3]`` or ``[n_cells, 3]``; ``per`` says which when the counts are
    equal. Raises :class:`MeshError` for a non-numeric array, a wrong shape, NaN/Inf entries,
    zero vectors, or (triangles only) fibres not tangent to the surface: ``|f . n| / |f|`` above
    :data:`TANGENT_TOLERANCE` with ``n`` the node normal (per-node fibres) or the cell normal
    (per-cell fibres). Tangent fibres are returned projected onto the tangent plane exactly.
    """
    try:
        array = np.array(fibers, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MeshError(f"fibers are not a numeric array: {exc}") from exc
    n_nodes, n_cells = len(points), len(cells)
    if array.ndim != 2 or array.shape[1] != 3:
        raise MeshError(
            f"fibers must have shape [n_nodes={n_nodes}, 3] or [n_cells={n_cells}, 3], "
            f"got {array.shape}"
        )
    if per is None:
        matches = [p for p, n in (("node", n_nodes), ("cell", n_cells)) if len(array) == n]
        if len(matches) != 1:
            raise MeshError(
                f"fibers of length {len(array)} are "
                + ("ambiguous" if matches else "neither per node nor per cell")
                + f" for {n_nodes} nodes and {n_cells} cells"
                + ("; say per='node' or per='cell'" if matches else "")
            )
        per = matches[0]  # type: ignore[assignment]
    expected = {"node": n_nodes, "cell": n_cells}.get(str(per))
    if expected is None or len(array) != expected:
        raise MeshError(f"fibers per {per!r} need {expected} rows, got {len(array)}")
    what = f"fibre(s) at {per}s"
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        raise MeshError(f"{bad.size} {what} have NaN/Inf components, first {_first(bad)}")
    lengths = np.linalg.norm(array, axis=1)
    zero = np.flatnonzero(lengths < ZERO_LENGTH)
    if zero.size:
        raise MeshError(
            f"{zero.size} {what} are zero vectors (length < {ZERO_LENGTH:g}), first "
            f"{_first(zero)}; every {per} needs a direction"
        )
    unit = array / lengths[:, None]
    if cells.shape[1] == 3:
        normals = node_normals(points, cells) if per == "node" else cell_normals(points, cells)
        normal_part = np.einsum("nd,nd->n", unit, normals)
        off = np.flatnonzero(np.abs(normal_part) > TANGENT_TOLERANCE)
        if off.size:
            worst = float(np.degrees(np.arcsin(np.abs(normal_part[off]).max())))
            raise MeshError(
                f"{off.size} {what} are not tangent to the surface (more than "
                f"{np.degrees(np.arcsin(TANGENT_TOLERANCE)):.1f} degrees out of the tangent "
                f"plane, worst {worst:.1f}), first {_first(off)}; on a surface mesh fibres "
                "must lie in the surface"
            )
        unit = _unit(unit - normal_part[:, None] * normals)
    return unit, per  # type: ignore[return-value]


def cell_fibers(
    points: np.ndarray, cells: np.ndarray, fibers: np.ndarray, per: FiberLocation
) -> np.ndarray:
    """One unit fibre per cell, ``[n_cells, 3]``, from validated per-node or per-cell fibres.

    Node fibres are sign-aligned with the cell's first node's (a fibre is an axis: ``f`` and
    ``-f`` are the same) and averaged; on triangles the mean is projected onto the cell's plane.
    """
    if per == "cell":
        averaged = np.asarray(fibers, dtype=np.float64)
    else:
        corner = fibers[cells]  # [cells, k, 3]
        signs = np.sign(np.einsum("ckd,cd->ck", corner, corner[:, 0]))
        averaged = (corner * np.where(signs < 0, -1.0, 1.0)[:, :, None]).sum(axis=1)
    if cells.shape[1] == 3:
        normals = cell_normals(points, cells)
        averaged = averaged - np.einsum("cd,cd->c", averaged, normals)[:, None] * normals
    lengths = np.linalg.norm(averaged, axis=1)
    degenerate = np.flatnonzero(lengths < ZERO_LENGTH)
    if degenerate.size:
        raise MeshError(
            f"{degenerate.size} cell(s) get no fibre direction (their nodes' fibres cancel or "
            f"stand normal to the cell), first {_first(degenerate)}"
        )
    return averaged / lengths[:, None]


def stiffness_parts(
    points: np.ndarray, cells: np.ndarray, fibers_per_cell: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Local P1 stiffness per unit conductivity along and across the fibres, ``[n_cells, k, k]``.

    ``along[e, a, b] = (g_a . f_e)(g_b . f_e)`` and ``across = g_a . g_b - along`` (not yet
    multiplied by the cell measure): ``K^e = |e| (sigma_l along + sigma_t across)``.
    """
    gradients = _basis_gradients(points, cells)
    projection = np.einsum("ckd,cd->ck", gradients, fibers_per_cell)
    along = projection[:, :, None] * projection[:, None, :]
    full = gradients @ gradients.transpose(0, 2, 1)
    return along, 0.5 * (full + full.transpose(0, 2, 1)) - along


def rule_based_fibers(
    mesh: Mesh,
    helix_angle_deg: float = DEFAULT_HELIX_ANGLE_DEG,
    axis: tuple[float, float, float] = (0.0, 0.0, 1.0),
) -> np.ndarray:
    """A helical fibre field about the ventricle's long ``axis``, per node ``[n_nodes, 3]``.

    With ``c`` the circumferential direction (``axis x r``, ``r`` the node's offset from the
    axis through the centroid, projected onto the tangent plane on a surface) and ``l`` the
    longitudinal one (the axis projected onto the tangent plane and made normal to ``c``):

        f = cos(alpha) c + sin(alpha) l,      alpha = helix_angle_deg

    the rule-based construction of Streeter-like fibres on one wall layer (no transmural
    rotation: the bundled mesh is a single surface). A node on the axis (the apex) takes a
    neighbour's offset. On a tetrahedral mesh
    ``c`` and ``l = axis`` are used unprojected.
    """
    points, cells = mesh.points, mesh.cells
    direction = np.asarray(axis, dtype=np.float64)
    direction = direction / np.linalg.norm(direction)
    offset = points - points.mean(axis=0)
    radial = offset - np.outer(offset @ direction, direction)
    scale = np.linalg.norm(radial, axis=1).max()
    on_axis = np.linalg.norm(radial, axis=1) < 1e-6 * scale
    if on_axis.any():  # take a neighbour's offset: any direction about the axis will do
        neighbour = {int(c[0]): int(c[1]) for c in cells[:, :2]} | {
            int(c[1]): int(c[0]) for c in cells[:, :2]
        }
        for node in np.flatnonzero(on_axis):
            radial[node] = radial[neighbour.get(int(node), int(node))]
    circumferential = _unit(np.cross(direction, radial))
    longitudinal = np.broadcast_to(direction, points.shape).copy()
    if cells.shape[1] == 3:
        normals = node_normals(points, cells)
        circumferential = _unit(
            circumferential - np.einsum("nd,nd->n", circumferential, normals)[:, None] * normals
        )
        longitudinal = np.cross(normals, circumferential)
        longitudinal *= np.sign(longitudinal @ direction + 1e-300)[:, None]
    angle = np.radians(helix_angle_deg)
    return _unit(np.cos(angle) * circumferential + np.sin(angle) * longitudinal)


def read_fiber_field(
    raw: Any, cell_type: str, field: str = "auto"
) -> tuple[np.ndarray, FiberLocation]:
    """A fibre array from a :class:`meshio.Mesh`'s point data or its ``cell_type`` cell data.

    ``field="auto"`` takes the first of :data:`FIBER_FIELD_NAMES` present (point data first).
    Cell data of several blocks of ``cell_type`` are concatenated in block order (the order in
    which :func:`~leads_engine.mesh.load_mesh` concatenates the cells). Raises
    :class:`MeshError` naming the arrays the file has when the field is missing.
    """
    names = FIBER_FIELD_NAMES if field == "auto" else (field,)
    for name in names:
        if name in raw.point_data:
            return np.asarray(raw.point_data[name]), "node"
        if name in raw.cell_data:
            blocks = [
                np.asarray(data)
                for block, data in zip(raw.cells, raw.cell_data[name], strict=True)
                if block.type == cell_type
            ]
            if blocks:
                return np.concatenate(blocks), "cell"
    available = sorted(set(raw.point_data) | set(raw.cell_data)) or ["none"]
    wanted = f"any of {list(FIBER_FIELD_NAMES)}" if field == "auto" else repr(field)
    raise MeshError(
        f"the mesh file has no fibre field {wanted} in its point or cell data (it has {available})"
    )
