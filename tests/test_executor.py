"""The job executors (``leads_server.executor``): job slots that queue excess trainings, the
local executor, settings from flags and environment, and two trainings of one session at once
through the tools (each snapshots its draft; the budget and the archive stay consistent)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from leads_server.app import build_server
from leads_server.cli import build_executor, parse_args
from leads_server.executor import (
    EXECUTOR_ENV,
    MAX_JOBS_ENV,
    ExecutorSettings,
    JobSlots,
    LocalExecutor,
    default_max_jobs,
    make_executor,
)
from leads_server.jobs import Job
from mcp import Client
from server_calls import call, save_tiny

from leads_engine.spec import CandidateSpec

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(os.name != "posix", reason="workers need POSIX"),
]
SPEC = CandidateSpec(reaction="aliev_panfilov", diffusion="laplacian_global", seed=0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny(tmp_path_factory.mktemp("executor")))


async def test_slots_bound_the_jobs_and_queue_the_rest_in_order() -> None:
    slots = JobSlots(2)
    running: list[int] = []
    order: list[str] = []
    events: dict[str, list[dict[str, Any]]] = {}
    release = asyncio.Event()

    async def job(name: str) -> None:
        events[name] = []

        async def on_progress(event: dict[str, Any]) -> None:
            events[name].append(event)

        async with slots.hold(on_progress):
            order.append(name)
            running.append(slots.running)
            await release.wait()

    tasks = [asyncio.create_task(job(n)) for n in "abcd"]
    while slots.waiting < 2:
        await asyncio.sleep(0.01)
    assert slots.running == 2 and slots.free == 0 and order == ["a", "b"]
    # the queued ones heard why they wait: all slots busy, how many ahead of them
    assert events["c"] == [{"phase": "queued", "ahead": 0, "running": 2, "slots": 2}]
    assert events["d"] == [{"phase": "queued", "ahead": 1, "running": 2, "slots": 2}]
    assert events["a"] == events["b"] == []
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c", "d"] and max(running) == 2
    assert slots.running == 0 and slots.waiting == 0 and slots.free == 2


async def test_a_cancelled_waiting_job_leaves_the_line_without_a_slot() -> None:
    slots = JobSlots(1)
    hold = asyncio.Event()

    async def first() -> None:
        async with slots.hold():
            await hold.wait()

    async def second() -> None:
        async with slots.hold():
            raise AssertionError("a cancelled job must never run")

    one = asyncio.create_task(first())
    await asyncio.sleep(0.01)
    two = asyncio.create_task(second())
    await asyncio.sleep(0.01)
    assert slots.waiting == 1
    two.cancel()
    with pytest.raises(asyncio.CancelledError):
        await two
    assert slots.waiting == 0
    hold.set()
    await one
    assert slots.running == 0 and slots.free == 1
    with pytest.raises(ValueError):
        JobSlots(0)


async def test_the_local_executor_queues_a_second_fit_behind_a_busy_slot(
    dataset_path: str,
) -> None:
    executor = LocalExecutor(max_jobs=1)
    job = Job("fit", SPEC.model_dump_json(), dataset_path, epochs=1, compile=False)
    seen: dict[str, list[str]] = {"a": [], "b": []}
    peak = [0]

    def recorder(name: str) -> Any:
        async def on_progress(event: dict[str, Any]) -> None:
            seen[name].append(event["phase"])
            peak[0] = max(peak[0], executor.slots.running)

        return on_progress

    first, second = await asyncio.gather(
        executor.run(job, recorder("a")), executor.run(job, recorder("b"))
    )
    assert seen["a"][0] != "queued" and seen["b"][0] == "queued"
    assert "epoch" in seen["a"] and "epoch" in seen["b"]
    assert peak[0] == 1
    # one slot or two, the same job gives the same numbers
    assert first["summary"]["train_losses"] == second["summary"]["train_losses"]
    assert first["weights"] == second["weights"]
    # light jobs never wait for a slot
    assert await executor.run(Job("ping")) == {"pong": True}


def test_settings_come_from_flags_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EXECUTOR_ENV, raising=False)
    monkeypatch.delenv(MAX_JOBS_ENV, raising=False)
    assert ExecutorSettings.from_env() == ExecutorSettings()
    monkeypatch.setenv(EXECUTOR_ENV, "ray")
    monkeypatch.setenv(MAX_JOBS_ENV, "3")
    settings = ExecutorSettings.from_env()
    assert settings.kind == "ray" and settings.max_jobs == 3
    assert ExecutorSettings.from_env(kind="local", max_jobs=1).kind == "local"
    monkeypatch.setenv(EXECUTOR_ENV, "dask")
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        ExecutorSettings.from_env()
    monkeypatch.delenv(EXECUTOR_ENV)
    executor = build_executor(parse_args(["--max-jobs", "2", "--workers", "spawn"]))
    assert isinstance(executor, LocalExecutor)
    assert executor.describe() == {"executor": "local", "slots": 2, "start_method": "spawn"}
    assert make_executor().slots.capacity == default_max_jobs() >= 1
    with pytest.raises(SystemExit):
        parse_args(["--max-jobs", "0"])


def test_the_ray_executor_without_ray_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    with pytest.raises(RuntimeError, match=r"pip install 'leads\[ray\]'"):
        make_executor(ExecutorSettings(kind="ray"))


async def test_two_trainings_of_one_session_at_once_keep_the_session_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two train_candidate(wait=false) calls of one session with one job slot: each trains the
    draft it was called with, the second waits ('queued'), both end final, and the budget,
    steps and archive agree."""
    home = tmp_path / "home"
    monkeypatch.setenv("LEADS_HOME", str(home))
    save_tiny(home)
    server = build_server(
        home / "archive.duckdb", compile_training=False, executor=LocalExecutor(max_jobs=1)
    )
    try:
        async with Client(server) as client:
            session = (
                await call(
                    client,
                    "start_session",
                    dataset="tiny",
                    budget=4,
                    anonymise=False,
                    epochs=1,
                )
            )["session_id"]
            started = []
            for reaction in ("aliev_panfilov", "mitchell_schaeffer"):
                await call(client, "select_reaction", session_id=session, reaction=reaction)
                await call(
                    client, "select_diffusion", session_id=session, template="laplacian_global"
                )
                begun = await call(client, "train_candidate", session_id=session, wait=False)
                started.append(begun)
            assert [s["status"] for s in started] == ["training", "training"]
            assert started[1]["budget_left"] == 2 and started[1]["steps_used"] == 2
            second = await call(
                client, "wait_candidate", candidate_id=started[1]["candidate_id"], timeout_s=0
            )
            if not second["done"]:  # it waits for the first one's slot
                assert "queued" in second["message"] or "epoch" in second["message"]
            results = []
            for begun in started:
                while True:
                    answer = await call(
                        client, "wait_candidate", candidate_id=begun["candidate_id"], timeout_s=30
                    )
                    if answer["done"]:
                        results.append(answer["result"])
                        break
            assert [r["status"] for r in results] == ["ok", "ok"]
            assert [r["reaction"] for r in results] == ["aliev_panfilov", "mitchell_schaeffer"]
            rows = await call(
                client,
                "query_archive",
                sql="SELECT reaction, status FROM candidates ORDER BY created_at",
            )
            assert rows["rows"] == [["aliev_panfilov", "ok"], ["mitchell_schaeffer", "ok"]]
            content = (await client.read_resource(f"session://{session}/summary")).contents[0]
            summary = json.loads(content.text)
            assert summary["budget_left"] == 2 and summary["steps_used"] == 2
            assert server.service.training == set()
    finally:
        server.close()
