"""A second server on a busy archive: say why and what to do, to the user and to the host.

DuckDB lets one process write an archive file. A host that starts ``leads-server`` over stdio
while another server holds the same ``LEADS_HOME`` used to see only "Connection closed". Now the
server prints the reason on stderr and, over stdio, still answers the host: a stand-in MCP server
whose instructions and only tool, ``archive_busy``, carry the reason and the two ways out
(another archive, or the running server over HTTP), so the host's model can tell the user.
"""

from __future__ import annotations

import re
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations


def is_busy(message: str) -> bool:
    """Whether an archive error says another process holds the file."""
    return "in use by another process" in message


def busy_message(archive: Path | None, error: str) -> str:
    """The reason and what to do, in a few sentences (the holder's PID when DuckDB names it)."""
    found = re.search(r"PID (\d+)", error)
    holder = f"process {found.group(1)}" if found else "another process"
    where = str(archive) if archive is not None else "$LEADS_HOME/archive.duckdb"
    return (
        f"The LEADS archive {where} is in use by {holder} (another leads-server; DuckDB allows "
        "one writer per file), so this server cannot open it. Either start this server on "
        "another archive (leads-server --archive OTHER.duckdb, or another LEADS_HOME), or "
        "connect the host to the running server over HTTP: run it as leads-server --transport "
        "http [--token TOKEN] and use the URL http://127.0.0.1:8000/mcp."
    )


def busy_server(message: str) -> MCPServer:
    """A stand-in server that tells the host ``message`` (instructions and one tool)."""
    server = MCPServer(name="leads (archive busy)", instructions=message)

    def archive_busy() -> str:
        raise ToolError(message)

    server.add_tool(
        archive_busy,
        name="archive_busy",
        title="LEADS cannot open its archive",
        description=message,
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    return server
