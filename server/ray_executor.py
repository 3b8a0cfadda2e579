"""The ``ray`` executor: every training, fine-tuning and evaluation job is a Ray task.

``leads-server --executor ray --ray-address ADDR`` (or ``LEADS_EXECUTOR=ray``,
``LEADS_RAY_ADDRESS``) connects to a Ray cluster; without an address it starts a local one.
Ray is imported lazily (``pip install 'leads[ray]'``): the default install never needs it.

What a job carries and where it runs:

* each job is one task with declared resources (:class:`RayResources`: CPUs, GPUs, memory), so
  Ray places it on a node with room for it; at most ``max_jobs`` heavy jobs are handed to the
  cluster at once (default: the cluster's CPUs over the CPUs per job), the others wait in the
  server's line (progress ``queued``);
* the data set travels through Ray's object store (put once per file version, cached by the
  server; a node writes it once to its temporary folder), or, with ``shared_path``, is read
  from a folder every node mounts (NFS, Lustre) when it lies under it;
* inside the task runs the very worker-process runner of the local executor
  (:class:`leads_engine.sandbox.Worker` with :func:`leads_server.jobs._run_job`): a fresh child
  process with one torch thread that locks itself down before compiling edited code; the Ray
  worker only relays its progress and result. The sandbox therefore holds on a Ray node
  exactly as on the server's machine, and the same spec and seed give the same numbers;
* the task is a streaming generator: progress events arrive while it runs, then one result
  (summary, curves, weights as ``torch.save`` bytes) that returns to the server, the only
  writer of the archive.

Failures: a job that fails, times out or whose sandboxed worker dies comes back as a
:class:`~leads_server.jobs.WorkerError` with the runner's message. A Ray worker or node that
dies mid-task is retried ``retries`` times (default 0: the candidate ends ``failed`` with the
reason; a retried job starts its training again from the beginning). Cancelling the awaiting
task (client cancellation, server stop) force-cancels the Ray task, which kills its worker and
the sandboxed child with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .executor import HEAVY_JOBS, JobSlots
from .jobs import Job, ProgressHandler, WorkerError

#: What the server asks when ray is missing.
RAY_MISSING = (
    "the ray executor needs the ray package: pip install 'leads[ray]' (or run leads-server "
    "with --executor local, the default)"
)
#: Folder (under the node's temporary folder) where data sets from the object store land.
DATASET_CACHE = "leads-ray-datasets"


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`RuntimeError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(RAY_MISSING) from exc
    return ray


@dataclass(frozen=True)
class RayResources:
    """What one job asks the cluster for. A candidate trains with one torch thread, so one CPU
    is what it uses; ``memory_gb`` reserves memory for placement (None: no reservation);
    ``num_gpus`` > 0 places jobs on GPU nodes (the trainer uses CUDA when it sees a GPU)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_gb: float | None = None

    def __post_init__(self) -> None:
        if self.num_cpus <= 0 or self.num_gpus < 0:
            raise ValueError("a Ray job needs a positive number of CPUs and no negative GPUs")
        if self.memory_gb is not None and self.memory_gb <= 0:
            raise ValueError("a Ray job's memory reservation must be positive")

    def options(self) -> dict[str, Any]:
        """The task options Ray takes (``memory`` in bytes)."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_gb is not None:
            options["memory"] = int(self.memory_gb * 1024**3)
        return options


# ---------------------------------------------------------------------------- on the Ray node


def _materialise(data: bytes) -> str:
    """Write a data set from the object store once per node (content-addressed); its path."""
    digest = hashlib.sha256(data).hexdigest()[:24]
    folder = Path(tempfile.gettempdir()) / DATASET_CACHE
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.npz"
    if not path.exists():
        partial = folder / f".{digest}.{os.getpid()}.part"
        partial.write_bytes(data)
        os.replace(partial, path)
    return str(path)


def ray_job(job: Job, dataset: bytes | None, start_method: str) -> Any:
    """The body of a job's Ray task (a generator: Ray streams what it yields).

    Yields ``{"kind": "placed", ...}`` first (the Ray worker's process and node), then
    ``{"kind": "progress", "event": ...}`` per progress event of the sandboxed worker, then
    one ``{"kind": "result", "value": payload}`` or ``{"kind": "error", "message": ...,
    "reason": ...}``."""
    import socket

    from leads_engine.sandbox import SandboxError, Worker, WorkerOutcome

    from .jobs import _run_job, _timeout_message

    if dataset is not None:
        job = replace(job, dataset_path=_materialise(dataset))
    yield {"kind": "placed", "pid": os.getpid(), "node": socket.gethostname()}
    worker = Worker(
        _run_job,
        (job,),
        timeout_s=job.timeout_s,
        with_channel=True,
        threads=1,
        start_method=start_method,
        prefix="leads-ray-worker",
    )
    try:
        worker.start()
        while True:
            message = worker.receive()
            if isinstance(message, WorkerOutcome):
                yield {"kind": "result", "value": message.value}
                return
            if message is not None:
                yield {"kind": "progress", "event": message}
    except SandboxError as exc:
        if exc.reason == "timeout" and job.timeout_s is not None:
            text = _timeout_message(job)
        else:
            text = f"{exc}\n{exc.details}" if exc.details else str(exc)
        yield {"kind": "error", "message": text, "reason": exc.reason}
    finally:
        worker.stop()


# ---------------------------------------------------------------------------- on the server


class RayExecutor:
    """Jobs as Ray tasks on the cluster at ``address`` (None: an already initialised Ray in
    this process, else a new local one with ``local_cpus`` CPUs)."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        max_jobs: int | None = None,
        resources: RayResources | None = None,
        shared_path: str | None = None,
        retries: int = 0,
        start_method: str = "forkserver",
        local_cpus: int | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        self.ray = import_ray()
        self.address = address
        self.resources = resources or RayResources()
        self.shared_path = None if shared_path is None else Path(shared_path).resolve()
        self.retries = retries
        self.start_method = start_method
        if not self.ray.is_initialized():
            settings: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
            if address is None:
                settings |= {
                    "include_dashboard": False,
                    "num_cpus": local_cpus,
                    "_node_ip_address": "127.0.0.1",  # a private instance: loopback only
                }
            self.ray.init(address=address, **settings)
        self._task = self.ray.remote(num_returns="streaming")(ray_job)
        cpus = float(self.ray.cluster_resources().get("CPU", 1.0))
        self.slots = JobSlots(max_jobs or max(1, int(cpus // self.resources.num_cpus)))
        self._datasets: dict[tuple[str, int, int], Any] = {}
        self._active: set[Any] = set()
        self._warm: list[Any] = []

    def describe(self) -> dict[str, Any]:
        """Name, slots, cluster CPUs and GPUs, and what each job asks for."""
        cluster = self.ray.cluster_resources()
        return {
            "executor": self.name,
            "address": self.address or "local",
            "slots": self.slots.capacity,
            "cluster_cpus": cluster.get("CPU", 0.0),
            "cluster_gpus": cluster.get("GPU", 0.0),
            "per_job": self.resources.options(),
            "datasets": f"shared path {self.shared_path}" if self.shared_path else "object store",
            "retries": self.retries,
        }

    def warm_up(self) -> None:
        """Start one Ray worker per slot now, each with its worker runner's fork server (it
        imports torch: seconds), so that the first trainings do not wait for them: one
        ``ping`` job per slot, whose results nobody waits for."""
        self._warm = [
            self._task.options(**self.resources.options()).remote(
                Job("ping"), None, self.start_method
            )
            for _ in range(self.slots.capacity)
        ]

    def kill_all(self) -> int:
        """Force-cancel every running job (their Ray workers and sandboxed children die)."""
        running = list(self._active)
        for generator in running:
            with contextlib.suppress(Exception):
                self.ray.cancel(generator, force=True)
        return len(running)

    def _dataset(self, path: str) -> tuple[str, Any]:
        """The job's data set path and what travels with it: None when every node reads
        ``path`` from the shared folder, else an object-store reference to its bytes (put once
        per file version)."""
        if not path:
            return path, None
        resolved = Path(path).resolve()
        if self.shared_path is not None and resolved.is_relative_to(self.shared_path):
            return str(resolved), None
        info = resolved.stat()
        key = (str(resolved), info.st_mtime_ns, info.st_size)
        if key not in self._datasets:
            self._datasets = {k: v for k, v in self._datasets.items() if k[0] != key[0]}
            self._datasets[key] = self.ray.put(resolved.read_bytes())
        return "", self._datasets[key]

    async def run(self, job: Job, on_progress: ProgressHandler | None = None) -> dict[str, Any]:
        """Run ``job`` as a Ray task (in a slot when it is heavy); its result payload."""
        if job.kind not in HEAVY_JOBS:
            return await self._run(job, on_progress)
        async with self.slots.hold(on_progress):
            return await self._run(job, on_progress)

    async def _run(self, job: Job, on_progress: ProgressHandler | None) -> dict[str, Any]:
        path, data = await asyncio.to_thread(self._dataset, job.dataset_path)
        options = self.resources.options() | {"max_retries": self.retries}
        generator = self._task.options(**options).remote(
            replace(job, dataset_path=path), data, self.start_method
        )
        self._active.add(generator)
        try:
            async for reference in generator:
                message = await reference
                kind = message.get("kind")
                if kind == "result":
                    return message["value"]
                if kind == "error":
                    raise WorkerError(message["message"])
                if on_progress is None:
                    continue
                if kind == "placed":
                    await on_progress({"phase": "placed", "executor": "ray", **message})
                else:
                    await on_progress(message["event"])
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                self.ray.cancel(generator, force=True)
            raise
        except self.ray.exceptions.RayError as exc:
            raise WorkerError(_ray_failure(exc, self.retries)) from exc
        finally:
            self._active.discard(generator)
        raise WorkerError("the Ray task ended without a result")


def _ray_failure(exc: BaseException, retries: int) -> str:
    """Why a Ray task failed, in one paragraph (Ray's messages run to pages)."""
    text = " ".join(str(exc).split())
    if len(text) > 400:
        text = text[:400] + "..."
    tried = f" after {retries + 1} attempts" if retries else ""
    return (
        f"the Ray task running the job failed{tried} ({type(exc).__name__}): the Ray worker or "
        f"its node died or the task was cancelled; {text}"
    )
