"""The bundled left-ventricle-like surface: the lower half of a prolate spheroid.

:func:`make_lv_mesh` builds it for any node count: near-uniform points on the spheroid (a
Fibonacci spiral with equal-area heights), their convex hull cut at the equator, Lawson edge
flips until no cotangent weight is negative, scaled to a 2 mm mean edge.
:func:`bundled_mesh` loads the 1119-node mesh shipped with the package.
"""

from __future__ import annotations

import math
from importlib import resources

import numpy as np
from scipy.spatial import ConvexHull

from .mesh import Mesh

__all__ = ["LV_ELONGATION", "LV_MEAN_EDGE_LENGTH_MM", "bundled_mesh", "make_lv_mesh"]

_BUNDLED_MESH_FILE = "data/heart_lv.npz"

#: ratio of long (z) to short axis of the prolate spheroid of the bundled ventricle.
LV_ELONGATION = 1.6
#: target mean edge length of the bundled mesh (mm).
LV_MEAN_EDGE_LENGTH_MM = 2.0


def _fibonacci_spheroid(n_points: int, elongation: float) -> np.ndarray:
    """Near-uniform points on the prolate spheroid ``x^2 + y^2 + (z / c)^2 = 1``, ``c > 1``.

    A Fibonacci (golden-angle) spiral whose heights are equal-area: with ``z = c t`` the
    area element is ``dA = 2 pi c sqrt(1 - e^2 t^2) dt`` (``e^2 = 1 - 1/c^2``), so the area
    below ``t`` is proportional to ``F(t) = t sqrt(1 - e^2 t^2) + arcsin(e t) / e``. Point ``i``
    sits at ``F(t_i) = F(1) (2 (i + 1/2) / n - 1)``, solved by Newton's method.
    """
    ecc = math.sqrt(1.0 - 1.0 / elongation**2)

    def area_below(t: np.ndarray) -> np.ndarray:
        return t * np.sqrt(1.0 - (ecc * t) ** 2) + np.arcsin(ecc * t) / ecc

    fraction = 2.0 * (np.arange(n_points) + 0.5) / n_points - 1.0
    target = fraction * area_below(np.array(1.0))
    t = fraction.copy()
    for _ in range(50):  # F' = 2 sqrt(1 - e^2 t^2) >= 2 / c: Newton converges quickly
        t = np.clip(t - (area_below(t) - target) / (2.0 * np.sqrt(1.0 - (ecc * t) ** 2)), -1, 1)
    azimuth = np.pi * (3.0 - math.sqrt(5.0)) * np.arange(n_points)
    radius = np.sqrt(1.0 - t**2)
    return np.column_stack([radius * np.cos(azimuth), radius * np.sin(azimuth), elongation * t])


def _lawson_flips(points: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, int]:
    """Flip interior edges until no pair of opposite angles sums to more than ``pi``.

    ``alpha + beta > pi`` is exactly a negative cotangent weight. Each pass flips a
    non-overlapping set of offending edges, worst first; orientation is preserved: triangles
    ``(a, b, c)`` and ``(b, a, d)`` sharing edge ``ab`` become ``(a, d, c)`` and ``(d, b, c)``.
    Returns the new triangles and the number of flips.
    """
    triangles = triangles.copy()
    n_flips = 0
    local = np.arange(3)
    for _ in range(100):
        corners = points[triangles]
        # angle at local corner k, opposite the half-edge (k+1 -> k+2)
        to_next = corners[:, (local + 1) % 3] - corners
        to_prev = corners[:, (local + 2) % 3] - corners
        cosine = np.einsum("tkd,tkd->tk", to_next, to_prev) / (
            np.linalg.norm(to_next, axis=2) * np.linalg.norm(to_prev, axis=2)
        )
        angle = np.arccos(np.clip(cosine, -1.0, 1.0)).ravel()
        start = triangles[:, (local + 1) % 3].ravel()
        end = triangles[:, (local + 2) % 3].ravel()
        low, high = np.minimum(start, end), np.maximum(start, end)
        owner = np.repeat(np.arange(len(triangles)), 3)
        order = np.lexsort((owner, high, low))
        shared = np.flatnonzero(
            (low[order][:-1] == low[order][1:]) & (high[order][:-1] == high[order][1:])
        )
        half_1, half_2 = order[shared], order[shared + 1]
        angle_sum = angle[half_1] + angle[half_2]
        offending = np.flatnonzero(angle_sum > np.pi + 1e-12)
        if offending.size == 0:
            return triangles, n_flips
        offending = offending[np.argsort(-angle_sum[offending], kind="stable")]
        existing = set(zip(low.tolist(), high.tolist(), strict=True))
        touched: set[int] = set()
        for edge in offending:
            h1, h2 = int(half_1[edge]), int(half_2[edge])
            t1, t2 = h1 // 3, h2 // 3
            if t1 in touched or t2 in touched:
                continue
            c, a, b = (int(triangles[t1, (h1 % 3 + j) % 3]) for j in range(3))
            d = int(triangles[t2, h2 % 3])
            new_edge = (min(c, d), max(c, d))
            if new_edge in existing:  # flipping would create a duplicate edge
                continue
            existing.add(new_edge)
            triangles[t1] = (a, d, c)
            triangles[t2] = (d, b, c)
            touched.update((t1, t2))
            n_flips += 1
    raise RuntimeError("Lawson edge flipping did not converge in 100 passes")


def make_lv_mesh(n_nodes: int = 1119) -> Mesh:
    """Deterministic left-ventricle-like surface: the lower half of a prolate spheroid.

    Recipe: ``2 n_nodes`` equal-area Fibonacci points on ``x^2 + y^2 + (z/1.6)^2 = 1``; the
    convex hull triangulates them; the lowest ``n_nodes`` points (``z < 0``: apex at the
    bottom, open base near ``z = 0``) and the hull triangles among them are kept; triangles are
    oriented with outward normals; Lawson flips remove every negative cotangent weight; the
    result is scaled so that the mean edge length is 2.0 mm (short semi-axis ~20 mm). Nodes are
    numbered from the apex upwards.
    """
    if n_nodes < 10:
        raise ValueError(f"n_nodes must be at least 10, got {n_nodes}")
    spheroid = _fibonacci_spheroid(2 * n_nodes, LV_ELONGATION)
    kept = np.argsort(spheroid[:, 2], kind="stable")[:n_nodes]
    new_index = np.full(len(spheroid), -1, dtype=np.int64)
    new_index[kept] = np.arange(n_nodes)
    hull = ConvexHull(spheroid).simplices
    triangles = new_index[hull[(new_index[hull] >= 0).all(axis=1)]]
    points = spheroid[kept]

    corners = points[triangles]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    inward = np.einsum("td,td->t", normals, corners.mean(axis=1)) < 0
    triangles[inward] = triangles[inward][:, ::-1]

    triangles, _ = _lawson_flips(points, triangles)
    triangles = triangles[np.lexsort(np.sort(triangles, axis=1).T[::-1])]
    mesh = Mesh(points, triangles, name="heart_lv")
    scale = LV_MEAN_EDGE_LENGTH_MM / mesh.mean_edge_length
    return Mesh(points * scale, triangles, name="heart_lv")


def bundled_mesh() -> Mesh:
    """The bundled left-ventricle-like surface ``heart_lv`` (1119 nodes, triangles, mm).

    Stored in ``leads_engine/data/heart_lv.npz``; identical to ``make_lv_mesh()``.
    """
    resource = resources.files("leads_engine").joinpath(_BUNDLED_MESH_FILE)
    with resources.as_file(resource) as path, np.load(path) as data:
        return Mesh(data["points"], data["cells"], name="heart_lv")
