"""``activation_maps.html``: the bench's activation-map comparison in the interactive 3-D viewer
(the page of :mod:`leads_server.viewer`, data inlined, no network at view time).

Per data set, two scenes: the first test beat's activation times of the truth and of every
method in one colour range (ms), and each method's absolute error; rotate, zoom, click a node
to read its values, and scrub a wavefront through the beat. The maps are the ones the PNG
figure shows (``<out>/runs/<key>.npz``).
"""

from __future__ import annotations

from pathlib import Path

from leads_server.viewer import comparison_scenes, viewer_payload, write_html

from leads_engine.dataset import load_dataset

from .config import Run
from .table import first_beat_maps

__all__ = ["VIEWER_NAME", "write_activation_viewer"]

VIEWER_NAME = "activation_maps.html"


def write_activation_viewer(
    out: Path, runs: list[Run], dataset_paths: dict[str, Path], methods: list[str]
) -> Path | None:
    """Write ``<out>/activation_maps.html`` from the finished runs; its path, or None when no
    run has maps yet."""
    scenes = []
    for name, path in dataset_paths.items():
        truth, maps = first_beat_maps(out, runs, name, methods)
        if not maps:
            continue
        dataset = load_dataset(path)
        test = dataset.indices("test")
        site = int(dataset.pacing_site[test[0]]) if len(test) else None
        scenes += comparison_scenes(
            name.upper(), dataset.points, dataset.cells, truth, maps, pacing_site=site
        )
    if not scenes:
        return None
    payload = viewer_payload(
        "comparison",
        "LEADS bench: activation times of the first test beat, every method",
        scenes,
        info={"data sets": ", ".join(n.upper() for n in dataset_paths), "methods": len(methods)},
    )
    return write_html(payload, out / VIEWER_NAME)
