"""A small soak run (``benchmarks/soak.py``): three MCP clients at once against the real
``leads-server`` over streamable HTTP on 127.0.0.1, then the archive file as the stopped server
left it. Load-tolerant: no latency or throughput assertion, only a generous overall bound."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import duckdb
import pytest

pytestmark = pytest.mark.anyio

#: The overall bound of the run (seconds); the run itself stops at its own time bound first.
SOAK_SECONDS = 300.0
#: A generous bound of the server process's resident memory.
RSS_LIMIT = 3 * 1024**3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def load_soak() -> ModuleType:
    path = Path(__file__).parents[1] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("leads_soak_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


async def test_concurrent_clients_leave_every_candidate_final(tmp_path: Path) -> None:
    soak = load_soak()
    home = tmp_path / "leads_home"
    started = time.monotonic()
    report = await soak.run_soak(3, 30, SOAK_SECONDS, 0, home)
    assert time.monotonic() - started < SOAK_SECONDS + 2 * soak.STOP_SECONDS + soak.START_SECONDS
    ledger = report.ledger
    assert report.problems == [], "\n".join(report.lines())
    assert ledger.errors == [], ledger.errors
    assert report.exit_code == 0
    assert report.total_calls == 30  # the time bound did not cut the run short
    assert len(ledger.sessions) == 3 and ledger.trained
    for tool in ("select_reaction", "select_diffusion", "train_candidate", "query_archive"):
        assert ledger.calls[tool] >= 1, ledger.calls
    assert report.rss_server and max(report.rss_server) < RSS_LIMIT

    # the archive file itself, read-only, as the server left it (the check above opened it
    # with recovery: here nothing may have needed recovering)
    con = duckdb.connect(str(home / "archive.duckdb"), read_only=True)
    try:
        rows = dict(con.execute("SELECT candidate_id, status FROM candidates").fetchall())
        epochs = con.execute(
            "SELECT candidate_id, count(*), min(epoch), max(epoch) FROM epochs GROUP BY 1"
        ).fetchall()
    finally:
        con.close()
    assert "pending" not in rows.values()
    assert rows == {cid: seen.status for cid, seen in ledger.trained.items()}
    for candidate_id, count, first, last in epochs:
        assert (count, first, last) == (1, 1, 1), candidate_id
    assert {cid for cid, *_ in epochs} >= {cid for cid, s in rows.items() if s == "ok"}
