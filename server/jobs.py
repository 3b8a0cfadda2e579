"""Training, evaluation and parameter counting in a worker process, off the event loop.

Jobs run through the engine's one process runner (:class:`leads_engine.sandbox.Worker`): a
fresh child of the shared, preloaded fork server, so a job starts in tens of milliseconds
instead of the seconds a cold ``import torch`` takes, with the same exit-cause messages as
the code sandbox. Only what a job does lives here: the worker uses one torch thread, loads
the data set, and, when the candidate carries edited diffusion code, locks itself down
(:meth:`~leads_engine.sandbox.WorkerChannel.lock_down`: rlimits, private working folder,
audit hook) before that code is compiled. It sends progress events and one final result (a
JSON-friendly summary plus the weights as ``torch.save`` bytes), which the runner reads with
``torch.load(weights_only=True)``.

The async side never blocks the event loop, forwards the progress, and kills the worker when
the awaiting task is cancelled (client cancellation or server shutdown), so an abandoned fit
never keeps a core busy. Every job may carry a wall-clock limit (:class:`JobLimits` sizes it for
training and evaluation from the data set's size), enforced by the runner; the pool can kill all
its running workers at once (:meth:`WorkerPool.kill_all`, for a stopping server), and a worker
dies with its fork server, so a server killed by SIGKILL leaves none behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from leads_engine.sandbox import (
    SandboxError,
    SandboxLimits,
    Worker,
    WorkerChannel,
    exit_cause,
    worker_context,
)

JobKind = Literal["fit", "evaluate", "count", "ping"]
ProgressHandler = Callable[[dict[str, Any]], Awaitable[None]]


class WorkerError(RuntimeError):
    """A job failed in the worker (the message carries the worker's trimmed traceback) or the
    worker process died."""


@dataclass(frozen=True)
class Job:
    """What one worker process does. ``spec_json`` is a :class:`CandidateSpec` as JSON."""

    kind: JobKind
    spec_json: str = ""
    dataset_path: str = ""
    epochs: int = 3
    batch_size: int | None = None  # None: the template's catalog batch size
    split: str = "test"
    initial_weights: bytes | None = field(default=None, repr=False)
    #: a fit's warm start: (parent spec JSON, its weights) in order of preference; the parts the
    #: spec shares with them start from their values (:func:`leads_engine.warm_start.warm_state`)
    warm_start: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    sample: int = 0
    compile: bool = True
    #: a fit's learning rates times this (:attr:`TrainingConfig.learning_rate_scale`)
    learning_rate_scale: float = 1.0
    #: epochs over which the learning rates warm up (:attr:`TrainingConfig.warmup_epochs`)
    warmup_epochs: float = 0.0
    #: wall-clock limit of the task in seconds (None: none); see :class:`JobLimits`
    timeout_s: float | None = None


#: Node-steps per second a worker is assumed to manage at worst when training (forward and
#: backward; the slowest catalog templates reach 1.6e6 on one core of the reference CPU, so this
#: is three times slower, for a busy machine or a larger edited model).
TRAINING_NODE_STEPS_PER_SECOND = 5e5
#: Euler steps per data set frame when training (5 sub-steps of 0.4 ms per 2 ms frame).
STEPS_PER_FRAME = 5
#: the floor of a job's limit covers this many epochs (a search candidate's default)
FLOOR_EPOCHS = 3


@dataclass(frozen=True)
class JobLimits:
    """Wall-clock limits of training, fine-tuning and evaluation jobs.

    A job may run ``factor`` times its expected duration: the expected seconds per epoch of a
    data set (its train and val trajectories times nodes times Euler steps, at
    :data:`TRAINING_NODE_STEPS_PER_SECOND`) times the epochs, never less than ``floor_s`` per
    :data:`FLOOR_EPOCHS` epochs. The floor grows with the epochs because on small sets the
    estimate misses a step's fixed cost (dispatch, a hybrid reaction's network at every
    sub-step): a 12-epoch residual candidate on the 300-node quick set ran past a fixed 300 s on
    a busy machine. Worker start-up (fork, imports, lock-down) has the runner's own limit and is
    not counted."""

    factor: float = 10.0
    floor_s: float = 300.0

    def __post_init__(self) -> None:
        if not (self.factor > 0 and self.floor_s > 0):
            raise ValueError("job time limits must be positive")

    @staticmethod
    def epoch_seconds(dataset: Any) -> float:
        """Expected seconds of one training epoch (train, then validation) on ``dataset``."""
        trajectories = len(dataset.indices("train")) + len(dataset.indices("val"))
        node_steps = trajectories * dataset.n_nodes * len(dataset.t) * STEPS_PER_FRAME
        return node_steps / TRAINING_NODE_STEPS_PER_SECOND

    def seconds(self, dataset: Any, epochs: int) -> float:
        """The wall-clock limit of a job of ``epochs`` epochs (an evaluation counts as one)."""
        epochs = max(1, epochs)
        expected = self.epoch_seconds(dataset) * epochs
        floor = self.floor_s * max(1.0, epochs / FLOOR_EPOCHS)
        return float(math.ceil(max(floor, self.factor * expected)))


def sandbox_available() -> bool:
    """Whether the engine's code sandbox (``leads_engine.sandbox``) is importable."""
    try:
        from leads_engine import sandbox  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------- worker side

#: CPU seconds an edited candidate may use per training epoch inside the sandbox (a GNN epoch on
#: the bundled benchmark takes 10-35 s on a 2-core CPU; the margin covers slower machines).
CPU_SECONDS_PER_EPOCH = 300


def _lock_down(channel: WorkerChannel, epochs: int) -> None:
    """Prepare everything trusted code needs from the file system, then lock the process down.

    The catalog description is read (the engine caches it; the model builder looks templates
    up by name) and the graph layers are imported, because the sandbox refuses file access
    outside the worker's folder afterwards."""
    import torch_geometric.nn  # noqa: F401

    from leads_engine import diffusion, hybrid, metrics  # noqa: F401

    diffusion.list_templates()  # reads (and caches) the catalog while files are readable
    # training is long, legitimate work: the CPU-time limit grows with the epochs asked for
    limits = SandboxLimits()
    cpu_seconds = max(limits.cpu_seconds, CPU_SECONDS_PER_EPOCH * max(1, epochs))
    channel.lock_down(dataclasses.replace(limits, cpu_seconds=cpu_seconds))


def _state_bytes(state_dict: dict[str, Any] | None) -> bytes | None:
    if state_dict is None:
        return None
    import torch

    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


def _load_state(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _plain(value: Any) -> Any:
    """``value`` as JSON would carry it (lists for tuples, str keys), as the result always was."""
    return json.loads(json.dumps(value))


#: ``prctl`` option: the signal a process gets when its parent dies (Linux).
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when its parent, the fork server, dies; so a server killed by
    SIGKILL leaves no worker computing on until its wall-clock alarm.

    The fork server exits when the last holder of its "alive" pipe (the server) is gone; every
    child it forks inherits that pipe's write end (``multiprocessing`` keeps it so that children
    could start processes of their own, which workers never do), so the worker closes its copy
    first: otherwise the fork server would wait for the worker, and the worker for it."""
    from multiprocessing import forkserver

    holder = getattr(forkserver, "_forkserver", None)
    alive = getattr(holder, "_forkserver_alive_fd", None)
    if isinstance(alive, int):
        with contextlib.suppress(OSError):
            os.close(alive)
        holder._forkserver_alive_fd = None
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _run_job(channel: WorkerChannel, job: Job) -> dict[str, Any]:
    """What a job does in the worker: the result payload (weights as ``torch.save`` bytes)."""
    import time

    import torch

    _die_with_parent()
    from leads_engine.dataset import load_dataset
    from leads_engine.spec import CandidateSpec
    from leads_engine.training import TrainingConfig, TrainingProgress, evaluate, fit
    from leads_engine.warm_start import warm_state  # before a lock-down forbids the import

    torch.set_num_threads(1)
    if job.kind == "ping":
        return {"pong": True}
    spec = CandidateSpec.model_validate_json(job.spec_json)
    dataset = load_dataset(job.dataset_path) if job.dataset_path else None
    initial_state = _load_state(job.initial_weights)
    if spec.has_edited_code:
        _lock_down(channel, job.epochs)
    if job.kind == "count":
        from leads_engine.hybrid import HybridModel

        n_nodes = dataset.n_nodes if dataset is not None else 1
        return {"parameter_count": HybridModel.from_spec(spec, n_nodes).parameter_count()}
    assert dataset is not None
    # no device given: CUDA when the worker sees a GPU, else the CPU
    config = TrainingConfig(
        epochs=job.epochs,
        batch_size=job.batch_size,
        compile=job.compile,
        learning_rate_scale=job.learning_rate_scale,
        warmup_epochs=job.warmup_epochs,
    )
    if job.kind == "evaluate":
        result = evaluate(spec, dataset, initial_state, split=job.split, config=config)
        sample = min(job.sample, len(result.at_true) - 1)
        return _plain(
            {
                "summary": result.summary(),
                "at_true": result.at_true[sample].tolist(),
                "at_pred": result.at_pred[sample].tolist(),
            }
        )
    started = time.perf_counter()
    last = [started]

    def progress(event: TrainingProgress) -> None:
        if event.phase != "epoch":  # after a batch: its loss, for the client's progress bar
            channel.progress(
                _plain(
                    {
                        "phase": "batch",
                        "epoch": event.epoch,
                        "epochs": event.epochs,
                        "batch": event.batch,
                        "batches": event.batches,
                        "train_loss": event.train_loss,
                    }
                )
            )
            return
        now = time.perf_counter()
        channel.progress(
            _plain(
                {
                    "phase": "epoch",
                    "epoch": event.epoch,
                    "epochs": event.epochs,
                    "train_loss": event.train_loss,
                    "val_loss": event.val_loss,
                    "epoch_seconds": now - last[0],
                }
            )
        )
        last[0] = now

    if job.warm_start:  # after the lock-down: building the new model may run edited code
        parents = [
            (CandidateSpec.model_validate_json(parent), _load_state(weights))
            for parent, weights in job.warm_start
        ]
        initial_state, _ = warm_state(spec, dataset.n_nodes, parents)
    result = fit(spec, dataset, config, progress=progress, initial_state=initial_state)
    payload = _plain({"summary": result.summary()})
    weights = _state_bytes(result.state_dict)
    if weights is not None:
        payload["weights"] = weights
    return payload


# ---------------------------------------------------------------------------- server side


def _describe_exit(code: int | None) -> str:
    """A worker's exit code in words (negative: killed by that signal), from the runner's one
    table of exit causes."""
    return exit_cause(code).message


def _job_error(exc: SandboxError) -> WorkerError:
    """The runner's failure as the job's error: its message, then the worker's traceback."""
    return WorkerError(f"{exc}\n{exc.details}" if exc.details else str(exc))


class WorkerPool:
    """Starts one worker process per job through the engine's process runner.

    ``start_method`` is ``forkserver`` (default; the runner's preloaded fork server) or
    ``spawn``."""

    def __init__(self, start_method: str = "forkserver") -> None:
        self.start_method = start_method
        self._active: set[Worker] = set()

    def kill_all(self) -> int:
        """SIGKILL every running worker's process group at once (safe from a signal handler:
        it only sends signals); the jobs fail with "killed". The number of workers killed."""
        workers = list(self._active)
        for worker in workers:
            worker.kill()
        return len(workers)

    def context(self) -> Any:
        """The multiprocessing context jobs are started from (the runner's)."""
        return worker_context(self.start_method)

    def warm_up(self) -> None:
        """Start the fork server now (it imports torch: seconds) in a background thread, so
        that the first training does not wait for it."""
        if self.start_method != "forkserver":
            return

        def start() -> None:
            from multiprocessing import forkserver

            self.context()
            forkserver.ensure_running()

        threading.Thread(target=start, name="leads-forkserver-warm-up", daemon=True).start()

    async def run(self, job: Job, on_progress: ProgressHandler | None = None) -> dict[str, Any]:
        """Run ``job`` in a new worker process and return its result payload.

        Raises :class:`WorkerError` if the job fails, runs past ``job.timeout_s`` or the worker
        dies; on cancellation the worker is killed before the cancellation propagates."""
        worker = Worker(
            _run_job,
            (job,),
            timeout_s=job.timeout_s,
            with_channel=True,
            threads=1,
            start_method=self.start_method,
            prefix="leads-worker",
        )
        self._active.add(worker)
        try:
            outcome = await worker.run_async(on_progress)
        except SandboxError as exc:
            if exc.reason == "timeout" and job.timeout_s is not None:
                raise WorkerError(_timeout_message(job)) from exc
            raise _job_error(exc) from exc
        finally:
            self._active.discard(worker)
        return outcome.value


def _timeout_message(job: Job) -> str:
    """Why a job was stopped at its wall-clock limit, with the limit and the epochs."""
    work = {
        "fit": f"{job.epochs} epochs",
        "evaluate": f"an evaluation on {job.split!r}",
    }.get(job.kind, f"a {job.kind!r} job")
    return (
        f"wall-clock limit of {job.timeout_s:g} s for {work} reached; the worker was stopped "
        "(leads-server --job-timeout-factor / --job-timeout-floor set the limit)"
    )
