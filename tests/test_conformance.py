"""The MCP project's conformance suite (``@modelcontextprotocol/conformance``, server scenarios)
against a real ``leads-server`` over streamable HTTP on 127.0.0.1.

Every scenario that applies to a server without the suite's own test fixtures (tools, resources
and prompts named ``test_*`` / ``test://...``) must pass. The suite comes from npm through
``npx``; without ``npx`` or when it cannot be installed (offline) the test is skipped with the
reason. Version 0.1.13 is pinned: later ones need Node 22 (``fs.globSync``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from http_server import http_server
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


def test_the_conformance_scenarios_pass_over_streamable_http(tmp_path: Path) -> None:
    suite = _npx_suite()
    home = tmp_path / "home"
    save_tiny(home)
    with http_server(home) as url:
        results = {}
        for scenario in APPLICABLE:
            run = subprocess.run(
                [*suite, "server", "--url", url] + ["--scenario", scenario],
                capture_output=True,
                text=True,
                timeout=300,
            )
            passed = re.search(r"Passed: (\d+)/(\d+), (\d+) failed", run.stdout)
            assert passed, run.stdout[-2000:] + run.stderr[-2000:]
            results[scenario] = (int(passed.group(1)), int(passed.group(3)))
        failed = {name: counts for name, counts in results.items() if counts[1] or not counts[0]}
        assert not failed, failed
