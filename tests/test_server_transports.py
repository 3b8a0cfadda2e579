"""``leads-server`` as a real process: stdio, streamable HTTP (token, Host check), and a
SIGKILL in the middle of training."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from leads_server.app import TOOLS, build_server
from leads_server.archive import INTERRUPTED_ERROR, Archive
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from server_calls import call, save_tiny

pytest_plugins = ("server_fixtures",)  # anyio_backend, home (LEADS_HOME with the tiny set)
pytestmark = pytest.mark.anyio
SERVER = [sys.executable, "-m", "leads_server.cli", "--no-compile"]


def stdio_params(home: Path, *prefix: str) -> StdioServerParameters:
    command = [*prefix, *SERVER]
    return StdioServerParameters(
        command=command[0], args=command[1:], env={"LEADS_HOME": str(home)}
    )


async def test_stdio_subprocess(home: Path) -> None:
    async with Client(stdio_params(home)) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert "train_candidate" in names
        started = await call(client, "start_session", dataset="tiny", anonymise=True)
        catalogs = await call(client, "list_catalogs", session_id=started["session_id"])
        assert catalogs["anonymised"] and catalogs["reactions"][0]["name"] == "reaction_A"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def http_server(home: Path) -> Iterator[tuple[str, str]]:
    port, token = free_port(), "s3cret-token"
    process = subprocess.Popen(
        [*SERVER, "--transport", "http", "--port", str(port)],
        env={**os.environ, "LEADS_HOME": str(home), "LEADS_SERVER_TOKEN": token},
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}/mcp", token
    finally:
        process.terminate()
        process.wait(10)


async def test_http_needs_token_and_a_local_host(http_server: tuple[str, str]) -> None:
    url, token = http_server
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient() as raw:
        missing = await raw.post(url, json=ping, headers=headers)
        wrong = await raw.post(url, json=ping, headers={**headers, "authorization": "Bearer no"})
        bad_host = await raw.post(
            url,
            json=ping,
            headers={**headers, "authorization": f"Bearer {token}", "host": "evil.example:80"},
        )
    assert missing.status_code == 401 and wrong.status_code == 401
    assert bad_host.status_code == 421

    async def session(client: Client) -> str:
        started = await call(client, "start_session", dataset="tiny")
        return started["session_id"]

    auth = {"authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=auth) as first_http,
        httpx2.AsyncClient(headers=auth) as second_http,
        Client(streamable_http_client(url, http_client=first_http)) as first,
        Client(streamable_http_client(url, http_client=second_http)) as second,
    ):
        one, two = await session(first), await session(second)
        assert one != two
        tools = await first.list_tools()
        assert {tool.name for tool in tools.tools} == set(TOOLS)  # every tool, over HTTP


async def test_sigkill_during_training_keeps_the_archive(home: Path, tmp_path: Path) -> None:
    """Kill the server after the first epoch of a 3-epoch training: the earlier candidate is
    intact, the one in flight is failed on reopen, and a new session continues."""
    save_tiny(home, name="bigger", n_samples=6, split_sizes=(4, 1, 1), duration_ms=80.0)
    pid_file = tmp_path / "server.pid"
    wrapper = ("sh", "-c", f'echo $$ > "{pid_file}"; exec "$0" "$@"')
    first_epoch = anyio.Event()

    async def progress(value: float, total: float | None, message: str | None) -> None:
        if not first_epoch.is_set() and "batch" not in (message or ""):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
            first_epoch.set()

    session_id = None
    try:
        async with Client(stdio_params(home, *wrapper)) as client:
            started = await call(client, "start_session", dataset="bigger", anonymise=False)
            session_id = started["session_id"]
            await call(client, "select_reaction", session_id=session_id, reaction="ap")
            await call(client, "select_diffusion", session_id=session_id, template="gcn")
            done = await call(client, "train_candidate", session_id=session_id, epochs=1)
            await call(client, "select_diffusion", session_id=session_id, template="gat")
            with anyio.fail_after(120):
                await client.call_tool(
                    "train_candidate",
                    {"session_id": session_id, "epochs": 3},
                    progress_callback=progress,
                )
    except Exception:  # the connection dies with the server
        pass
    assert first_epoch.is_set() and session_id is not None

    archive_path = home / "archive.duckdb"
    with Archive.open(archive_path) as archive:
        candidates = archive.list_candidates(session_id)
        assert [c.status for c in candidates] == ["ok", "failed"]
        assert candidates[0].candidate_id == done["candidate_id"]
        assert archive.get_weights(done["candidate_id"])
        assert candidates[1].error == INTERRUPTED_ERROR
        assert archive.recovered_candidates == [candidates[1].candidate_id]
        assert len(archive.get_candidate(candidates[1].candidate_id).epochs) >= 1
        assert archive.get_session(session_id).status == "stopped"

    server = build_server(archive_path, compile_training=False)
    try:
        async with Client(server) as client:
            fresh = await call(client, "start_session", dataset="tiny", anonymise=False)
            await call(client, "select_reaction", session_id=fresh["session_id"], reaction="ap")
            await call(
                client,
                "select_diffusion",
                session_id=fresh["session_id"],
                template="laplacian_global",
            )
            result = await call(client, "train_candidate", session_id=fresh["session_id"])
            assert result["status"] == "ok"
    finally:
        server.close()
