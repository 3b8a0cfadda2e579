"""The benchmark's runs: planning, the quick run of the whole table with resume, and workers
that end with the bench process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from leads_bench.config import METHODS, BenchConfig, Run
from leads_bench.harness import planned_runs, run_bench


def test_llm_rows_are_skipped_without_a_provider(tmp_path):
    runs, skipped = planned_runs(BenchConfig(out=tmp_path, seeds=(0, 1), methods=METHODS))
    assert set(skipped) == {"leads-llm", "hdtwingen"}
    assert "--llm" in skipped["hdtwingen"]
    assert len(runs) == 6 * 3 * 2
    assert runs[0].method == "leads-offline"  # the longest runs start first
    with pytest.raises(ValueError, match="unknown method"):
        planned_runs(BenchConfig(out=tmp_path, methods=("physics", "nope")))


def test_quick_bench_runs_the_whole_table_and_resumes(tmp_path: Path, leads_home):
    """The CI run: every method of the paper on the three quick sets; the orderings the paper
    reports hold; a rerun resumes from the stored runs, redoing only a lost one."""
    out = tmp_path / "bench"
    result = run_bench(BenchConfig.quick_defaults(out))
    assert not result.failures, result.failures
    assert set(result.table) == {
        "physics",
        "hybrid-gat",
        "diff-only",
        "react-only",
        "all-neural",
        "leads-offline",
    }
    for check in result.checks:
        assert check.passed, f"{check.name}: {check.detail}"
    assert len(result.checks) == 5
    for entry in result.table.values():
        for per in entry["per_dataset"].values():
            assert per["seeds"] == [0] and per["mse"] > 0
    markdown = result.paths["markdown"].read_text()
    assert "| LEADS (offline policy) |" in markdown and "Not run: LEADS (LLM)" in markdown
    payload = json.loads(result.paths["json"].read_text())
    assert len(payload["runs"]) == 18 and payload["table"]["physics"]["mse_avg"] > 0
    assert result.paths["figure"].stat().st_size > 10_000
    # one run lost (a crash before it was written): only that one is redone
    lost = Run("physics", "rm", 0)
    (out / "runs" / f"{lost.key}.json").unlink()
    started = time.perf_counter()
    again = run_bench(BenchConfig.quick_defaults(out))
    assert time.perf_counter() - started < 60
    assert (
        again.table["physics"]["per_dataset"]["rm"] == result.table["physics"]["per_dataset"]["rm"]
    )


_KILLED_PARENT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from leads_bench.harness import _stop_with_parent

if __name__ == "__main__":
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_stop_with_parent,
                             initargs=(os.getpid(),)) as pool:
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(time.sleep, 120)
        time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_bench_workers_stop_when_the_bench_process_is_killed(tmp_path):
    """A SIGKILLed bench leaves no worker busy with a run nobody will collect."""
    script = tmp_path / "parent.py"
    script.write_text(_KILLED_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        assert _alive(worker)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker), "the worker outlived the killed bench process"
    finally:
        parent.kill()
