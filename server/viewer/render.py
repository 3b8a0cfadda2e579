"""The viewer page: one self-contained HTML file (``viewer.html``: styles, WebGL and the MCP
Apps bridge inlined; nothing loaded from the network) with or without a payload in it.

- :func:`render_html` fills the payload in: the page draws it at once (``report.html``, the
  bench's viewer, the ``viewer://`` resources);
- :func:`app_html` leaves it out: the page is the MCP App (``ui://leads/viewer.html``), which
  asks its host for the tool result and reads ``viewer://candidate/{id}/payload`` (or the
  session's) through the host.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["PAYLOAD_MARKER", "app_html", "render_html", "write_html"]

#: where the payload goes in ``viewer.html`` (inside a ``<script type="application/json">``)
PAYLOAD_MARKER = "/*LEADS_PAYLOAD*/null"


def _template() -> str:
    return resources.files(__package__).joinpath("viewer.html").read_text(encoding="utf-8")


def _script_safe_json(payload: Any) -> str:
    """JSON that cannot end its ``<script>`` element early (``<``, ``>``, ``&`` escaped; the
    line separators that JavaScript once refused inside strings, too)."""
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text


def app_html() -> str:
    """The MCP App page: the viewer without a payload (it asks its host for one)."""
    return _template()


def render_html(payload: dict[str, Any]) -> str:
    """The viewer page with ``payload`` (see :mod:`.payload`) inlined."""
    template = _template()
    if PAYLOAD_MARKER not in template:
        raise RuntimeError("viewer.html lost its payload marker")
    return template.replace(PAYLOAD_MARKER, _script_safe_json(payload), 1)


def write_html(payload: dict[str, Any], path: Path) -> Path:
    """Write the viewer page with ``payload`` to ``path``; the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(payload), encoding="utf-8")
    return path
