"""The LEADS data set: a mesh, stimuli and TMP trajectories in one ``.npz`` file.

A data set is a single file that numpy alone can read (``np.load(path)``), so other tools can
inspect it without LEADS installed. Keys:

==================  =========================  ==================================================
key                 shape / type               meaning
==================  =========================  ==================================================
``points``          ``[nodes, 3]`` float64     node coordinates (mm)
``cells``           ``[cells, 3 or 4]`` int64  triangles or tetrahedra, 0-based
``u``               ``[samples, frames, nodes]`` float32, TMP normalised to 0..1
``t``               ``[frames]`` float64       frame times (ms), strictly increasing
``pacing_site``     ``[samples]`` int64        node index of each sample's stimulus
``split``           ``[samples]`` str          ``train`` / ``val`` / ``test``
``conductivity``    ``[nodes]`` float64        diffusivity sigma (mm^2/ms) used to make the data
``meta``            str (JSON)                 generator version, reaction, parameters, seed, units
==================  =========================  ==================================================

Recordings (see the recordings issue) add ``H [electrodes, nodes]`` and
``signals [samples, frames, electrodes]``; they are carried through untouched.
:func:`load_dataset` validates every field and refuses a corrupted or inconsistent file with
a :class:`DatasetError` that names the field.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .mesh import Mesh, MeshError

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
REQUIRED_KEYS = ("points", "cells", "u", "t", "pacing_site", "split", "conductivity", "meta")
OPTIONAL_KEYS = ("H", "signals", "measured_activation_times")
#: TMP is normalised to 0..1; models with an undershoot may dip a little below rest.
TMP_RANGE = (-0.5, 1.5)


class DatasetError(ValueError):
    """A data set file or array is missing, corrupted or inconsistent."""


def leads_home() -> Path:
    """Root folder for data sets and archives: ``$LEADS_HOME``, default ``~/.leads``."""
    return Path(os.environ.get("LEADS_HOME", Path.home() / ".leads")).expanduser()


def datasets_dir() -> Path:
    return leads_home() / "datasets"


@dataclass
class EPDataset:
    """An electrophysiology data set held in memory (see the module docstring for the fields)."""

    points: np.ndarray
    cells: np.ndarray
    u: np.ndarray
    t: np.ndarray
    pacing_site: np.ndarray
    split: np.ndarray
    conductivity: np.ndarray
    meta: dict[str, Any]
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def name(self) -> str:
        return str(self.meta.get("name", "dataset"))

    @property
    def n_samples(self) -> int:
        return int(self.u.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.u.shape[1])

    @property
    def n_nodes(self) -> int:
        return int(self.u.shape[2])

    def mesh(self) -> Mesh:
        return Mesh(self.points, self.cells, name=str(self.meta.get("mesh", "mesh")))

    def indices(self, split: str) -> np.ndarray:
        """Sample indices of one split (``train``, ``val`` or ``test``)."""
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; choose one of {SPLITS}")
        return np.flatnonzero(self.split == split)

    def summary(self) -> dict[str, Any]:
        counts = {s: int((self.split == s).sum()) for s in SPLITS}
        return {
            "name": self.name,
            "reaction": self.meta.get("reaction"),
            "samples": self.n_samples,
            "split": counts,
            "frames": self.n_frames,
            "t_end_ms": float(self.t[-1]),
            "frame_interval_ms": float(np.diff(self.t).mean()) if self.n_frames > 1 else 0.0,
            "nodes": self.n_nodes,
            "cells": int(self.cells.shape[0]),
            "conductivity_range": [float(self.conductivity.min()), float(self.conductivity.max())],
            "noise_std": self.meta.get("noise_std", 0.0),
            "seed": self.meta.get("seed"),
        }

    def save(self, path: str | Path) -> Path:
        """Write the data set as a compressed ``.npz`` (atomically: a crash leaves no stub)."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "points": self.points,
            "cells": self.cells,
            "u": self.u,
            "t": self.t,
            "pacing_site": self.pacing_site,
            "split": self.split.astype("U5"),
            "conductivity": self.conductivity,
            "meta": np.array(json.dumps({**self.meta, "format_version": FORMAT_VERSION})),
            **self.extras,
        }
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        os.replace(partial, path)
        return path


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise DatasetError(message)


def validate(ds: EPDataset) -> None:
    """Check shapes, types and values of every field; normalises dtypes in place."""
    try:
        mesh = Mesh(ds.points, ds.cells)
    except MeshError as exc:
        raise DatasetError(f"points/cells: {exc}") from exc
    ds.points, ds.cells = mesh.points, mesh.cells
    nodes = mesh.n_nodes

    ds.u = np.asarray(ds.u)
    _require(ds.u.ndim == 3, f"u: expected [samples, frames, nodes], got shape {ds.u.shape}")
    samples, frames, u_nodes = ds.u.shape
    _require(u_nodes == nodes, f"u: has {u_nodes} nodes but the mesh has {nodes}")
    _require(samples > 0 and frames > 1, f"u: needs samples >= 1 and frames >= 2, got {ds.u.shape}")
    ds.u = ds.u.astype(np.float32, copy=False)
    bad = ~np.isfinite(ds.u)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DatasetError(
            f"u: {int(bad.sum())} NaN/Inf values (first at [sample, frame, node] {first})"
        )
    low, high = TMP_RANGE
    _require(
        float(ds.u.min()) >= low and float(ds.u.max()) <= high,
        f"u: values in [{ds.u.min():.3g}, {ds.u.max():.3g}] lie outside the normalised TMP "
        f"range [{low}, {high}]; normalise the TMP to 0..1",
    )

    ds.t = np.asarray(ds.t, dtype=np.float64)
    _require(ds.t.shape == (frames,), f"t: expected [{frames}] frame times, got {ds.t.shape}")
    _require(bool(np.isfinite(ds.t).all()), "t: contains NaN/Inf")
    _require(bool((np.diff(ds.t) > 0).all()), "t: frame times must be strictly increasing")

    ds.pacing_site = np.asarray(ds.pacing_site)
    _require(
        ds.pacing_site.shape == (samples,),
        f"pacing_site: expected [{samples}], got {ds.pacing_site.shape}",
    )
    _require(
        np.issubdtype(ds.pacing_site.dtype, np.integer),
        f"pacing_site: must be integer node indices, got {ds.pacing_site.dtype}",
    )
    outside = (ds.pacing_site < 0) | (ds.pacing_site >= nodes)
    _require(not outside.any(), f"pacing_site: {ds.pacing_site[outside][:5]} not in [0, {nodes})")
    ds.pacing_site = ds.pacing_site.astype(np.int64)

    ds.split = np.asarray(ds.split).astype(str)
    _require(ds.split.shape == (samples,), f"split: expected [{samples}], got {ds.split.shape}")
    unknown = sorted(set(ds.split.tolist()) - set(SPLITS))
    _require(not unknown, f"split: unknown labels {unknown}; allowed {SPLITS}")
    _require((ds.split == "train").any(), "split: no training sample")

    ds.conductivity = np.asarray(ds.conductivity, dtype=np.float64)
    _require(
        ds.conductivity.shape == (nodes,),
        f"conductivity: expected [{nodes}], got {ds.conductivity.shape}",
    )
    _require(
        bool(np.isfinite(ds.conductivity).all() and (ds.conductivity > 0).all()),
        "conductivity: must be finite and positive at every node",
    )
    _require(isinstance(ds.meta, dict), "meta: must be a JSON object")

    if "H" in ds.extras:
        H = np.asarray(ds.extras["H"])
        _require(H.ndim == 2 and H.shape[1] == nodes, f"H: expected [electrodes, {nodes}]")
    if "signals" in ds.extras:
        signals = np.asarray(ds.extras["signals"])
        _require(
            signals.ndim == 3 and signals.shape[:2] == (samples, frames),
            f"signals: expected [{samples}, {frames}, electrodes], got {signals.shape}",
        )


def resolve_dataset_path(name_or_path: str | Path) -> Path:
    """A path as given if it exists, else ``$LEADS_HOME/datasets/<name>.npz``."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    candidate = datasets_dir() / f"{name_or_path}.npz"
    if candidate.exists():
        return candidate
    known = ", ".join(sorted(p.stem for p in datasets_dir().glob("*.npz"))) or "none"
    raise DatasetError(
        f"no data set {str(name_or_path)!r}: not a file and not in {datasets_dir()} "
        f"(known: {known}); make one with `leads-data generate`"
    )


def load_dataset(name_or_path: str | Path) -> EPDataset:
    """Load and validate a data set by file path or by name under ``$LEADS_HOME/datasets``."""
    path = resolve_dataset_path(name_or_path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable .npz data set ({exc})") from exc
    missing = [key for key in REQUIRED_KEYS if key not in contents]
    if missing:
        raise DatasetError(f"{path}: missing field(s) {missing}; required {list(REQUIRED_KEYS)}")
    try:
        meta = json.loads(str(contents["meta"]))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: meta is not valid JSON ({exc})") from exc
    extras = {key: contents[key] for key in OPTIONAL_KEYS if key in contents}
    try:
        return EPDataset(
            points=contents["points"],
            cells=contents["cells"],
            u=contents["u"],
            t=contents["t"],
            pacing_site=contents["pacing_site"],
            split=contents["split"],
            conductivity=contents["conductivity"],
            meta=meta,
            extras=extras,
        )
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from exc
