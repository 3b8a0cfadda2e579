"""The MCP connection to ``leads-server``: the bundled server over stdio, or a URL over
streamable HTTP (optional bearer token). Everything the agent learns or does goes through here.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from .errors import AgentError
from .home import leads_home

__all__ = ["ProgressCallback", "ServerConnection", "ToolResult", "ToolSpec", "connect"]

ProgressCallback = Callable[[float, float | None, str | None], Awaitable[None]]

_TRANSPORT_ERRORS = (
    httpx2.TransportError,
    OSError,
    ConnectionError,
    MCPError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)

# Environment variables the bundled server needs besides the MCP SDK's safe defaults.
_FORWARDED_ENV = ("LEADS_HOME", "PYTHONPATH", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


@dataclass
class ToolSpec:
    """A tool as the server lists it: name, description and JSON schema of its arguments."""

    name: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool = False


@dataclass
class ToolResult:
    """A tool's answer: ``ok`` is False for an MCP ``isError`` result (or a protocol error)."""

    ok: bool
    data: Any = None
    text: str = ""

    def as_dict(self) -> dict[str, Any]:
        """``data`` when it is a dict, else an empty dict."""
        return self.data if isinstance(self.data, dict) else {}

    def for_model(self, limit: int = 6000) -> str:
        """The result as text for an LLM (structured content as JSON), cut to ``limit``."""
        if self.data is not None:
            body = json.dumps(self.data, default=str)
        else:
            body = self.text
        prefix = "" if self.ok else "ERROR: "
        body = prefix + body
        return body if len(body) <= limit else body[:limit] + f"... [{len(body) - limit} more]"


def _parse_result(result: types.CallToolResult) -> ToolResult:
    texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
    text = "\n".join(texts)
    data = result.structured_content
    if data is None and text:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
    # FastMCP-style wrapping of non-dict returns: {"result": ...}
    if isinstance(data, dict) and set(data) == {"result"} and not isinstance(data["result"], str):
        data = data["result"]
    return ToolResult(ok=not result.is_error, data=data, text=text)


@dataclass
class ServerConnection:
    """An open MCP client session with the tools the server offers."""

    client: Client
    tools: dict[str, ToolSpec] = field(default_factory=dict)

    async def load_tools(self) -> None:
        """Fetch the tool list (all pages)."""
        cursor: str | None = None
        while True:
            page = await self.client.list_tools(cursor=cursor)
            for tool in page.tools:
                annotations = tool.annotations
                self.tools[tool.name] = ToolSpec(
                    name=tool.name,
                    description=tool.description or "",
                    input_schema=dict(tool.input_schema or {}),
                    read_only=bool(annotations and annotations.read_only_hint),
                )
            cursor = page.next_cursor
            if not cursor:
                return

    def has_tool(self, name: str) -> bool:
        """Whether the server offers a tool of this name."""
        return name in self.tools

    async def call(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        progress: ProgressCallback | None = None,
    ) -> ToolResult:
        """Call a tool; protocol errors come back as a failed :class:`ToolResult`."""
        try:
            result = await self.client.call_tool(name, arguments or {}, progress_callback=progress)
        except Exception as exc:  # an MCP error (unknown tool, invalid params) is data here
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return ToolResult(ok=False, text=f"{type(exc).__name__}: {exc}")
        return _parse_result(result)

    async def has_resource_template(self, fragment: str) -> bool:
        """Whether the server lists a resource template containing ``fragment``."""
        try:
            listing = await self.client.list_resource_templates()
        except Exception:  # a server without resources
            return False
        return any(fragment in t.uri_template for t in listing.resource_templates)

    async def read_resource(self, uri: str) -> str | bytes:
        """A resource's first content: text as ``str``, a blob as ``bytes``."""
        result = await self.client.read_resource(uri)
        for content in result.contents:
            if isinstance(content, types.TextResourceContents):
                return content.text
            if isinstance(content, types.BlobResourceContents):
                return base64.b64decode(content.blob)
        raise AgentError(f"resource {uri} is empty")


def server_command(
    archive: str | None = None, compile_training: bool = True
) -> StdioServerParameters:
    """How to start the bundled server: this interpreter running ``leads_server.cli``."""
    args = ["-m", "leads_server.cli"]
    if archive:
        args += ["--archive", str(archive)]
    if not compile_training:
        args.append("--no-compile")
    env = {key: os.environ[key] for key in _FORWARDED_ENV if key in os.environ}
    return StdioServerParameters(command=sys.executable, args=args, env=env)


@asynccontextmanager
async def connect(
    server_url: str | None = None,
    token: str | None = None,
    archive: str | None = None,
    server: Any = None,
    compile_training: bool = True,
) -> AsyncIterator[ServerConnection]:
    """Open a connection: ``server`` (an in-process server object or any MCP ``Transport``,
    used by tests), else ``server_url`` over streamable HTTP, else the bundled server over
    stdio (``compile_training=False`` starts it with ``--no-compile``)."""
    log = server_log_path() if server is None and not server_url else None
    where = server_url or "the bundled leads-server (stdio)"
    with contextlib.ExitStack() as files:
        if server is not None:
            target: Any = server
        elif server_url:
            headers = {"Authorization": f"Bearer {token}"} if token else None
            target = streamable_http_client(server_url, http_client=create_mcp_http_client(headers))
        else:  # the bundled server; its log goes to a file, not over the live display
            log.parent.mkdir(parents=True, exist_ok=True)
            errlog = files.enter_context(open(log, "a", encoding="utf-8"))  # noqa: SIM115
            target = stdio_client(server_command(archive, compile_training), errlog=errlog)
            where += f" (its log: {log})"
        try:
            client = Client(target)
            async with client:
                connection = ServerConnection(client)
                await connection.load_tools()
                yield connection
        except Exception as exc:  # anyio task groups wrap transport failures in exception groups
            inner = _first_leaf(exc)
            if isinstance(inner, AgentError):
                raise inner from None
            if isinstance(inner, _TRANSPORT_ERRORS):
                detail = _last_log_line(log) if log else ""
                raise AgentError(
                    f"the MCP connection to {where} failed: {inner}"
                    + (f"; {detail}" if detail else "")
                ) from inner
            raise


def server_log_path() -> Path:
    """Where the bundled server's stderr goes: ``$LEADS_HOME/logs/leads-server.log``."""
    return leads_home() / "logs" / "leads-server.log"


def _last_log_line(path: Path) -> str:
    """The server's last error line (e.g. why it could not start), if it wrote one."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    errors = [line for line in lines[-20:] if line.startswith("leads-server:")]
    return errors[-1] if errors else ""


def _first_leaf(exc: BaseException) -> BaseException:
    """The first non-group exception inside (nested) exception groups."""
    inner = exc
    while getattr(inner, "exceptions", None):
        inner = inner.exceptions[0]  # type: ignore[attr-defined]
    return inner
