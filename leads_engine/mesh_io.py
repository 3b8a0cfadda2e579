"""Reading and writing mesh files: meshio formats (vtk, vtu, obj, ply, msh, ...) and ``.npz``.

A fibre field travels with the mesh: point data for per-node fibres, cell data for per-cell
ones, and ``fibers``/``fibers_per`` arrays in ``.npz``; it is read only when asked for
(``load_mesh(path, fibers="auto")`` or an array name).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import meshio
import numpy as np

from .mesh import Mesh, MeshError

__all__ = ["load_mesh", "save_mesh"]

#: file formats that can store triangles but not tetrahedra.
_SURFACE_ONLY_SUFFIXES = frozenset({".obj", ".ply", ".stl", ".off"})


def save_mesh(mesh: Mesh, path: str | Path) -> None:
    """Write the mesh with meshio, format from the suffix (``.vtk``, ``.vtu``, ``.obj``,
    ``.ply``, ``.msh``, ...); ``.npz`` writes the bundled format (keys points, cells)."""
    path = Path(path)
    suffix = path.suffix.lower()
    fibers = {} if mesh.fibers is None else {"fibers": np.asarray(mesh.fibers)}
    if suffix == ".npz":
        per = {} if mesh.fibers is None else {"fibers_per": np.array(mesh.fibers_per)}
        np.savez_compressed(path, points=mesh.points, cells=mesh.cells, **fibers, **per)
        return
    if mesh.cell_type == "tetra" and suffix in _SURFACE_ONLY_SUFFIXES:
        raise MeshError(f"{suffix} files hold surfaces only; cannot save tetrahedra to {path}")
    # PLY stores 32-bit indices (meshio would warn and cast)
    cells = mesh.cells.astype(np.int32) if suffix == ".ply" else np.asarray(mesh.cells)
    data = {"point_data": fibers} if mesh.fibers_per == "node" else {}
    if mesh.fibers_per == "cell":
        data = {"cell_data": {"fibers": [fibers["fibers"]]}}
    meshio.Mesh(np.asarray(mesh.points), [(mesh.cell_type, cells)], **data).write(path)


def load_mesh(path: str | Path, name: str | None = None, fibers: str | None = None) -> Mesh:
    """Read a mesh file with meshio (vtk, vtu, obj, ply, msh, ...) or a ``.npz`` (points, cells).

    Tetrahedra are used when present, otherwise triangles (other cell blocks such as lines,
    vertices or boundary triangles of a volume mesh are ignored). Raises :class:`MeshError` for
    a missing/unreadable file or a file with neither triangles nor tetrahedra. ``fibers``: the
    name of a point- or cell-data array holding a fibre field, ``"auto"`` for the usual names
    (:data:`leads_engine.fibers.FIBER_FIELD_NAMES`), ``None`` (default) to read none.
    """
    path = Path(path)
    mesh_name = name if name is not None else path.stem
    if not path.is_file():
        raise MeshError(f"cannot read mesh file {str(path)!r}: no such file")
    if path.suffix == ".npz":
        try:
            with np.load(path) as data:
                if fibers is None:
                    return Mesh(data["points"], data["cells"], name=mesh_name)
                if "fibers" not in data:
                    raise MeshError(f"mesh file {str(path)!r} has no 'fibers' array")
                per = str(data["fibers_per"]) if "fibers_per" in data else None
                return Mesh(data["points"], data["cells"], mesh_name, data["fibers"], per)
        except (OSError, KeyError, ValueError) as exc:
            if isinstance(exc, MeshError):
                raise
            raise MeshError(f"cannot read mesh file {str(path)!r}: {exc}") from exc
    chatter = io.StringIO()
    try:
        # meshio prints its reasons and may even call sys.exit(1) on a file it cannot parse
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            raw = meshio.read(path)
    except (Exception, SystemExit) as exc:  # ReadError, KeyError, ValueError, SystemExit, ...
        printed = " ".join(chatter.getvalue().split())
        reason = printed or f"{type(exc).__name__}: {exc}"
        raise MeshError(f"cannot read mesh file {str(path)!r}: {reason}") from exc
    for cell_type in ("tetra", "triangle"):
        blocks = [block.data for block in raw.cells if block.type == cell_type]
        if blocks and fibers is None:
            return Mesh(raw.points, np.concatenate(blocks), name=mesh_name)
        if blocks:
            from .fibers import read_fiber_field

            field, per = read_fiber_field(raw, cell_type, fibers)
            return Mesh(raw.points, np.concatenate(blocks), mesh_name, field, per)
    found = sorted({block.type for block in raw.cells}) or ["none"]
    raise MeshError(
        f"mesh file {str(path)!r} has cell types {found}; supported are 'tetra' "
        "(4-node tetrahedra) and 'triangle' (3-node triangles)"
    )
