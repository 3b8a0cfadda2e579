"""Real recordings: a validating importer and a synthetic electrogram stand-in.

:func:`import_recording` turns a mesh (any meshio format), signals ``[samples, frames,
electrodes]``, frame times (ms) and either a lead field ``H``, electrode positions (from which
:func:`~leads_engine.observation.infinite_medium_lead_field` computes ``H``) or contact nodes
into a standard LEADS ``.npz`` data set without TMP (``u`` and ``conductivity`` are unknown for
a recording). Every check names the field and the expected against the found value.

:func:`make_egm_standin` makes a stand-in for such a recording from the benchmark simulations:
electrodes on an ellipsoid around the heart, ``y = H u`` plus white measurement noise and a
baseline wander per electrode,

.. math::
    y_{s,f,e} = (H u_{s,f})_e + a_e \\sin(2 \\pi \\nu_e t_f + \\varphi_{s,e})
        + \\eta_{s,f,e}, \\qquad \\eta \\sim \\mathcal N(0, (\\kappa\\, \\mathrm{std}_e)^2),

with ``a_e = alpha * std_e``, ``std_e`` the clean signal's standard deviation on electrode
``e``, wander frequencies ``nu_e`` drawn in ``wander_hz`` (respiration-like, far below the
activation content), and the true activation times kept as ``measured_activation_times``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .dataset import NORMALISATIONS, DatasetError, EPDataset, describe_nan_runs
from .generator import BenchmarkConfig, assign_split, generate_benchmark
from .heart_mesh import bundled_mesh
from .mesh import Mesh, load_mesh
from .metrics import activation_times
from .observation import infinite_medium_lead_field

#: A frame interval below this (in the file's time unit) means the times are in seconds.
MIN_FRAME_INTERVAL_MS = 0.01
#: Relative tolerance on equal frame spacing.
SPACING_RTOL = 1e-3


class RecordingError(DatasetError):
    """A recording's files are inconsistent; the message names the field."""


# --------------------------------------------------------------------------------------------
# Electrodes
# --------------------------------------------------------------------------------------------


def electrodes_around(mesh: Mesh, n_electrodes: int = 64, scale: float = 1.3) -> np.ndarray:
    """``[n_electrodes, 3]`` near-uniform points on an ellipsoid enclosing the mesh.

    The ellipsoid is centred on the mesh's bounding box with semi-axes ``scale`` times its
    half-extents (a sock or basket of non-contact electrodes); points follow a Fibonacci
    spiral, equally spaced in height, so the spacing is even to first order.
    """
    if n_electrodes < 1 or scale <= 1:
        raise ValueError("need n_electrodes >= 1 and scale > 1 (outside the heart)")
    low, high = mesh.points.min(axis=0), mesh.points.max(axis=0)
    centre, half = (low + high) / 2, (high - low) / 2 * scale
    k = np.arange(n_electrodes) + 0.5
    z = 1 - 2 * k / n_electrodes
    radius = np.sqrt(1 - z**2)
    angle = np.pi * (3 - np.sqrt(5)) * k
    unit = np.stack([radius * np.cos(angle), radius * np.sin(angle), z], axis=1)
    return centre + unit * half


# --------------------------------------------------------------------------------------------
# Synthetic stand-in
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EGMConfig:
    """A synthetic electrogram recording made from a benchmark simulation."""

    benchmark: BenchmarkConfig = field(
        default_factory=lambda: BenchmarkConfig(n_samples=20, split_sizes=(12, 3, 5))
    )
    n_electrodes: int = 64
    electrode_scale: float = 1.3
    noise_ratio: float = 0.02
    wander_ratio: float = 0.1
    wander_hz: tuple[float, float] = (0.15, 0.5)
    normalisation: str = "standardise"
    keep_tmp: bool = False

    def __post_init__(self) -> None:
        if self.noise_ratio < 0 or self.wander_ratio < 0:
            raise ValueError("noise_ratio and wander_ratio must be >= 0")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}")


def make_egm_standin(
    config: EGMConfig, mesh: Mesh | None = None, name: str | None = None
) -> EPDataset:
    """Simulate the benchmark beats and record them through a lead field (see module doc).

    Deterministic under ``config.benchmark.seed``. The TMP is dropped unless ``keep_tmp``: the
    trainer then sees only what a real recording has (signals, pacing sites, measured ATs).
    """
    mesh = mesh or bundled_mesh()
    tmp = generate_benchmark(config.benchmark, mesh=mesh, name=name)
    positions = electrodes_around(mesh, config.n_electrodes, config.electrode_scale)
    H = infinite_medium_lead_field(mesh, positions)
    clean = tmp.u.astype(np.float64) @ H.T  # [samples, frames, electrodes]
    rng = np.random.default_rng([config.benchmark.seed, 8])
    spread = clean.std(axis=(0, 1))
    frequency = rng.uniform(*config.wander_hz, size=config.n_electrodes) / 1000.0  # 1/ms
    phase = rng.uniform(0, 2 * np.pi, size=(tmp.n_samples, 1, config.n_electrodes))
    wander = config.wander_ratio * spread * np.sin(2 * np.pi * frequency * tmp.t[:, None] + phase)
    noise = rng.normal(0.0, 1.0, clean.shape) * config.noise_ratio * spread
    signals = (clean + wander + noise).astype(np.float32)
    meta: dict[str, Any] = {
        **tmp.meta,
        "name": name or f"egm_{config.benchmark.reaction}",
        "recording": "synthetic_standin",
        "generator": "leads_engine.recordings",
        "generator_version": __version__,
        "egm_config": asdict(config),
        "observation": {"kind": "lead_field", "normalisation": config.normalisation},
        "lead_field": {"model": "infinite_medium", "bath_conductivity": 1.0},
        "pacing": {"radius_mm": config.benchmark.pacing_radius_mm},
        "units": {**tmp.meta["units"], "signals": "arbitrary (H u)", "electrode_positions": "mm"},
    }
    return EPDataset(
        points=tmp.points,
        cells=tmp.cells,
        u=tmp.u if config.keep_tmp else None,
        t=tmp.t,
        pacing_site=tmp.pacing_site,
        split=tmp.split,
        conductivity=tmp.conductivity,
        meta=meta,
        extras={
            "H": H,
            "signals": signals,
            "electrode_positions": positions,
            "measured_activation_times": activation_times(tmp.u, tmp.t),
        },
    )


# --------------------------------------------------------------------------------------------
# Importer
# --------------------------------------------------------------------------------------------


def _load_array(path: str | Path, field_name: str) -> np.ndarray:
    try:
        return np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RecordingError(f"{field_name}: cannot read {str(path)!r} ({exc})") from exc


def check_times(t: np.ndarray, frames: int) -> np.ndarray:
    """Frame times: ``[frames]``, finite, strictly increasing, equally spaced, in ms."""
    t = np.asarray(t, dtype=np.float64)
    if t.shape != (frames,):
        raise RecordingError(f"times: expected shape ({frames},) (one per frame), found {t.shape}")
    if not np.isfinite(t).all():
        raise RecordingError(f"times: NaN/Inf at frames {np.flatnonzero(~np.isfinite(t))[:5]}")
    steps = np.diff(t)
    if (steps <= 0).any():
        at = int(np.flatnonzero(steps <= 0)[0])
        raise RecordingError(
            f"times: must increase strictly; frame {at + 1} ({t[at + 1]:g}) follows {t[at]:g}"
        )
    interval = float(np.median(steps))
    if interval < MIN_FRAME_INTERVAL_MS:
        raise RecordingError(
            f"times: frame interval {interval:g} looks like seconds, expected milliseconds "
            f"(>= {MIN_FRAME_INTERVAL_MS} ms); multiply the times by 1000"
        )
    uneven = np.flatnonzero(np.abs(steps - interval) > SPACING_RTOL * interval)
    if len(uneven):
        first = int(uneven[0])
        raise RecordingError(
            f"times: frames must be equally spaced ({interval:g} ms), but frames {first}-"
            f"{first + 1} are {steps[first]:g} ms apart ({len(uneven)} uneven step(s)); "
            "resample the signals on a uniform grid"
        )
    return t


def check_signals(signals: np.ndarray) -> np.ndarray:
    """Signals: ``[samples, frames, electrodes]``, no NaN runs (named if any)."""
    signals = np.asarray(signals)
    if signals.ndim != 3:
        raise RecordingError(
            f"signals: expected shape (samples, frames, electrodes), found {signals.shape}"
        )
    if not np.issubdtype(signals.dtype, np.number):
        raise RecordingError(f"signals: must be numbers, found dtype {signals.dtype}")
    message = describe_nan_runs(signals)
    if message is not None:
        raise RecordingError(message)
    return signals.astype(np.float32)


def check_lead_field(H: np.ndarray, n_electrodes: int, n_nodes: int) -> np.ndarray:
    """Lead field: ``[electrodes, nodes]`` matching the signals and the mesh, finite."""
    H = np.asarray(H, dtype=np.float64)
    if H.ndim != 2:
        raise RecordingError(f"H: expected shape ({n_electrodes}, {n_nodes}), found {H.shape}")
    if H.shape[1] != n_nodes:
        raise RecordingError(
            f"H: has {H.shape[1]} columns but the mesh has {n_nodes} nodes; the lead field "
            "must be computed on this mesh"
        )
    if H.shape[0] != n_electrodes:
        raise RecordingError(
            f"H: has {H.shape[0]} rows but the signals have {n_electrodes} electrodes"
        )
    if not np.isfinite(H).all():
        raise RecordingError("H: contains NaN/Inf")
    return H


def _node_indices(values: np.ndarray, field_name: str, shape: tuple[int], n_nodes: int):
    values = np.asarray(values)
    if values.shape != shape:
        raise RecordingError(f"{field_name}: expected shape {shape}, found {values.shape}")
    if not np.issubdtype(values.dtype, np.integer):
        raise RecordingError(f"{field_name}: must be integer node indices, found {values.dtype}")
    outside = values[(values < 0) | (values >= n_nodes)]
    if len(outside):
        raise RecordingError(f"{field_name}: nodes {outside[:5].tolist()} not in [0, {n_nodes})")
    return values.astype(np.int64)


def default_split_sizes(samples: int) -> tuple[int, int, int]:
    """About 60/15/25 % train/val/test (12/3/5 for 20 samples), at least one training sample."""
    test = round(samples * 0.25) if samples >= 3 else 0
    val = round(samples * 0.15) if samples >= 3 else 0
    return (samples - val - test, val, test)


def import_recording(
    mesh: str | Path | Mesh,
    signals: str | Path | np.ndarray,
    times: str | Path | np.ndarray,
    *,
    lead_field: str | Path | np.ndarray | None = None,
    electrodes: str | Path | np.ndarray | None = None,
    contact_nodes: str | Path | np.ndarray | None = None,
    pacing_sites: str | Path | np.ndarray | None = None,
    activation_times_ms: str | Path | np.ndarray | None = None,
    split: tuple[int, int, int] | None = None,
    name: str = "recording",
    normalisation: str = "standardise",
    pacing_radius_mm: float = 6.0,
    bath_conductivity: float = 1.0,
    seed: int = 0,
) -> EPDataset:
    """Validate a recording's parts and assemble them into a LEADS data set (no TMP).

    Exactly one of ``lead_field`` (``H [electrodes, nodes]``), ``electrodes`` (positions
    ``[electrodes, 3]`` in mm, ``H`` from the infinite-medium model) or ``contact_nodes``
    (``[electrodes]`` node indices, TMP observed there) says how the signals were measured.
    ``pacing_sites`` ``[samples]``; when absent, the earliest measured activation gives them.
    Arrays or ``.npy`` paths are accepted.
    """
    mesh = mesh if isinstance(mesh, Mesh) else load_mesh(mesh)

    def array(value: Any, field_name: str) -> np.ndarray | None:
        if value is None or isinstance(value, np.ndarray):
            return value
        return _load_array(value, field_name)

    y = check_signals(array(signals, "signals"))
    samples, frames, n_electrodes = y.shape
    t = check_times(array(times, "times"), frames)
    given = [
        k
        for k, v in {
            "lead_field": lead_field,
            "electrodes": electrodes,
            "contact_nodes": contact_nodes,
        }.items()
        if v is not None
    ]
    if len(given) != 1:
        raise RecordingError(
            f"observation: give exactly one of --lead-field, --electrodes, --contact-nodes "
            f"(found {given or 'none'})"
        )
    extras: dict[str, np.ndarray] = {"signals": y}
    kind = "lead_field"
    if lead_field is not None:
        extras["H"] = check_lead_field(array(lead_field, "H"), n_electrodes, mesh.n_nodes)
        lead_model = "given"
    if electrodes is not None:
        positions = np.asarray(array(electrodes, "electrode_positions"), dtype=np.float64)
        if positions.shape != (n_electrodes, 3):
            raise RecordingError(
                f"electrode_positions: expected shape ({n_electrodes}, 3), found {positions.shape}"
            )
        if not np.isfinite(positions).all():
            raise RecordingError("electrode_positions: contains NaN/Inf")
        extras["electrode_positions"] = positions
        extras["H"] = infinite_medium_lead_field(mesh, positions, bath_conductivity)
        lead_model = "infinite_medium"
    if contact_nodes is not None:
        nodes = _node_indices(
            array(contact_nodes, "contact_nodes"), "contact_nodes", (n_electrodes,), mesh.n_nodes
        )
        H = np.zeros((n_electrodes, mesh.n_nodes))
        H[np.arange(n_electrodes), nodes] = 1.0
        extras["H"], kind, lead_model = H, "contact_nodes", "node_selection"

    at = array(activation_times_ms, "activation_times")
    if at is not None:
        at = np.asarray(at, dtype=np.float64)
        if (
            at.ndim != 2
            or at.shape[0] != samples
            or at.shape[1] not in (mesh.n_nodes, n_electrodes)
        ):
            raise RecordingError(
                f"activation_times: expected shape ({samples}, {mesh.n_nodes}) per node or "
                f"({samples}, {n_electrodes}) per electrode, found {at.shape}"
            )
        if at.shape[1] == n_electrodes and kind == "lead_field" and electrodes is None:
            raise RecordingError(
                "activation_times: per-electrode times need --electrodes (positions) to be "
                "placed on the mesh"
            )
        finite = at[np.isfinite(at)]
        if len(finite) and (finite.min() < t[0] - 1e-9 or finite.max() > t[-1] + 1e-9):
            raise RecordingError(
                f"activation_times: values in [{finite.min():g}, {finite.max():g}] lie outside "
                f"the recording window [{t[0]:g}, {t[-1]:g}] ms (wrong units?)"
            )
        extras["measured_activation_times"] = at

    sites = array(pacing_sites, "pacing_sites")
    if sites is not None:
        sites = _node_indices(sites, "pacing_sites", (samples,), mesh.n_nodes)
    elif at is not None:
        sites = _sites_from_activation(at, extras, mesh)
    else:
        raise RecordingError(
            "pacing_sites: needed to start the simulation (or give --activation-times, whose "
            "earliest node is taken as the site)"
        )

    sizes = tuple(split) if split is not None else default_split_sizes(samples)
    if len(sizes) != 3 or sum(sizes) != samples or sizes[0] < 1:
        raise RecordingError(
            f"split: sizes {list(sizes)} must be three numbers adding up to {samples} samples "
            "with at least one for training"
        )
    meta = {
        "name": name,
        "recording": "imported",
        "generator": "leads_engine.recordings.import_recording",
        "generator_version": __version__,
        "reaction": None,
        "mesh": mesh.name,
        "seed": seed,
        "observation": {"kind": kind, "normalisation": normalisation},
        "lead_field": {"model": lead_model, "bath_conductivity": bath_conductivity},
        "pacing": {
            "radius_mm": pacing_radius_mm,
            "sites_from": "file" if pacing_sites is not None else "earliest_activation",
        },
        "units": {"t": "ms", "points": "mm", "signals": "as recorded"},
    }
    try:
        return EPDataset(
            points=mesh.points,
            cells=mesh.cells,
            u=None,
            t=t,
            pacing_site=sites,
            split=assign_split(samples, sizes, np.random.default_rng(seed)),  # type: ignore[arg-type]
            conductivity=None,
            meta=meta,
            extras=extras,
        )
    except DatasetError as exc:
        raise RecordingError(str(exc)) from exc


def _sites_from_activation(at: np.ndarray, extras: dict[str, np.ndarray], mesh: Mesh) -> np.ndarray:
    """Node of the earliest measured activation per sample (electrode times: nearest node)."""
    if np.isnan(at).all(axis=1).any():
        raise RecordingError("pacing_sites: a sample has no measured activation time to locate it")
    earliest = np.nanargmin(at, axis=1)
    if at.shape[1] == mesh.n_nodes:
        return earliest.astype(np.int64)
    if "electrode_positions" in extras:
        positions = extras["electrode_positions"][earliest]
        squared = ((positions[:, None, :] - mesh.points[None]) ** 2).sum(axis=2)
        return squared.argmin(axis=1).astype(np.int64)
    return extras["H"].argmax(axis=1)[earliest].astype(np.int64)  # contact nodes


def standin_config(reaction: str, **overrides: Any) -> EGMConfig:
    """An :class:`EGMConfig` for ``reaction``; overrides go to the benchmark or the EGM part."""
    bench_fields = set(BenchmarkConfig.__dataclass_fields__)
    bench = {k: v for k, v in overrides.items() if k in bench_fields}
    egm = {k: v for k, v in overrides.items() if k not in bench_fields}
    bench.setdefault("n_samples", 20)
    bench.setdefault("split_sizes", default_split_sizes(bench["n_samples"]))
    benchmark = BenchmarkConfig(reaction=reaction, **bench)
    return EGMConfig(benchmark=benchmark, **egm)


__all__ = [
    "EGMConfig",
    "RecordingError",
    "check_lead_field",
    "check_signals",
    "check_times",
    "default_split_sizes",
    "electrodes_around",
    "import_recording",
    "make_egm_standin",
    "standin_config",
]
