"""``leads-agent cohort``: the report's spread statistics, and a cohort over the bundled server
that is killed mid-way, resumed to the end, then extended (finished data sets skipped)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
from leads_agent.cohort import CohortState, CohortTable, MemberView
from leads_agent.cohort_report import cohort_markdown, cohort_summary, quantile, spread
from leads_agent.state import Candidate
from rich.console import Console
from server_calls import save_tiny

psutil = pytest.importorskip("psutil")
pytestmark = pytest.mark.anyio

COHORT = "trial"
BUDGET = 4


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_quantiles_and_spread_match_numpy() -> None:
    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    for q in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert quantile(values, q) == pytest.approx(np.percentile(values, 100 * q))
    stats = spread([*values, None, float("nan")])
    assert stats["n"] == 6 and stats["median"] == pytest.approx(np.median(values))
    assert stats["iqr"] == pytest.approx(np.percentile(values, 75) - np.percentile(values, 25))
    assert stats["min"] == 1.0 and stats["max"] == 9.0
    assert spread([None]) == {"n": 0}
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_the_report_has_a_row_per_data_set_and_the_spread() -> None:
    entries = [
        {
            "dataset": "p0",
            "status": "done",
            "session_id": "s-1",
            "structure": "aliev_panfilov + gcn",
            "test_mse": 1e-4,
            "at_mae_ms": 0.5,
            "wall_seconds": 30.0,
        },
        {
            "dataset": "p1",
            "status": "done",
            "session_id": "s-2",
            "structure": "aliev_panfilov + gcn",
            "test_mse": 3e-4,
            "at_mae_ms": 1.5,
            "wall_seconds": 50.0,
        },
        {"dataset": "p2", "status": "failed", "error": "cannot load data set 'p2'"},
    ]
    summary = cohort_summary(entries, 61.0)
    assert summary["completed"] == 2 and summary["datasets"] == 3
    assert summary["spread"]["test_mse"]["median"] == pytest.approx(2e-4)
    assert summary["spread"]["wall_seconds"]["iqr"] == pytest.approx(10.0)
    assert summary["structures"] == {"aliev_panfilov + gcn": 2}
    text = cohort_markdown(summary, "trial")
    assert "2 of 3 data sets completed" in text
    assert "| p1 | done | s-2 | aliev_panfilov + gcn | 0.0003 | 1.5 | 50 |" in text
    assert "| test_mse | 2 | 0.0002 |" in text
    assert "- p2: cannot load data set 'p2'" in text


async def test_the_live_table_shows_each_data_set_and_saves_sessions_at_once(
    tmp_path: Path,
) -> None:
    console = Console(file=io.StringIO(), width=160, force_terminal=False)
    state = CohortState(tmp_path / "c", ["p0", "p1"])
    table = CohortTable(state, budget=4, console=console)
    with table:
        view = MemberView("p0", state, table)
        table.views["p0"] = view
        view.session("s-123", {})
        # the session id is on disk before any training: a killed cohort resumes it
        assert json.loads((tmp_path / "c" / "state.json").read_text())["datasets"]["p0"] == {
            "dataset": "p0",
            "status": "running",
            "session_id": "s-123",
        }
        view.thought(2, "screen the next reaction")
        ok = Candidate("c-1", "select", "aliev_panfilov", "laplacian_global", "ok", val_loss=0.01)
        view.candidates([ok])
        await view.progress(1.0, 3.0, "c-1 queued: all 2 job slot(s) busy")
        state.update("p1", status="done", structure="aliev_panfilov + gcn", test_mse=2e-4)
        table.refresh()
    text = console.file.getvalue()
    assert "p0" in text and "s-123" in text and "2/4" in text and "queued" in text
    assert "aliev_panfilov + laplacian_global (0.01)" in text
    assert "aliev_panfilov + gcn" in text and "0.0002" in text
    # a second cohort object over the same folder keeps what was saved
    again = CohortState(tmp_path / "c", ["p0", "p1", "p2"])
    assert again.entries["p1"]["status"] == "done" and again.entries["p2"]["status"] == "pending"


def _cohort(home: Path, *datasets: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "leads_agent.cli",
        "cohort",
        "--datasets",
        *datasets,
        "--name",
        COHORT,
        "--budget",
        str(BUDGET),
        "--epochs",
        "1",
        "--finetune",
        "1",
        "--no-compile",
        "--max-jobs",
        "2",
        "--quiet",
    ]


def _state(home: Path) -> dict:
    path = home / "cohorts" / COHORT / "state.json"
    return json.loads(path.read_text())["datasets"] if path.exists() else {}


def _server_of(client: subprocess.Popen) -> list[psutil.Process]:
    children = psutil.Process(client.pid).children(recursive=True)
    return [p for p in children if "leads_server.cli" in " ".join(p.cmdline())]


def _candidates(home: Path) -> list[tuple[str, str, str]]:
    with duckdb.connect(str(home / "archive.duckdb"), read_only=True) as db:
        return db.execute("SELECT session_id, operation, status FROM candidates").fetchall()


def test_a_cohort_resumes_after_its_server_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("LEADS_HOME", str(home))
    for index, name in enumerate(("p0", "p1", "p2")):
        save_tiny(home, name, seed=index)
    env = {**os.environ, "LEADS_HOME": str(home)}

    # 1. start two discoveries, kill the server once both sessions train
    client = subprocess.Popen(_cohort(home, "p0", "p1"), env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and client.poll() is None:
        state = _state(home)
        if len(state) == 2 and all(e.get("session_id") for e in state.values()):
            break
        time.sleep(0.2)
    time.sleep(1.0)  # the screening batch is training
    servers = _server_of(client)
    assert servers and client.poll() is None, "the cohort ended before its server was killed"
    for process in servers:
        process.send_signal(signal.SIGKILL)
    _, stderr = client.communicate(timeout=300)
    assert client.returncode == 1, stderr.decode()
    assert "run the same command again" in stderr.decode()
    first = _state(home)
    sessions = {name: entry["session_id"] for name, entry in first.items()}
    assert all(sessions.values()) and all(e["status"] != "done" for e in first.values())

    # 2. the same command resumes both sessions to their budget
    done = subprocess.run(_cohort(home, "p0", "p1"), env=env, capture_output=True, timeout=900)
    assert done.returncode == 0, done.stderr.decode()
    second = _state(home)
    assert {name: entry["session_id"] for name, entry in second.items()} == sessions
    assert all(e["status"] == "done" and e["test_mse"] > 0 for e in second.values())
    rows = _candidates(home)
    # nothing left pending: the candidates the dead server left training are failed
    # (interrupted) and count as steps; each search went on within its budget to a fine-tuning
    assert all(status not in ("pending", "running") for _, _, status in rows)
    assert any(status == "failed" for _, _, status in rows)
    for session in sessions.values():
        searched = [op for sid, op, _ in rows if sid == session and op != "finetune"]
        assert 2 <= len(searched) <= BUDGET
        assert ("finetune", "ok") in [(op, st) for sid, op, st in rows if sid == session]
    before = {s: sum(1 for r in rows if r[0] == s) for s in sessions.values()}

    # 3. a larger cohort under the same name: the finished ones are skipped, a missing data set
    #    fails with its reason (exit 1), the new one runs
    more = subprocess.run(
        [*_cohort(home, "p0", "p1", "p2", "missing"), "--json"],
        env=env,
        capture_output=True,
        timeout=900,
    )
    assert more.returncode == 1, more.stderr.decode()
    report = json.loads(more.stdout)
    by_name = {e["dataset"]: e for e in report["entries"]}
    assert by_name["p2"]["status"] == "done" and by_name["p2"]["test_mse"] > 0
    assert by_name["missing"]["status"] == "failed" and "missing" in by_name["missing"]["error"]
    assert report["completed"] == 3 and report["spread"]["test_mse"]["n"] == 3
    rows = _candidates(home)
    assert {s: sum(1 for r in rows if r[0] == s) for s in sessions.values()} == before
    folder = home / "cohorts" / COHORT
    assert (folder / "cohort.md").exists() and (folder / "sessions" / "p2" / "report.md").exists()


def test_discover_takes_a_parallel_screening_width_of_at_least_one(capsys) -> None:
    from leads_agent.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["discover", "--parallel", "1"]).parallel == 1
    assert parser.parse_args(["discover"]).parallel == 8
    with pytest.raises(SystemExit):
        parser.parse_args(["discover", "--parallel", "0"])
    assert "must be at least 1" in capsys.readouterr().err
