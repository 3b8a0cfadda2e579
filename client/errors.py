"""Errors the command line turns into a clear message and an exit code (no traceback)."""

from __future__ import annotations

__all__ = ["AgentError", "ConfigurationError", "ProviderError"]


class AgentError(RuntimeError):
    """A run cannot go on (server unreachable, session unknown, ...): exit code 1."""

    exit_code = 1


class ConfigurationError(AgentError):
    """The user must fix the invocation (missing API key, bad option): exit code 2."""

    exit_code = 2


class ProviderError(AgentError):
    """The LLM endpoint failed for good (unreachable, retries exhausted, rejected): exit 1."""
