"""The interactive 3-D viewer: a self-contained HTML/WebGL page (``viewer.html``), the compact
payload it draws (:mod:`.payload`), the page with or without a payload (:mod:`.render`), the
predicted beat of a candidate (:mod:`.prediction`) and the MCP App with its ``viewer://``
resources (:mod:`.mcp_app`, imported on its own: it needs the server).

The payload and page modules depend on numpy only, so the bench and tests build viewers with
them directly."""

from .payload import candidate_scene, comparison_scenes, leaderboard, viewer_payload
from .render import app_html, render_html, write_html

__all__ = [
    "app_html",
    "candidate_scene",
    "comparison_scenes",
    "leaderboard",
    "render_html",
    "viewer_payload",
    "write_html",
]
