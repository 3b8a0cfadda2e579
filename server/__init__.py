"""LEADS MCP server (import name ``leads_server``); scripts use :func:`connect`.

The package imports nothing heavy: ``connect`` and its types load on first use, so that worker
processes, which import this package, start fast."""

from typing import Any

_SCRIPTING = ("connect", "Tools", "ToolCallError", "Figure")
__all__ = list(_SCRIPTING)


def __getattr__(name: str) -> Any:
    if name in _SCRIPTING:
        from . import scripting

        return getattr(scripting, name)
    raise AttributeError(f"module 'leads_server' has no attribute {name!r}")
