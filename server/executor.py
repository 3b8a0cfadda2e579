"""Where training, fine-tuning and evaluation jobs run: the pluggable executor of the server.

An executor runs a :class:`~leads_server.jobs.Job` and returns its result payload (summary,
curves, weights bytes), forwarding progress events; the server stays the only writer of the
archive. Two executors share one contract (:class:`Executor`):

* ``local`` (default, no new dependency): :class:`LocalExecutor`, today's worker processes
  (:class:`~leads_server.jobs.WorkerPool`) forked on this machine;
* ``ray``: :class:`~leads_server.ray_executor.RayExecutor`, each job a Ray task with declared
  resources on a Ray cluster (imported lazily: the default install has no ray).

Both bound the number of heavy jobs (fits and evaluations) running at once by their *slots*
(:class:`JobSlots`; local: one per core by default, ``leads-server --max-jobs N``). A job that
finds no free slot waits in line, and its progress says ``queued`` until a slot frees, so
several ``train_candidate`` calls at once never fail for want of a core. Light jobs (parameter
counts of edited code, pings) never wait behind trainings.

``make_executor`` builds one from the command line or the environment (``LEADS_EXECUTOR``,
``LEADS_RAY_ADDRESS``, ``LEADS_MAX_JOBS``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .jobs import Job, ProgressHandler, WorkerPool

if TYPE_CHECKING:
    from .ray_executor import RayResources

ExecutorKind = Literal["local", "ray"]
EXECUTORS: tuple[ExecutorKind, ...] = ("local", "ray")
#: Environment variables with the defaults of --executor, --ray-address and --max-jobs.
EXECUTOR_ENV = "LEADS_EXECUTOR"
RAY_ADDRESS_ENV = "LEADS_RAY_ADDRESS"
MAX_JOBS_ENV = "LEADS_MAX_JOBS"
#: Jobs that hold a slot (they train or evaluate on a whole data set).
HEAVY_JOBS = frozenset({"fit", "evaluate"})


class Executor(Protocol):
    """What the server needs from an executor."""

    #: ``local`` or ``ray``
    name: str
    slots: JobSlots
    #: how worker processes start on this machine (the viewer's predictions use it too)
    start_method: str

    async def run(self, job: Job, on_progress: ProgressHandler | None = None) -> dict[str, Any]:
        """Run ``job``; its result payload. Raises :class:`~leads_server.jobs.WorkerError`
        when it fails, runs past its limit or its worker dies; cancelling the awaiting task
        stops the job."""
        ...

    def kill_all(self) -> int:
        """Stop every running job at once (safe from a signal handler); how many."""
        ...

    def warm_up(self) -> None:
        """Prepare in the background so that the first job starts fast."""
        ...

    def describe(self) -> dict[str, Any]:
        """The executor's name, slots and settings (for logs and ``leads-server`` start-up)."""
        ...


def default_max_jobs() -> int:
    """One heavy job per core this process may use (at least one)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores)


class JobSlots:
    """At most ``capacity`` heavy jobs at once; the others wait in line, first come first
    served (:class:`asyncio.Semaphore` is FIFO), and learn their place through ``on_progress``
    (``{"phase": "queued", "ahead": n, "running": k, "slots": capacity}``).

    Cancelling a waiting job removes it from the line without taking a slot."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"an executor needs at least one job slot, not {capacity}")
        self.capacity = capacity
        self.running = 0
        self.waiting = 0
        self._semaphore = asyncio.Semaphore(capacity)

    @property
    def free(self) -> int:
        """Slots free now."""
        return max(0, self.capacity - self.running)

    @asynccontextmanager
    async def hold(self, on_progress: ProgressHandler | None = None) -> AsyncIterator[None]:
        """Hold one slot for the body; wait (reporting ``queued``) while none is free."""
        if self._semaphore.locked() and on_progress is not None:
            await on_progress(
                {
                    "phase": "queued",
                    "ahead": self.waiting,
                    "running": self.running,
                    "slots": self.capacity,
                }
            )
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._semaphore.release()


class LocalExecutor:
    """Jobs in worker processes forked on this machine (:class:`WorkerPool`), at most
    ``max_jobs`` heavy ones at once (default: one per core)."""

    name = "local"

    def __init__(self, start_method: str = "forkserver", max_jobs: int | None = None) -> None:
        self.pool = WorkerPool(start_method)
        self.slots = JobSlots(max_jobs or default_max_jobs())

    @property
    def start_method(self) -> str:
        """How the worker processes start (``forkserver`` or ``spawn``)."""
        return self.pool.start_method

    async def run(self, job: Job, on_progress: ProgressHandler | None = None) -> dict[str, Any]:
        """Run ``job`` in a new worker process, in a slot when it is heavy."""
        if job.kind not in HEAVY_JOBS:
            return await self.pool.run(job, on_progress)
        async with self.slots.hold(on_progress):
            return await self.pool.run(job, on_progress)

    def kill_all(self) -> int:
        """SIGKILL every running worker process."""
        return self.pool.kill_all()

    def warm_up(self) -> None:
        """Start the fork server in the background."""
        self.pool.warm_up()

    def describe(self) -> dict[str, Any]:
        """Name, slots and start method."""
        return {
            "executor": self.name,
            "slots": self.slots.capacity,
            "start_method": self.pool.start_method,
        }


@dataclass(frozen=True)
class ExecutorSettings:
    """How ``leads-server`` was asked to run its jobs (flags or environment)."""

    kind: ExecutorKind = "local"
    ray_address: str | None = None
    max_jobs: int | None = None
    start_method: str = "forkserver"
    #: ray only: what each job asks the cluster for (None: one CPU, no GPU, no memory claim)
    resources: RayResources | None = None
    #: ray only: a folder every Ray node sees (NFS, Lustre): data sets are read from there
    #: instead of travelling through the object store
    shared_path: str | None = None
    #: ray only: how many times Ray re-runs a job whose worker died (0: the candidate fails)
    retries: int = 0

    @classmethod
    def from_env(cls, **overrides: Any) -> ExecutorSettings:
        """Settings from ``LEADS_EXECUTOR``, ``LEADS_RAY_ADDRESS`` and ``LEADS_MAX_JOBS``;
        ``overrides`` that are not None win."""
        env: dict[str, Any] = {
            "kind": os.environ.get(EXECUTOR_ENV) or "local",
            "ray_address": os.environ.get(RAY_ADDRESS_ENV) or None,
            "max_jobs": int(os.environ[MAX_JOBS_ENV]) if os.environ.get(MAX_JOBS_ENV) else None,
        }
        env.update({k: v for k, v in overrides.items() if v is not None})
        if env["kind"] not in EXECUTORS:
            raise ValueError(
                f"unknown executor {env['kind']!r} (${EXECUTOR_ENV}); choose one of "
                f"{', '.join(EXECUTORS)}"
            )
        return cls(**env)


def make_executor(settings: ExecutorSettings | None = None) -> Executor:
    """The executor ``settings`` name (default: local, one slot per core). ``ray`` connects to
    the cluster at ``ray_address`` (None: start a local one) and fails with an actionable
    message when ray is not installed."""
    settings = settings or ExecutorSettings()
    if settings.kind == "local":
        return LocalExecutor(settings.start_method, settings.max_jobs)
    from .ray_executor import RayExecutor

    return RayExecutor(
        address=settings.ray_address,
        max_jobs=settings.max_jobs,
        resources=settings.resources,
        shared_path=settings.shared_path,
        retries=settings.retries,
        start_method=settings.start_method,
    )
