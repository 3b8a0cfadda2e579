"""Fixtures of the server tests: a tiny data set under an isolated LEADS_HOME, the MCP server
over a fresh archive, and an in-memory ``mcp.Client`` connected to it.

Test modules load them with ``pytest_plugins = ("server_fixtures",)`` and call the tools with
the helpers of :mod:`server_calls`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from leads_server.app import LeadsServer, build_server
from mcp import Client
from server_calls import save_tiny


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "leads_home"
    monkeypatch.setenv("LEADS_HOME", str(home))
    save_tiny(home)
    return home


@pytest.fixture
def server(home: Path) -> Iterator[LeadsServer]:
    server = build_server(home / "archive.duckdb", compile_training=False)
    yield server
    server.close()


@pytest.fixture
async def client(server: LeadsServer) -> AsyncIterator[Client]:
    async with Client(server) as client:
        yield client
