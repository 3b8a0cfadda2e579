"""What the server tells a host besides answers: log messages and resource-update notices.

Logging (MCP ``logging/setLevel`` and ``notifications/message``): each connection chooses a
level; long work (data set generation, training, evaluation) sends ``info`` messages as it goes,
at or above that level only (default ``info``). On 2026-07-28 connections the request's own
log-level opt-in decides instead (the SDK filters).

Subscriptions: a connection subscribes to a resource URI (``resources/subscribe``, any URI is
accepted, as the spec asks); when a tool changes a session's archive rows the server sends
``notifications/resources/updated`` for ``session://{id}/summary`` to the connections that
subscribed to it, and publishes the same event to ``subscriptions/listen`` streams (2026-07-28).

One :class:`HostChannels` belongs to one server: its state (levels, subscribers) lives as long
as the server and is keyed by the SDK's connection objects.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, get_args

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context

log = logging.getLogger(__name__)

#: MCP log levels, least severe first
LEVELS: tuple[str, ...] = get_args(types.LoggingLevel)
DEFAULT_LEVEL = "info"
#: the logger name the messages carry
LOGGER = "leads"


def _connection(session: Any) -> Any:
    """The connection behind a per-request session proxy (the key of per-connection state)."""
    return getattr(session, "_connection", session)


class HostChannels:
    """Per-connection log levels and resource subscriptions of one server."""

    def __init__(self) -> None:
        self._levels: dict[int, str] = {}
        #: uri -> {id(connection): session proxy whose standalone channel reaches it}
        self._subscribers: dict[str, dict[int, Any]] = {}

    # ------------------------------------------------------------------ logging

    async def set_level(
        self, ctx: ServerRequestContext[Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        """``logging/setLevel``: messages below ``params.level`` are no longer sent."""
        self._levels[id(_connection(ctx.session))] = params.level
        return types.EmptyResult()

    def level(self, session: Any) -> str:
        return self._levels.get(id(_connection(session)), DEFAULT_LEVEL)

    async def log(self, ctx: Context | None, level: str, message: str) -> None:
        """Send ``message`` to the client of ``ctx``'s request if its level allows; never
        fails the request (a closed stream just drops the message)."""
        if ctx is None:
            return
        try:
            session = ctx.request_context.session
        except (AttributeError, ValueError):
            return
        if LEVELS.index(level) < LEVELS.index(self.level(session)):
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecated in 2026-07-28, still served
                await ctx.log(level, message, logger_name=LOGGER)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - a log line must not fail the tool
            log.debug("log message dropped: %s", message)

    # ------------------------------------------------------------------ subscriptions

    async def subscribe(
        self, ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        """``resources/subscribe``: remember the connection for ``params.uri``."""
        connection = _connection(ctx.session)
        self._subscribers.setdefault(str(params.uri), {})[id(connection)] = ctx.session
        return types.EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        """``resources/unsubscribe``: forget the connection for ``params.uri``."""
        self._subscribers.get(str(params.uri), {}).pop(id(_connection(ctx.session)), None)
        return types.EmptyResult()

    def subscribed(self, uri: str) -> int:
        """How many connections subscribed to ``uri``."""
        return len(self._subscribers.get(uri, {}))

    async def updated(self, ctx: Context | None, uri: str) -> None:
        """Tell the subscribers of ``uri`` (both protocol eras) that it changed."""
        if ctx is not None:
            try:
                await ctx.notify_resource_updated(uri)
            except Exception:  # noqa: BLE001 - no listener is not an error
                log.debug("no subscriptions/listen stream for %s", uri)
        for key, session in list(self._subscribers.get(uri, {}).items()):
            try:
                await session.send_resource_updated(uri)
            except Exception:  # noqa: BLE001 - a gone client stops being a subscriber
                self._subscribers.get(uri, {}).pop(key, None)
