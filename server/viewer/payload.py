"""The viewer's payload: a compact, JSON-safe description of what the 3-D viewer draws.

Arrays travel as base64-encoded little-endian typed arrays (``{"dtype", "shape", "b64"}``),
which the browser decodes without copying into ``Float32Array`` / ``Uint32Array`` /
``Uint16Array`` / ``Uint8Array`` views. Scalar fields are quantised:

- activation times (ms) to ``uint16`` over the colour range ``[lo, hi]``:
  ``q = round((at - lo) / s)`` with ``s = (hi - lo) / 65534``, decoded as ``lo + q s``
  (error at most ``s / 2``); ``q = 65535`` marks a node that never activates (NaN);
- the transmembrane potential ``u`` (0..1) to ``uint8``: ``q = round(255 clip(u, 0, 1))``,
  decoded as ``q / 255`` (error at most ``1 / 510`` inside 0..1), frames subsampled so that
  ``frames x nodes`` stays under a budget (large meshes load fast).

A payload holds one or more *scenes* (a mesh, its pacing site and panels drawn side by side,
each panel one scalar field with its colour map and range; candidate panels also carry the
potential over the beat), an optional *session* section (the leaderboard of candidates and the
search trajectory) and free-form *info* lines. :func:`decode_array` inverts the encoding (the
tests use it; the page does the same in JavaScript).

Only numpy here: the server, the bench and the tests build payloads with the same functions.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "AT_NAN",
    "PAYLOAD_VERSION",
    "at_range",
    "candidate_scene",
    "comparison_scenes",
    "decode_array",
    "decode_at",
    "decode_potential",
    "encode_array",
    "encode_at",
    "encode_potential",
    "leaderboard",
    "surface_triangles",
    "viewer_payload",
]

PAYLOAD_VERSION = 1
#: the uint16 code of a node that never activates
AT_NAN = 65535
#: the largest uint16 code of a finite activation time
AT_STEPS = 65534
#: at most this many potential values (frames x nodes) per panel
MAX_POTENTIAL_VALUES = 4_000_000

_DTYPES = {"float32": "<f4", "uint32": "<u4", "uint16": "<u2", "uint8": "u1"}


def encode_array(values: Any, dtype: str) -> dict[str, Any]:
    """``values`` as a base64 little-endian typed array of ``dtype`` (see module docstring)."""
    array = np.ascontiguousarray(np.asarray(values), dtype=_DTYPES[dtype])
    return {
        "dtype": dtype,
        "shape": list(array.shape),
        "b64": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def decode_array(encoded: Mapping[str, Any]) -> np.ndarray:
    """The array an :func:`encode_array` dict (or a quantised field) holds, in its stored dtype."""
    raw = base64.b64decode(encoded["b64"])
    array = np.frombuffer(raw, dtype=_DTYPES[encoded["dtype"]])
    return array.reshape(encoded["shape"])


def at_range(*maps: Any) -> tuple[float, float]:
    """The colour range (ms) covering the finite values of every map; (0, 1) when none."""
    finite = [np.asarray(m, dtype=float)[np.isfinite(m)] for m in maps if m is not None]
    finite = [f for f in finite if f.size]
    if not finite:
        return 0.0, 1.0
    lo = float(min(f.min() for f in finite))
    hi = float(max(f.max() for f in finite))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def encode_at(values: Any, lo: float, hi: float) -> dict[str, Any]:
    """Times (ms) quantised to uint16 over ``[lo, hi]`` (clipped); NaN as :data:`AT_NAN`."""
    at = np.asarray(values, dtype=float)
    step = (hi - lo) / AT_STEPS if hi > lo else 1.0
    codes = np.full(at.shape, AT_NAN, dtype=np.uint16)
    finite = np.isfinite(at)
    codes[finite] = np.clip(np.rint((at[finite] - lo) / step), 0, AT_STEPS).astype(np.uint16)
    return {**encode_array(codes, "uint16"), "offset": lo, "scale": step, "nan": AT_NAN}


def decode_at(encoded: Mapping[str, Any]) -> np.ndarray:
    """Times (ms, float64) from :func:`encode_at`; NaN where the node never activates."""
    codes = decode_array(encoded).astype(np.int64)
    values = encoded["offset"] + codes * encoded["scale"]
    return np.where(codes == encoded["nan"], np.nan, values)


def frame_stride(n_frames: int, n_nodes: int, budget: int = MAX_POTENTIAL_VALUES) -> int:
    """Keep every ``stride``-th frame so that ``frames x nodes`` fits in ``budget``."""
    return max(1, math.ceil(n_frames * n_nodes / max(1, budget)))


def encode_potential(u: Any, stride: int = 1) -> dict[str, Any]:
    """A potential ``[frames, nodes]`` (0..1) as uint8, every ``stride``-th frame."""
    values = np.nan_to_num(np.asarray(u, dtype=np.float32)[::stride], nan=0.0)
    codes = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    return {**encode_array(codes, "uint8"), "offset": 0.0, "scale": 1.0 / 255.0}


def decode_potential(encoded: Mapping[str, Any]) -> np.ndarray:
    """The potential ``[frames, nodes]`` (float64) from :func:`encode_potential`."""
    return encoded["offset"] + decode_array(encoded).astype(np.float64) * encoded["scale"]


def surface_triangles(points: Any, cells: Any) -> np.ndarray:
    """The triangles to draw: the cells of a surface mesh, or the boundary faces of a
    tetrahedral mesh (faces that belong to one tetrahedron only), oriented outwards."""
    cells = np.asarray(cells, dtype=np.int64)
    if cells.shape[1] == 3:
        return cells
    points = np.asarray(points, dtype=float)
    local = np.array([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]])
    faces = cells[:, local].reshape(-1, 3)
    opposite = cells[:, [0, 1, 2, 3]].reshape(-1)
    _, first, counts = np.unique(
        np.sort(faces, axis=1), axis=0, return_index=True, return_counts=True
    )
    keep = first[counts == 1]
    faces, opposite = faces[keep], opposite[keep]
    a, b, c = (points[faces[:, i]] for i in range(3))
    outward = np.einsum("ij,ij->i", np.cross(b - a, c - a), a - points[opposite]) >= 0
    faces[~outward] = faces[~outward][:, [0, 2, 1]]
    return faces


def _mesh(points: Any, cells: Any) -> dict[str, Any]:
    points = np.asarray(points, dtype=np.float32)
    if points.shape[1] == 2:
        points = np.column_stack([points, np.zeros(len(points), np.float32)])
    faces = surface_triangles(points, cells)
    return {
        "n_nodes": int(len(points)),
        "n_faces": int(len(faces)),
        "positions": encode_array(points, "float32"),
        "faces": encode_array(faces, "uint32"),
    }


def _check_shape(name: str, values: Any, shape: tuple[int, ...]) -> None:
    if values is not None and np.shape(values) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {np.shape(values)}")


def _at_panel(title: str, role: str, at: Any, lo: float, hi: float) -> dict[str, Any]:
    """A panel coloured over ``[lo, hi]`` ms; its values keep their own range (a map that
    overshoots the colour range saturates in colour, not in value)."""
    own_lo, own_hi = at_range(at)
    return {"title": title, "role": role, "cmap": "at", "range": [lo, hi],
            "values": encode_at(at, own_lo, own_hi)}  # fmt: skip


def candidate_scene(
    name: str,
    points: Any,
    cells: Any,
    t: Any,
    at_true: Any,
    at_pred: Any | None = None,
    u_true: Any | None = None,
    u_pred: Any | None = None,
    pacing_site: int | None = None,
    max_potential_values: int = MAX_POTENTIAL_VALUES,
) -> dict[str, Any]:
    """One beat of a candidate: panels true AT, predicted AT and absolute error (ms) in one
    colour range, with the true and predicted potential ``[frames, nodes]`` when given.

    Without a prediction (a candidate with no weights) the scene holds the data alone."""
    t = np.asarray(t, dtype=float)
    at_true = np.asarray(at_true, dtype=float)
    nodes = len(np.asarray(points))
    _check_shape("at_true", at_true, (nodes,))
    _check_shape("at_pred", at_pred, (nodes,))
    _check_shape("u_true", u_true, (len(t), nodes))
    _check_shape("u_pred", u_pred, (len(t), nodes))
    lo, hi = at_range(at_true, at_pred)
    stride = frame_stride(len(t), len(at_true), max_potential_values)
    panels = [_at_panel("true activation time", "true", at_true, lo, hi)]
    if u_true is not None:
        panels[0]["potential"] = encode_potential(u_true, stride)
    if at_pred is not None:
        at_pred = np.asarray(at_pred, dtype=float)
        panels.append(_at_panel("predicted activation time", "pred", at_pred, lo, hi))
        if u_pred is not None:
            panels[1]["potential"] = encode_potential(u_pred, stride)
        error = np.abs(at_pred - at_true)
        top = float(np.nanmax(error)) if np.isfinite(error).any() else 0.0
        top = top if top > 0 else 1.0
        panels.append(
            {
                "title": "absolute error",
                "role": "error",
                "cmap": "error",
                "range": [0.0, top],
                "values": encode_at(error, 0.0, top),
            }
        )
    return {
        "name": name,
        "mesh": _mesh(points, cells),
        "pacing_site": None if pacing_site is None else int(pacing_site),
        "t": [float(v) for v in t[::stride]],
        "units": "ms",
        "color_range": [lo, hi],
        "panels": panels,
    }


def comparison_scenes(
    name: str,
    points: Any,
    cells: Any,
    at_true: Any,
    predictions: Mapping[str, Any],
    pacing_site: int | None = None,
) -> list[dict[str, Any]]:
    """Activation maps of several methods against the truth, for one data set: a scene of the
    maps (truth first, coloured over the truth's range so that one method's outliers cannot
    wash the others out) and a scene of each method's absolute error."""
    at_true = np.asarray(at_true, dtype=float)
    lo, hi = at_range(at_true)
    mesh = _mesh(points, cells)
    site = None if pacing_site is None else int(pacing_site)
    maps = [_at_panel("truth", "true", at_true, lo, hi)]
    maps += [_at_panel(m, "pred", at, lo, hi) for m, at in predictions.items()]
    errors = {m: np.abs(np.asarray(at, dtype=float) - at_true) for m, at in predictions.items()}
    finite = [e[np.isfinite(e)] for e in errors.values()]
    top = max([float(f.max()) for f in finite if f.size] + [0.0]) or 1.0
    error_panels = [
        {
            "title": f"{m}: |error|",
            "role": "error",
            "cmap": "error",
            "range": [0.0, top],
            "values": encode_at(e, 0.0, top),
        }  # fmt: skip
        for m, e in errors.items()
    ]
    base = {"mesh": mesh, "pacing_site": site, "t": None, "units": "ms", "color_range": [lo, hi]}
    return [
        {**base, "name": f"{name}: activation time", "panels": maps},
        {**base, "name": f"{name}: absolute error", "panels": error_panels},
    ]


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def leaderboard(candidates: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The session section: candidates ranked by validation loss (those without one last)
    and the search trajectory (each candidate's loss in creation order, with the best so far).

    Each candidate mapping has ``candidate_id, operation, reaction, diffusion, status,
    val_loss`` and optionally ``hyperparameters``, ``parameter_count``, ``edited``."""
    rows = []
    trajectory = []
    best = math.inf
    for index, c in enumerate(candidates, start=1):
        loss = _finite(c.get("val_loss"))
        if loss is not None and c.get("status") == "ok":
            best = min(best, loss)
        row = {
            "index": index,
            "candidate_id": c.get("candidate_id"),
            "operation": c.get("operation"),
            "reaction": c.get("reaction"),
            "diffusion": c.get("diffusion"),
            "hyperparameters": dict(c.get("hyperparameters") or {}),
            "edited": bool(c.get("edited", False)),
            "parameter_count": c.get("parameter_count"),
            "val_loss": loss,
            "status": c.get("status"),
        }
        rows.append(row)
        trajectory.append(
            {
                "index": index,
                "candidate_id": row["candidate_id"],
                "val_loss": loss,
                "best": None if math.isinf(best) else best,
                "status": row["status"],
            }  # fmt: skip
        )
    ranked = sorted(rows, key=lambda r: (r["val_loss"] is None, r["val_loss"] or 0.0, r["index"]))
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    return {"leaderboard": ranked, "trajectory": trajectory}


def viewer_payload(
    kind: str,
    title: str,
    scenes: Sequence[Mapping[str, Any]],
    session: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole payload: ``kind`` is ``candidate``, ``session`` or ``comparison``."""
    return {
        "version": PAYLOAD_VERSION,
        "kind": kind,
        "title": title,
        "scenes": list(scenes),
        "session": None if session is None else dict(session),
        "info": {str(k): v for k, v in (info or {}).items()},
    }
