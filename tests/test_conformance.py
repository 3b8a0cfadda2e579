"""The MCP project's conformance suite (``@modelcontextprotocol/conformance``, server scenarios)
against a real ``leads-server`` over streamable HTTP on 127.0.0.1.

Every scenario that applies to a server without the suite's own test fixtures (tools, resources
and prompts named ``test_*`` / ``test://...``) must pass. The suite comes from npm through
``npx``; without ``npx`` or when it cannot be installed (offline) the test is skipped with the
reason. Version 0.1.13 is pinned: later ones need Node 22 (``fs.globSync``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from server_calls import save_tiny

SUITE = "@modelcontextprotocol/conformance@0.1.13"
#: scenarios that need no fixture of the suite's own
APPLICABLE = (
    "server-initialize",
    "ping",
    "logging-set-level",
    "completion-complete",
    "tools-list",
    "tools-call-error",
    "server-sse-multiple-streams",
    "resources-list",
    "resources-subscribe",
    "resources-unsubscribe",
    "prompts-list",
    "dns-rebinding-protection",
)


def _npx_suite() -> list[str]:
    """The command that runs the suite, or a skip saying why it cannot run here."""
    npx = shutil.which("npx")
    if npx is None:
        pytest.skip("npx is not installed: the conformance suite comes from npm")
    try:
        probe = subprocess.run(
            [npx, "-y", SUITE, "--help"], capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npx could not install {SUITE} within 300 s (offline?)")
    if probe.returncode != 0:
        pytest.skip(f"npx could not run {SUITE}: {probe.stderr.strip()[-300:]}")
    return [npx, "-y", SUITE]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"leads-server exited: {process.stderr.read()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError("leads-server did not listen in time")


def test_the_conformance_scenarios_pass_over_streamable_http(tmp_path: Path) -> None:
    suite = _npx_suite()
    home = tmp_path / "home"
    save_tiny(home)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "leads_server.cli", "--no-compile", "--transport", "http"]
        + ["--port", str(port)],
        env={**os.environ, "LEADS_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_listening(port, server)
        results = {}
        for scenario in APPLICABLE:
            run = subprocess.run(
                [*suite, "server", "--url", f"http://127.0.0.1:{port}/mcp"]
                + ["--scenario", scenario],
                capture_output=True,
                text=True,
                timeout=300,
            )
            passed = re.search(r"Passed: (\d+)/(\d+), (\d+) failed", run.stdout)
            assert passed, run.stdout[-2000:] + run.stderr[-2000:]
            results[scenario] = (int(passed.group(1)), int(passed.group(3)))
        failed = {name: counts for name, counts in results.items() if counts[1] or not counts[0]}
        assert not failed, failed
    finally:
        server.terminate()
        server.wait(timeout=60)
