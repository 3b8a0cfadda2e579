"""``report.html``: the interactive 3-D viewer of a run, saved next to ``report.md``.

The page comes whole from the server (``viewer://candidate/{id}``: the mesh, predicted and true
activation maps, the potential over a test beat and the session's leaderboard, inlined into a
self-contained HTML file), so the client stays MCP-only: it picks the candidate to show (the
evaluated one, else the best of the search, else the session) and writes what it reads.
"""

from __future__ import annotations

from pathlib import Path

from .agent import RunResult
from .connection import ServerConnection

__all__ = ["REPORT_HTML", "viewer_uri", "write_report_html"]

REPORT_HTML = "report.html"


def viewer_uri(result: RunResult) -> str:
    """The viewer resource of the run: its evaluated candidate, else its best, else the
    session."""
    evaluated = (result.evaluation or {}).get("candidate_id")
    best = result.best.candidate_id if result.best is not None else None
    candidate = evaluated or best
    if candidate:
        return f"viewer://candidate/{candidate}"
    return f"viewer://session/{result.session_id}"


async def write_report_html(conn: ServerConnection, result: RunResult, folder: Path) -> Path | None:
    """Write ``report.html`` into ``folder``; its path, or None (with a note in the run's
    notes) when the server offers no viewer or it could not be read. Never fatal."""
    if not await conn.has_resource_template("viewer://"):
        result.notes.append("report.html not written: the server offers no viewer:// resource")
        return None
    uri = viewer_uri(result)
    try:
        page = await conn.read_resource(uri)
    except Exception as exc:  # a missing viewer is reported, never fatal
        result.notes.append(f"report.html not written: {uri} could not be read ({exc})")
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REPORT_HTML
    path.write_bytes(page if isinstance(page, bytes) else page.encode("utf-8"))
    return path
