"""The server's jobs (``leads_server.jobs``): what fit/evaluate/count jobs do in a worker,
run through the engine's one process runner."""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import torch
from leads_server.jobs import (
    CPU_SECONDS_PER_EPOCH,
    Job,
    JobLimits,
    WorkerError,
    WorkerPool,
    _describe_exit,
    sandbox_available,
)

from leads_engine.diffusion import template_source
from leads_engine.generator import BenchmarkConfig, generate_benchmark
from leads_engine.heart_mesh import make_lv_mesh
from leads_engine.hybrid import HybridModel
from leads_engine.sandbox import exit_cause
from leads_engine.spec import CandidateSpec, ResidualSpec

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
    """A 200-node, 4-sample, 40 ms data set (about 0.1 s per training epoch)."""
    data = generate_benchmark(
        BenchmarkConfig(reaction="ap", n_samples=4, split_sizes=(2, 1, 1), duration_ms=40.0),
        mesh=make_lv_mesh(200),
        name="tiny",
    )
    return str(data.save(tmp_path_factory.mktemp("jobs") / "tiny.npz"))


def fit_job(path: str, epochs: int, spec: CandidateSpec = SPEC) -> Job:
    return Job("fit", spec.model_dump_json(), path, epochs=epochs, compile=False)


def worker_pids() -> list[int]:
    """This test process's job workers: session leaders whose parent (the fork server) is our
    child."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parent = int(fields[1])
            grandparent = int(Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if grandparent == os.getpid() and int(fields[3]) == int(entry.name):
            found.append(int(entry.name))
    return found


def gone(pid: int, seconds: float = 5.0) -> bool:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    return False


def test_exit_codes_are_described_from_the_runners_table() -> None:
    assert "CPU-time limit" in _describe_exit(-signal.SIGXCPU)
    assert "SIGKILL" in _describe_exit(-signal.SIGKILL)
    assert _describe_exit(3) == "exit code 3"
    assert _describe_exit(-signal.SIGSEGV) == exit_cause(-signal.SIGSEGV).message
    assert CPU_SECONDS_PER_EPOCH * 10 > 120  # a 10-epoch fine-tune gets more than the default
    assert sandbox_available()


async def test_progress_events_arrive_and_the_weights_come_back(dataset_path: str) -> None:
    events: list[dict[str, Any]] = []

    async def on_progress(event: dict[str, Any]) -> None:
        events.append(event)

    payload = await WorkerPool().run(fit_job(dataset_path, 2), on_progress)
    epochs = [e for e in events if e["phase"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(e["epochs"] == 2 and e["epoch_seconds"] > 0 for e in epochs)
    batches = [e for e in events if e["phase"] == "batch"]  # 2 training samples: >= 1 batch
    assert batches and all(1 <= e["batch"] <= e["batches"] for e in batches)
    assert {e["epoch"] for e in batches} == {1, 2}
    assert len(payload["summary"]["train_losses"]) == 2
    state = torch.load(io.BytesIO(payload["weights"]), weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())


async def test_a_fit_job_starts_the_shared_parts_from_its_warm_start(dataset_path: str) -> None:
    """The parent's conductivity field (far from the fresh zeros) is where the child's starts;
    a parent from another mesh is refused with the cause."""
    parent = CandidateSpec(reaction="aliev_panfilov", diffusion="laplacian_nodewise")
    state = {k: v.clone() for k, v in HybridModel.from_spec(parent, 200).state_dict().items()}
    state["diffusion.raw_log_factor"] = torch.full((200,), 0.7)
    child = parent.model_copy(update={"reaction_residual": ResidualSpec(hidden=8, layers=1)})
    job = dataclasses.replace(
        fit_job(dataset_path, 1, child), warm_start=((parent.model_dump_json(), _bytes(state)),)
    )
    payload = await WorkerPool().run(job)
    trained = torch.load(io.BytesIO(payload["weights"]), weights_only=True)
    field = trained["diffusion.raw_log_factor"]
    assert float(field.mean()) == pytest.approx(0.7, abs=0.1)  # cold: near 0
    assert any(key.startswith("reaction.mlp.") for key in trained)

    # edited code trains in the locked-down worker: the warm start works there too
    edited = child.model_copy(update={"diffusion_source": template_source("laplacian_nodewise")})
    edited_parent = parent.model_copy(update={"diffusion_source": edited.diffusion_source})
    edited_job = dataclasses.replace(
        fit_job(dataset_path, 1, edited),
        warm_start=((edited_parent.model_dump_json(), _bytes(state)),),
    )
    payload = await WorkerPool().run(edited_job)
    trained = torch.load(io.BytesIO(payload["weights"]), weights_only=True)
    assert float(trained["diffusion.raw_log_factor"].mean()) == pytest.approx(0.7, abs=0.1)

    other_mesh = HybridModel.from_spec(parent, 50).state_dict()
    job = dataclasses.replace(job, warm_start=((parent.model_dump_json(), _bytes(other_mesh)),))
    with pytest.raises(WorkerError, match="WarmStartError.*another mesh"):
        await WorkerPool().run(job)


def _bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


async def test_count_and_evaluate_jobs(dataset_path: str) -> None:
    pool = WorkerPool()
    assert await pool.run(Job("ping")) == {"pong": True}
    edited = SPEC.model_copy(update={"diffusion_source": template_source("laplacian_global")})
    counted = await pool.run(Job("count", edited.model_dump_json(), dataset_path))
    assert counted["parameter_count"] >= 1
    evaluated = await pool.run(Job("evaluate", SPEC.model_dump_json(), dataset_path, split="val"))
    assert len(evaluated["at_true"]) == len(evaluated["at_pred"]) == 200
    assert evaluated["summary"]["split"] == "val" and evaluated["summary"]["mse"] >= 0


async def test_a_failing_job_reports_its_traceback(dataset_path: str) -> None:
    with pytest.raises(WorkerError) as info:
        await WorkerPool().run(Job("fit", "{not json", dataset_path))
    assert str(info.value).startswith("ValidationError")
    assert "Traceback (most recent call last)" in str(info.value)


async def test_a_worker_killed_by_a_signal_gives_the_shared_message(dataset_path: str) -> None:
    killed: list[int] = []

    async def kill_on_first_epoch(event: dict[str, Any]) -> None:
        if not killed:
            for pid in worker_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    with pytest.raises(WorkerError) as info:
        await WorkerPool().run(fit_job(dataset_path, 200), kill_on_first_epoch)
    assert killed
    message = exit_cause(-signal.SIGKILL).message
    assert str(info.value) == f"the worker process died ({message}) before it reported a result"


async def test_cancellation_terminates_the_worker(dataset_path: str) -> None:
    running: list[int] = []

    async def note_worker(event: dict[str, Any]) -> None:
        running.extend(worker_pids())
        scope.cancel()

    with anyio.CancelScope() as scope:
        await WorkerPool().run(fit_job(dataset_path, 200), note_worker)
    assert scope.cancelled_caught
    assert running and all(gone(pid) for pid in running)


def test_job_limits_scale_with_the_data_set_and_the_epochs(dataset_path: str) -> None:
    from leads_engine.dataset import load_dataset

    tiny = load_dataset(dataset_path)
    expected = JobLimits.epoch_seconds(tiny)
    assert 0 < expected < 1  # 3 beats x 200 nodes x 20 frames x 5 steps
    assert JobLimits().seconds(tiny, 3) == 300  # the floor
    assert JobLimits().seconds(tiny, 1) == 300
    assert JobLimits().seconds(tiny, 12) == 1200  # the floor covers 3 epochs
    tight = JobLimits(factor=5, floor_s=1e-3)
    assert tight.seconds(tiny, 10) >= 5 * 10 * expected
    assert tight.seconds(tiny, 20) >= 2 * tight.seconds(tiny, 10) - 1
    with pytest.raises(ValueError):
        JobLimits(factor=0)


async def test_a_job_past_its_wall_clock_limit_is_stopped(dataset_path: str) -> None:
    line = "        return self.conductivity * graph.edge_weight\n"
    loop = "        while u.numel() > 0:\n            u = u + 0.0\n"
    looping = template_source("laplacian_global").replace(line, loop + line)
    spec = SPEC.model_copy(update={"diffusion_source": looping})
    job = Job("fit", spec.model_dump_json(), dataset_path, epochs=3, compile=False, timeout_s=2.0)
    pool = WorkerPool()
    with pytest.raises(WorkerError) as info:
        await pool.run(job)
    assert str(info.value).startswith("wall-clock limit of 2 s for 3 epochs reached")
    assert "--job-timeout-factor" in str(info.value)
    assert pool.kill_all() == 0  # nothing left running


async def test_kill_all_stops_the_running_workers(dataset_path: str) -> None:
    pool = WorkerPool()
    killed: list[int] = []

    async def kill_on_first_epoch(event: dict[str, Any]) -> None:
        if not killed:
            killed.append(pool.kill_all())

    with pytest.raises(WorkerError) as info:
        await pool.run(fit_job(dataset_path, 200), kill_on_first_epoch)
    assert killed == [1]
    assert "SIGKILL" in str(info.value)
