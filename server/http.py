"""Streamable HTTP transport: DNS-rebinding protection and an optional bearer token.

The SDK's :class:`TransportSecuritySettings` refuses requests whose ``Host`` (421) or
``Origin`` (403) header is not the address the server was started on, so a web page cannot reach
a server on ``127.0.0.1`` through DNS rebinding. :class:`BearerTokenMiddleware` answers 401 to
any HTTP request without ``Authorization: Bearer <token>`` when a token is configured.
"""

from __future__ import annotations

import hmac
import ipaddress

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


class BearerTokenMiddleware:
    """Pure ASGI middleware: HTTP requests need ``Authorization: Bearer <token>``; lifespan
    events pass through."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("the bearer token must not be empty")
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = Headers(scope=scope).get("authorization", "").encode()
            if not hmac.compare_digest(given, self._expected):
                response = JSONResponse(
                    {"error": "unauthorized", "detail": "send Authorization: Bearer <token>"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="leads"'},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def transport_security(host: str, port: int) -> TransportSecuritySettings:
    """Allowed ``Host``/``Origin`` values for a server bound to ``host:port``."""
    names = list(LOOPBACK_NAMES) if _is_loopback(host) else [host]
    if not _is_loopback(host) and host not in ("0.0.0.0", "::"):
        names += list(LOOPBACK_NAMES)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{name}:{port}" for name in names],
        allowed_origins=[f"http://{name}:{port}" for name in names],
    )


def build_http_app(
    server: MCPServer, host: str = "127.0.0.1", port: int = 8000, token: str | None = None
) -> ASGIApp:
    """The streamable HTTP ASGI app at ``/mcp`` with the protections above."""
    app: ASGIApp = server.streamable_http_app(
        transport_security=transport_security(host, port), host=host
    )
    if token:
        app = BearerTokenMiddleware(app, token)
    return app
