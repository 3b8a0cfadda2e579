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

Recordings (measured or simulated electrograms, see :mod:`leads_engine.recordings`) add

=============================  ===================================  ===============================
key                            shape / type                         meaning
=============================  ===================================  ===============================
``H``                          ``[electrodes, nodes]``              observation matrix, ``y = H u``
``signals``                    ``[samples, frames, electrodes]``    recorded signals, finite
``measured_activation_times``  ``[samples, nodes or electrodes]``   measured ATs (ms), NaN = none
``electrode_positions``        ``[electrodes, 3]``                  electrode coordinates (mm)
=============================  ===================================  ===============================

and ``meta["observation"] = {"kind": "lead_field" | "contact_nodes" | "tmp",
"normalisation": "none" | "standardise"}`` (see :mod:`leads_engine.observation`). Per-electrode
activation times are compared at each electrode's nearest mesh node. A recording (a file with
``signals``) may leave out ``u``, the TMP nobody measured, and ``conductivity``, which nobody
knows: the trainer then starts each sample from its pacing site (``u = 1`` within
``meta["pacing"]["radius_mm"]``, default 6 mm, of graph distance, as the generator does).
:func:`load_dataset` validates every field and refuses a corrupted or inconsistent file with
a :class:`DatasetError` that names the field.

An anisotropic set adds ``fibers`` (``[nodes, 3]`` or ``[cells, 3]`` float64, unit fibre
directions, tangent to a surface mesh; see :mod:`leads_engine.fibers`) and ``meta["fibers"] =
{"source": "rule" | "mesh", "per": "node" | "cell", "anisotropy": R}``: ``conductivity`` is
then the conductivity along the fibres and ``conductivity / R`` the one across them (``R`` is
a ratio of conductivities; conduction speeds differ by ``sqrt(R)``).
"""

from __future__ import annotations

import json
import math
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
OPTIONAL_KEYS = ("H", "signals", "measured_activation_times", "electrode_positions", "fibers")
#: Keys a recording (a file with ``signals``) may leave out.
RECORDING_OPTIONAL_KEYS = ("u", "conductivity")
OBSERVATION_KINDS = ("tmp", "lead_field", "contact_nodes")
NORMALISATIONS = ("none", "standardise")
#: Radius (mm, graph distance) of the initial stimulus when the meta does not give one.
DEFAULT_PACING_RADIUS_MM = 6.0
#: TMP is normalised to 0..1; models with an undershoot may dip a little below rest.
TMP_RANGE = (-0.5, 1.5)


class DatasetError(ValueError):
    """A data set file or array is missing, corrupted or inconsistent."""


def leads_home() -> Path:
    """Root folder for data sets, archives, runs and reports: ``$LEADS_HOME``, default
    ``~/.leads``. An unset or blank variable means the default; ``~`` is expanded."""
    value = os.environ.get("LEADS_HOME", "").strip()
    return Path(value).expanduser() if value else Path.home() / ".leads"


def datasets_dir() -> Path:
    return leads_home() / "datasets"


@dataclass
class EPDataset:
    """An electrophysiology data set held in memory (see the module docstring for the fields)."""

    points: np.ndarray
    cells: np.ndarray
    u: np.ndarray | None
    t: np.ndarray
    pacing_site: np.ndarray
    split: np.ndarray
    conductivity: np.ndarray | None
    meta: dict[str, Any]
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    _initial_tmp: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def name(self) -> str:
        return str(self.meta.get("name", "dataset"))

    @property
    def n_samples(self) -> int:
        return int(self.pacing_site.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.t.shape[0])

    @property
    def n_nodes(self) -> int:
        return int(self.points.shape[0])

    @property
    def is_recording(self) -> bool:
        """Whether the data set carries recorded ``signals`` (electrograms or contact maps)."""
        return "signals" in self.extras

    @property
    def pacing_radius_mm(self) -> float:
        return float(self.meta.get("pacing", {}).get("radius_mm", DEFAULT_PACING_RADIUS_MM))

    def initial_tmp(self, indices: np.ndarray | None = None) -> np.ndarray:
        """TMP of the first frame ``[len(indices), nodes]`` (float32) that a rollout starts from.

        ``u[:, 0]`` when the data set has TMP; otherwise the generator's initial stimulus,
        ``u_n = 1`` where the graph distance from the sample's pacing site is at most
        :attr:`pacing_radius_mm`, else 0 (computed once and kept on the instance).
        """
        selected = slice(None) if indices is None else indices
        if self.u is not None:
            return self.u[selected, 0]
        if self._initial_tmp is None:
            from .simulator import Pacing

            pacing = Pacing(self.pacing_site.tolist(), radius=self.pacing_radius_mm)
            region = pacing.region(self.mesh().graph_distances(self.pacing_site))
            self._initial_tmp = region.T.astype(np.float32)
        return self._initial_tmp[selected]

    @property
    def fibers(self) -> np.ndarray | None:
        """The fibre field ``[nodes or cells, 3]`` of an anisotropic set, else ``None``."""
        return self.extras.get("fibers")

    @property
    def fibers_per(self) -> str | None:
        """Where the fibres sit: ``"node"``, ``"cell"`` (``None`` without fibres)."""
        if self.fibers is None:
            return None
        return _fibers_per(self.meta) or ("node" if len(self.fibers) == self.n_nodes else "cell")

    @property
    def anisotropy(self) -> float:
        """Ratio of the conductivities along/across the fibres (1.0 without fibres)."""
        return float(self.meta.get("fibers", {}).get("anisotropy", 1.0))

    def mesh(self) -> Mesh:
        """The data set's mesh, with its fibre field when it has one."""
        name = str(self.meta.get("mesh", "mesh"))
        if self.fibers is None:
            return Mesh(self.points, self.cells, name=name)
        return Mesh(self.points, self.cells, name, self.fibers, _fibers_per(self.meta))

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
            "conductivity_range": None
            if self.conductivity is None
            else [float(self.conductivity.min()), float(self.conductivity.max())],
            "noise_std": self.meta.get("noise_std", 0.0),
            "seed": self.meta.get("seed"),
            **(
                {}
                if self.fibers is None
                else {"fibers": f"per {self.fibers_per}", "anisotropy": self.anisotropy}
            ),
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
        arrays = {key: value for key, value in arrays.items() if value is not None}
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

    if ds.u is None:
        _require("signals" in ds.extras, "u: missing; only a recording (with signals) may omit it")
        signals = np.asarray(ds.extras["signals"])
        _require(
            signals.ndim == 3,
            f"signals: expected [samples, frames, electrodes], got shape {signals.shape}",
        )
        samples, frames = signals.shape[:2]
        _require(
            samples > 0 and frames > 1,
            f"signals: needs samples >= 1 and frames >= 2, got {signals.shape}",
        )
    else:
        _validate_tmp(ds, nodes)
        samples, frames = ds.u.shape[:2]
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

    if ds.conductivity is None:
        _require(
            "signals" in ds.extras,
            "conductivity: missing; only a recording (with signals) may omit it",
        )
    else:
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
    validate_recording_fields(ds.extras, ds.meta, samples, frames, nodes)
    if "fibers" in ds.extras:
        _validate_fibers(ds, mesh)


def _fibers_per(meta: dict[str, Any]) -> Any:
    """``meta["fibers"]["per"]`` ("node" or "cell") or ``None`` (decided by the row count)."""
    info = meta.get("fibers")
    return info.get("per") if isinstance(info, dict) else None


def _validate_fibers(ds: EPDataset, mesh: Mesh) -> None:
    """The fibre field (unit vectors, tangent on a surface) and ``meta["fibers"]``."""
    info = ds.meta.get("fibers", {})
    _require(isinstance(info, dict), "meta.fibers: must be a JSON object")
    per = info.get("per")
    _require(per in (None, "node", "cell"), f"meta.fibers.per: {per!r} is not 'node' or 'cell'")
    anisotropy = info.get("anisotropy", 1.0)
    _require(
        isinstance(anisotropy, int | float) and math.isfinite(anisotropy) and anisotropy > 0,
        f"meta.fibers.anisotropy: must be a positive number, got {anisotropy!r}",
    )
    try:
        checked = mesh.with_fibers(ds.extras["fibers"], per)
    except MeshError as exc:
        raise DatasetError(f"fibers: {exc}") from exc
    ds.extras["fibers"] = np.array(checked.fibers)


def _validate_tmp(ds: EPDataset, nodes: int) -> None:
    """Shape, finiteness and range of the TMP ``u``; casts it to float32."""
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


def nan_runs(values: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Runs of non-finite values along the frame axis of ``[samples, frames, electrodes]``.

    Returns ``(sample, electrode, first_frame, last_frame)`` per run, sample-major.
    """
    bad = ~np.isfinite(values)
    runs: list[tuple[int, int, int, int]] = []
    for sample, electrode in zip(*np.nonzero(bad.any(axis=1)), strict=True):
        frames = np.flatnonzero(bad[sample, :, electrode])
        breaks = np.flatnonzero(np.diff(frames) > 1)
        starts = np.concatenate([[frames[0]], frames[breaks + 1]])
        ends = np.concatenate([frames[breaks], [frames[-1]]])
        runs += [
            (int(sample), int(electrode), int(a), int(b)) for a, b in zip(starts, ends, strict=True)
        ]
    return runs


def describe_nan_runs(values: np.ndarray, field_name: str = "signals") -> str | None:
    """A message naming the first NaN/Inf runs (sample, electrode, frames), or ``None``."""
    runs = nan_runs(values)
    if not runs:
        return None
    shown = "; ".join(
        f"sample {s}, electrode {e}, frames {a}-{b}"
        if b > a
        else f"sample {s}, electrode {e}, frame {a}"
        for s, e, a, b in runs[:3]
    )
    more = f" and {len(runs) - 3} more run(s)" if len(runs) > 3 else ""
    return (
        f"{field_name}: NaN/Inf values ({shown}{more}); fill or drop those recordings, "
        "gaps are not interpolated"
    )


def validate_recording_fields(
    extras: dict[str, np.ndarray], meta: dict[str, Any], samples: int, frames: int, nodes: int
) -> None:
    """Check ``H``, ``signals``, ``measured_activation_times``, ``electrode_positions`` and
    ``meta["observation"]`` against each other and the mesh."""
    electrodes: int | None = None
    if "H" in extras:
        H = np.asarray(extras["H"])
        _require(
            H.ndim == 2 and H.shape[1] == nodes,
            f"H: expected [electrodes, {nodes}] (one column per mesh node), got {H.shape}",
        )
        _require(bool(np.isfinite(H).all()), "H: contains NaN/Inf")
        electrodes = H.shape[0]
    if "signals" in extras:
        signals = np.asarray(extras["signals"])
        _require(
            signals.ndim == 3 and signals.shape[:2] == (samples, frames),
            f"signals: expected [{samples}, {frames}, electrodes], got {signals.shape}",
        )
        message = describe_nan_runs(signals)
        _require(message is None, message or "")
        if electrodes is not None:
            _require(
                signals.shape[2] == electrodes,
                f"signals: has {signals.shape[2]} electrodes but H has {electrodes} rows",
            )
        electrodes = signals.shape[2]
    if "electrode_positions" in extras:
        positions = np.asarray(extras["electrode_positions"])
        expected = f"[{electrodes if electrodes is not None else 'electrodes'}, 3]"
        _require(
            positions.ndim == 2
            and positions.shape[1] == 3
            and (electrodes is None or positions.shape[0] == electrodes),
            f"electrode_positions: expected {expected}, got {positions.shape}",
        )
        _require(bool(np.isfinite(positions).all()), "electrode_positions: contains NaN/Inf")
    if "measured_activation_times" in extras:
        at = np.asarray(extras["measured_activation_times"])
        allowed = [nodes] + ([electrodes] if electrodes is not None else [])
        _require(
            at.ndim == 2 and at.shape[0] == samples and at.shape[1] in allowed,
            f"measured_activation_times: expected [{samples}, {nodes}] (nodes)"
            + (f" or [{samples}, {electrodes}] (electrodes)" if electrodes is not None else "")
            + f", got {at.shape}",
        )
        _require(
            not np.isinf(at).any(),
            "measured_activation_times: Inf values; use NaN for not measured",
        )
        if at.shape[1] != nodes:
            _require(
                "electrode_positions" in extras
                or isinstance(meta.get("observation"), dict)
                and meta["observation"].get("kind") == "contact_nodes",
                "measured_activation_times: per-electrode times need electrode_positions "
                "(or contact_nodes) to place them on the mesh",
            )
    observation = meta.get("observation")
    if observation is None:
        return
    _require(isinstance(observation, dict), "meta.observation: must be a JSON object")
    kind = observation.get("kind", "lead_field")
    _require(
        kind in OBSERVATION_KINDS,
        f"meta.observation.kind: {kind!r} is not one of {OBSERVATION_KINDS}",
    )
    normalisation = observation.get("normalisation", "none")
    _require(
        normalisation in NORMALISATIONS,
        f"meta.observation.normalisation: {normalisation!r} is not one of {NORMALISATIONS}",
    )
    if kind != "tmp":
        _require(
            "H" in extras and "signals" in extras,
            f"meta.observation.kind {kind!r} needs both H and signals in the file",
        )
    if kind == "contact_nodes":
        H = np.asarray(extras["H"])
        one_hot = np.all((H == 0) | (H == 1), axis=1) & (np.count_nonzero(H, axis=1) == 1)
        _require(
            bool(one_hot.all()),
            f"H: contact_nodes needs a single 1 per row (a node selection); rows "
            f"{np.flatnonzero(~one_hot)[:5].tolist()} are not",
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
    required = REQUIRED_KEYS
    if "signals" in contents:
        required = tuple(key for key in REQUIRED_KEYS if key not in RECORDING_OPTIONAL_KEYS)
    missing = [key for key in required if key not in contents]
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
            u=contents.get("u"),
            t=contents["t"],
            pacing_site=contents["pacing_site"],
            split=contents["split"],
            conductivity=contents.get("conductivity"),
            meta=meta,
            extras=extras,
        )
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from exc
