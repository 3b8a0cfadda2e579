"""Pictures for the host's model: a candidate's activation map and training curves as MCP image
content, sent next to the structured result of get_candidate and evaluate_candidate.

The activation map exists once evaluate_candidate drew it; the training curves are the file
evaluate_candidate wrote, or else drawn from the archived epochs (in a thread) and, once the
candidate's training is final, kept in its figure folder, so that a host asking again (a
leaderboard, a summary) reads a file instead of drawing: a drawing holds the interpreter for
0.3-0.6 s, which every other call of the server then waits behind. Figures hold pixels only: no
names, so nothing of an anonymised session's truth.
"""

from __future__ import annotations

import base64
import math
import tempfile
from pathlib import Path

import anyio.to_thread
import mcp_types as types

from .archive import FINAL_STATUSES
from .errors import DiscoveryError
from .models import CandidateRecord
from .runs import FIGURES, figure_dir
from .service import DiscoveryService


def image(data: bytes) -> types.ImageContent:
    """PNG bytes as MCP image content."""
    return types.ImageContent(data=base64.b64encode(data).decode(), mime_type="image/png")


def _curves_png(record: CandidateRecord) -> bytes | None:
    """The training curves of ``record`` drawn now (None without a finite loss)."""
    from leads_engine.plots import plot_training_curves

    def clean(key: str) -> list[float]:
        values = [epoch.get(key) for epoch in record.epochs]
        return [float(v) if isinstance(v, (int, float)) else math.nan for v in values]

    curves = {"train": clean("train_loss"), "val": clean("val_loss")}
    if not any(math.isfinite(v) for values in curves.values() for v in values):
        return None
    with tempfile.TemporaryDirectory(prefix="leads-curves-") as folder:
        path = Path(folder) / FIGURES[1]
        plot_training_curves(curves, path)
        return path.read_bytes()


def _keep(record: CandidateRecord, name: str, png: bytes) -> None:
    """Store a final candidate's drawn figure where :meth:`Runs.figure` finds it (written to a
    temporary name and renamed, so a concurrent reader never sees half a file)."""
    folder = figure_dir(record.session_id, record.candidate_id)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{name}.partial"
    partial.write_bytes(png)
    partial.replace(folder / name)


async def candidate_images(
    service: DiscoveryService, record: CandidateRecord
) -> list[types.ImageContent]:
    """The activation map (when evaluated) and the training curves of a candidate."""
    images: list[types.ImageContent] = []
    for name in FIGURES:
        try:
            images.append(image(service.figure(record.candidate_id, name)))
        except (DiscoveryError, OSError):
            if name == FIGURES[1] and record.epochs:
                drawn = await anyio.to_thread.run_sync(_curves_png, record)
                if drawn is not None:
                    images.append(image(drawn))
                    if record.status in FINAL_STATUSES:
                        _keep(record, name, drawn)
    return images
