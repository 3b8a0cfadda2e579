"""After an anonymised search: what the session hid from its agent, for the user's report.

The server never tells an MCP client (so never the model) which real reaction is behind an alias
or which data set a session runs on. The user may know: ``leads-server reveal SESSION_ID`` prints
it from the archive's truth files on the machine that runs the server. When ``leads-agent``
started the bundled server itself, it runs that command once the search is over and writes the
answer into the report, never into the conversation. With a server at a URL (another machine, or
files this user cannot read) the report says how to reveal the names there instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

#: Seconds the reveal command may take (it reads one small JSON file; the interpreter's start
#: dominates, and a loaded machine may take several seconds).
REVEAL_TIMEOUT_S = 120.0


@dataclass
class Revealed:
    """An anonymised session's truth: its data set and the real name behind each alias; or,
    when it could not be read here, ``unavailable`` says why and how to read it."""

    dataset: str | None = None
    true_reaction: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> real name
    unavailable: str | None = None

    def real(self, shown: str) -> str:
        """The real name behind ``shown`` (itself when it is no alias)."""
        return self.aliases.get(shown, shown)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "true_reaction": self.true_reaction,
            "aliases": dict(self.aliases),
            "unavailable": self.unavailable,
        }


def reveal_command(session_id: str, archive: str | None) -> list[str]:
    """The command that prints the session's truth from the bundled server's installation."""
    command = [sys.executable, "-m", "leads_server.cli", "reveal", session_id]
    if archive:
        command += ["--archive", str(archive)]
    return command


def reveal_session(session_id: str, archive: str | None, local_server: bool) -> Revealed:
    """The truth of an anonymised session of the bundled server (``local_server``), read with
    ``leads-server reveal``; otherwise a :class:`Revealed` that says where to run it."""
    how = f"leads-server reveal {session_id}"
    if not local_server:
        return Revealed(
            unavailable=f"the server keeps the real names: run `{how}` where it runs (with its "
            "--archive)"
        )
    try:
        done = subprocess.run(
            reveal_command(session_id, archive),
            capture_output=True,
            text=True,
            timeout=REVEAL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Revealed(unavailable=f"`{how}` could not run here ({exc})")
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return Revealed(unavailable=reason)
    try:
        data = json.loads(done.stdout)
        return Revealed(
            dataset=data.get("dataset"),
            true_reaction=data.get("true_reaction"),
            aliases={str(k): str(v) for k, v in (data.get("aliases") or {}).items()},
        )
    except (ValueError, AttributeError) as exc:
        return Revealed(unavailable=f"`{how}` printed no truth ({exc})")
