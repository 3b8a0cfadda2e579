"""The ``ray`` executor on a real local Ray cluster (127.0.0.1, 2 CPUs), started and stopped
here: the same numbers as the local executor, the sandbox inside the Ray worker, data sets
through the object store or a shared folder, and a Ray worker killed mid-training leaving the
candidate ``failed`` with a reason and nothing pending."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from leads_server.app import build_server  # noqa: E402
from leads_server.cli import build_executor, parse_args  # noqa: E402
from leads_server.executor import LocalExecutor  # noqa: E402
from leads_server.jobs import Job, WorkerError  # noqa: E402
from leads_server.ray_executor import RayExecutor, RayResources  # noqa: E402
from mcp import Client  # noqa: E402
from server_calls import call, save_tiny  # noqa: E402

from leads_engine.diffusion import template_source  # noqa: E402
from leads_engine.spec import CandidateSpec  # noqa: E402

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(os.name != "posix", reason="workers need POSIX"),
]
SPEC = CandidateSpec(reaction="aliev_panfilov", diffusion="laplacian_global", seed=3)
#: the name Ray gives a worker process while it runs a job (its process title)
TASK_TITLE = "ray::ray_job"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A Ray instance of this test process: 2 CPUs, 127.0.0.1, no dashboard (start-up under
    load can take tens of seconds: no limit here)."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny(tmp_path_factory.mktemp("ray")))


def fit(path: str, epochs: int = 2, spec: CandidateSpec = SPEC) -> Job:
    return Job("fit", spec.model_dump_json(), path, epochs=epochs, compile=False)


def task_pids() -> list[int]:
    """Ray worker processes running a job now."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if cmdline and cmdline[0].startswith(TASK_TITLE):
            found.append(process.pid)
    return found


async def test_the_same_spec_and_seed_give_the_same_numbers_on_ray_and_local(
    cluster: None, dataset_path: str
) -> None:
    local, remote = LocalExecutor(), RayExecutor()
    assert remote.slots.capacity == 2  # the cluster's 2 CPUs, one per job
    events: list[dict[str, Any]] = []

    async def on_progress(event: dict[str, Any]) -> None:
        events.append(event)

    on_local = await local.run(fit(dataset_path))
    on_ray = await remote.run(fit(dataset_path), on_progress)
    assert on_ray["summary"]["train_losses"] == on_local["summary"]["train_losses"]
    assert on_ray["summary"]["val_losses"] == on_local["summary"]["val_losses"]
    assert on_ray["summary"]["reaction_parameters"] == on_local["summary"]["reaction_parameters"]
    assert on_ray["weights"] == on_local["weights"]  # bit for bit
    # progress streams back while the task runs: where it runs, then batches and epochs
    phases = [e["phase"] for e in events]
    assert phases[0] == "placed" and events[0]["executor"] == "ray"
    assert phases.count("epoch") == 2 and "batch" in phases

    evaluate = Job(
        "evaluate",
        SPEC.model_dump_json(),
        dataset_path,
        initial_weights=on_local["weights"],
        split="test",
        compile=False,
    )
    scored_local, scored_ray = await local.run(evaluate), await remote.run(evaluate)
    assert scored_ray["summary"]["mse"] == scored_local["summary"]["mse"]
    # nodes that never activate are NaN in both (NaN != NaN, hence numpy's comparison)
    np.testing.assert_array_equal(
        np.array(scored_ray["at_pred"], dtype=float), np.array(scored_local["at_pred"], dtype=float)
    )


async def test_edited_code_keeps_its_sandbox_inside_the_ray_worker(
    cluster: None, dataset_path: str, tmp_path: Path
) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("still here")
    line = "        return self.conductivity * graph.edge_weight\n"
    attack = f"        torch.os.remove({str(canary)!r})\n"
    hostile = template_source("laplacian_global").replace(line, attack + line)
    assert hostile != template_source("laplacian_global")
    spec = SPEC.model_copy(update={"diffusion_source": hostile})
    executor = RayExecutor()
    with pytest.raises(WorkerError) as info:
        await executor.run(fit(dataset_path, 1, spec))
    assert "remove" in str(info.value)
    assert canary.read_text() == "still here"
    # benign edited code still trains there, locked down
    edited = SPEC.model_copy(update={"diffusion_source": template_source("laplacian_global")})
    payload = await executor.run(fit(dataset_path, 1, edited))
    assert payload["summary"]["status"] == "ok"


async def test_data_sets_travel_by_object_store_or_shared_folder(
    cluster: None, dataset_path: str, tmp_path: Path
) -> None:
    stored = RayExecutor()
    stored.warm_up()  # one ping per slot starts the Ray workers and their fork servers
    warmed = [[ray.get(reference) for reference in generator] for generator in stored._warm]
    assert len(warmed) == 2
    assert all(w[0]["kind"] == "placed" and w[-1]["value"] == {"pong": True} for w in warmed)
    path, data = stored._dataset(dataset_path)
    assert path == "" and data is not None
    assert stored._dataset(dataset_path)[1] is data  # put once per file version
    shared = RayExecutor(
        shared_path=str(Path(dataset_path).parent),
        resources=RayResources(num_cpus=1, memory_gb=0.5),
        max_jobs=1,
    )
    assert shared._dataset(dataset_path) == (str(Path(dataset_path).resolve()), None)
    assert shared.describe()["per_job"] == {"num_cpus": 1, "num_gpus": 0.0, "memory": 2**29}
    assert shared.slots.capacity == 1
    through_store = await stored.run(fit(dataset_path, 1))
    in_place = await shared.run(fit(dataset_path, 1))
    assert in_place["weights"] == through_store["weights"]
    with pytest.raises(ValueError):
        RayResources(num_cpus=0)
    # leads-server's flags build the same executor
    flags = ["--executor", "ray", "--ray-cpus-per-job", "2", "--ray-memory-gb", "1"]
    from_flags = build_executor(parse_args([*flags, "--ray-retries", "1"]))
    assert isinstance(from_flags, RayExecutor) and from_flags.retries == 1
    assert from_flags.describe()["per_job"] == {"num_cpus": 2.0, "num_gpus": 0.0, "memory": 2**30}
    assert from_flags.slots.capacity == 1  # 2 CPUs, 2 per job


async def test_a_ray_worker_killed_mid_training_fails_the_candidate_with_a_reason(
    cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("LEADS_HOME", str(home))
    save_tiny(home)
    server = build_server(home / "archive.duckdb", compile_training=False, executor=RayExecutor())
    killed: list[int] = []

    async def kill_the_ray_worker(value: float, total: float | None, message: str | None) -> None:
        if killed or "batch" not in (message or ""):
            return
        for pid in task_pids():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    try:
        async with Client(server) as client:
            session = (
                await call(
                    client, "start_session", dataset="tiny", budget=3, anonymise=False, epochs=1
                )
            )["session_id"]
            await call(client, "select_reaction", session_id=session, reaction="aliev_panfilov")
            await call(client, "select_diffusion", session_id=session, template="laplacian_global")
            started = time.monotonic()
            result = await client.call_tool(
                "train_candidate",
                {"session_id": session, "epochs": 100},
                progress_callback=kill_the_ray_worker,
            )
            assert not result.is_error, result.content[0].text
            outcome = result.structured_content
            assert killed, "no Ray worker was running the job"
            assert outcome["status"] == "failed"
            assert "Ray" in outcome["error"] and "died" in outcome["error"]
            assert time.monotonic() - started < 600  # the failure is reported, not waited out
            rows = await call(client, "query_archive", sql="SELECT status, error FROM candidates")
            assert [row[0] for row in rows["rows"]] == ["failed"]
            assert "Ray" in rows["rows"][0][1]
            assert server.service.training == set()  # nothing pending
            assert server.service.pool.slots.running == 0
            # the cluster goes on: the next candidate trains
            await call(
                client, "select_diffusion", session_id=session, template="laplacian_nodewise"
            )
            again = await call(client, "train_candidate", session_id=session)
            assert again["status"] == "ok"
    finally:
        server.close()


async def test_with_one_retry_a_killed_ray_worker_reruns_the_job_to_the_same_result(
    cluster: None, dataset_path: str
) -> None:
    executor = RayExecutor(retries=1)
    reference = await executor.run(fit(dataset_path, 3))
    killed: list[int] = []
    phases: list[str] = []

    async def kill_once(event: dict[str, Any]) -> None:
        phases.append(event["phase"])
        if not killed and event["phase"] == "batch":
            for pid in task_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    rerun = await executor.run(fit(dataset_path, 3), kill_once)
    assert killed
    # the retry trains from the start with the same seed: the same numbers; its progress
    # events already delivered by the first attempt are not delivered twice
    assert rerun["weights"] == reference["weights"]
    assert phases.count("epoch") == 3
