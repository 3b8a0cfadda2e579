"""Where ``leads-agent`` keeps its files when no folder is given: ``$LEADS_HOME``.

The client speaks MCP only and never imports the engine, so it resolves the folder itself,
by the same rule as :func:`leads_engine.dataset.leads_home` (``tests/test_home.py`` checks that
the two agree): ``$LEADS_HOME`` with ``~`` expanded, or ``~/.leads`` when unset or blank.
"""

from __future__ import annotations

import os
from pathlib import Path


def leads_home() -> Path:
    """``$LEADS_HOME`` (``~`` expanded), or ``~/.leads`` when it is unset or blank."""
    value = os.environ.get("LEADS_HOME", "").strip()
    return Path(value).expanduser() if value else Path.home() / ".leads"
