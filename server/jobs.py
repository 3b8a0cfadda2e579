"""Training, evaluation and parameter counting in a worker process, off the event loop.

Each job runs in a fresh child of a ``forkserver`` whose server process has already imported
torch and the engine, so a job starts in tens of milliseconds instead of the seconds a cold
``import torch`` takes. The worker uses one torch thread, loads the data set, and, when the
candidate carries edited diffusion code, enters the sandbox (:func:`leads_engine.sandbox.
enter_sandbox`: rlimits, private working folder, audit hook) before that code is compiled. It
sends progress messages and one final result (a JSON-friendly summary plus the weights as
``torch.save`` bytes) over a pipe.

The async side waits for messages in a worker thread (the event loop never blocks), forwards
the progress, and terminates the process when the awaiting task is cancelled (client
cancellation or server shutdown), so an abandoned fit never keeps a core busy.
"""

from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing
import multiprocessing.connection
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread

#: Modules the fork server imports once, so that every job starts with them loaded.
PRELOAD = ["torch", "torch_geometric", "leads_engine.training", "leads_server.jobs"]

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
    sample: int = 0
    compile: bool = True


def sandbox_available() -> bool:
    """Whether the engine's code sandbox (``leads_engine.sandbox``) is importable."""
    try:
        from leads_engine import sandbox  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------- worker side


def _trim(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


#: CPU seconds an edited candidate may use per training epoch inside the sandbox (a GNN epoch on
#: the bundled benchmark takes 10-35 s on a 2-core CPU; the margin covers slower machines).
CPU_SECONDS_PER_EPOCH = 300


def _enter_sandbox(workdir: Path, epochs: int) -> None:
    """Prepare everything trusted code needs from the file system, then lock the process down.

    The catalog description is read (the engine caches it; the model builder looks templates
    up by name) and the graph layers are imported, because the sandbox refuses file access
    outside ``workdir`` afterwards."""
    import torch_geometric.nn  # noqa: F401

    from leads_engine import diffusion, hybrid, metrics, sandbox  # noqa: F401

    diffusion.list_templates()  # reads (and caches) the catalog while files are readable
    # training is long, legitimate work: the CPU-time limit grows with the epochs asked for
    limits = sandbox.SandboxLimits()
    cpu_seconds = max(limits.cpu_seconds, CPU_SECONDS_PER_EPOCH * max(1, epochs))
    sandbox.enter_sandbox(dataclasses.replace(limits, cpu_seconds=cpu_seconds), workdir)


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


def _run_job(job: Job, conn: multiprocessing.connection.Connection, workdir: Path) -> Any:
    import torch

    from leads_engine.dataset import load_dataset
    from leads_engine.spec import CandidateSpec
    from leads_engine.training import TrainingConfig, TrainingProgress, evaluate, fit

    torch.set_num_threads(1)
    if job.kind == "ping":
        return {"pong": True}
    spec = CandidateSpec.model_validate_json(job.spec_json)
    dataset = load_dataset(job.dataset_path) if job.dataset_path else None
    initial_state = _load_state(job.initial_weights)
    if spec.diffusion_source is not None:
        _enter_sandbox(workdir, job.epochs)
    if job.kind == "count":
        from leads_engine.hybrid import HybridModel

        n_nodes = dataset.n_nodes if dataset is not None else 1
        return {"parameter_count": HybridModel.from_spec(spec, n_nodes).parameter_count()}
    assert dataset is not None
    # no device given: CUDA when the worker sees a GPU, else the CPU
    config = TrainingConfig(epochs=job.epochs, batch_size=job.batch_size, compile=job.compile)
    if job.kind == "evaluate":
        result = evaluate(spec, dataset, initial_state, split=job.split, config=config)
        sample = min(job.sample, len(result.at_true) - 1)
        return {
            "summary": result.summary(),
            "at_true": result.at_true[sample].tolist(),
            "at_pred": result.at_pred[sample].tolist(),
        }
    started = time.perf_counter()
    last = [started]

    def progress(event: TrainingProgress) -> None:
        if event.phase != "epoch":
            return
        now = time.perf_counter()
        _send(
            conn,
            "progress",
            {
                "epoch": event.epoch,
                "epochs": event.epochs,
                "train_loss": event.train_loss,
                "val_loss": event.val_loss,
                "epoch_seconds": now - last[0],
            },
        )
        last[0] = now

    result = fit(spec, dataset, config, progress=progress, initial_state=initial_state)
    return {"summary": result.summary(), "weights": _state_bytes(result.state_dict)}


def worker_main(job: Job, conn: multiprocessing.connection.Connection, workdir: str) -> None:
    """Entry point of a worker process: run ``job``, send ``("result", payload)`` or
    ``("error", text)``."""
    try:
        payload = _run_job(job, conn, Path(workdir))
        weights = payload.pop("weights", None) if isinstance(payload, dict) else None
        _send(conn, "result", payload, weights)
    except BaseException as exc:  # report everything, including the sandbox's refusals
        text = f"{type(exc).__name__}: {exc}\n" + _trim(traceback.format_exc())
        try:
            _send(conn, "error", text)
        except (OSError, ValueError):
            pass
    finally:
        conn.close()


# ---------------------------------------------------------------------------- server side

#: Largest message a worker may send (weights of the biggest catalog model are ~1 MB).
MAX_MESSAGE_BYTES = 256 * 2**20


def _send(
    conn: multiprocessing.connection.Connection,
    kind: str,
    payload: Any,
    weights: bytes | None = None,
) -> None:
    """Worker side: one JSON message, then the weights as raw bytes if there are any.

    Nothing is pickled: a worker that ran untrusted code must not be able to make the server
    execute anything when it reads the reply (weights are read with ``weights_only=True``).
    """
    header = {"kind": kind, "payload": payload, "weights": weights is not None}
    conn.send_bytes(json.dumps(header).encode())
    if weights is not None:
        conn.send_bytes(weights)


def _receive(conn: multiprocessing.connection.Connection, timeout: float) -> tuple[str, Any] | None:
    """The next message, None on timeout; EOFError when the worker is gone."""
    if not conn.poll(timeout):
        return None
    try:
        header = json.loads(conn.recv_bytes(MAX_MESSAGE_BYTES))
        kind, payload = str(header["kind"]), header["payload"]
        if header.get("weights"):
            if not isinstance(payload, dict):
                raise ValueError("weights without a result object")
            payload["weights"] = conn.recv_bytes(MAX_MESSAGE_BYTES)
    except (ValueError, KeyError, TypeError) as exc:  # malformed or oversized reply
        raise WorkerError(f"the worker sent a malformed reply ({exc})") from exc
    return kind, payload


def _describe_exit(code: int | None) -> str:
    """A worker's exit code in words (negative: killed by that signal)."""
    if code is None or code >= 0:
        return f"exit code {code}"
    reasons = {
        signal.SIGXCPU: "its CPU-time limit was reached (SIGXCPU)",
        signal.SIGKILL: "killed (SIGKILL: out of memory, or stopped)",
        signal.SIGSEGV: "crashed (SIGSEGV)",
        signal.SIGXFSZ: "its file-size limit was reached (SIGXFSZ)",
    }
    return reasons.get(-code, f"killed by signal {-code}")


class WorkerPool:
    """Starts one worker process per job from a shared fork server.

    ``start_method`` is ``forkserver`` (default; preloads :data:`PRELOAD`) or ``spawn``."""

    def __init__(self, start_method: str = "forkserver") -> None:
        self.start_method = start_method
        self._context: Any = None

    def context(self) -> Any:
        """The multiprocessing context, created (and the fork server configured) on first use."""
        if self._context is None:
            context = multiprocessing.get_context(self.start_method)
            if self.start_method == "forkserver":
                context.set_forkserver_preload(PRELOAD)
            self._context = context
        return self._context

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

        Raises :class:`WorkerError` if the job fails or the worker dies; on cancellation the
        worker is terminated before the cancellation propagates."""
        context = self.context()
        workdir = tempfile.mkdtemp(prefix="leads-worker-")
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(
            target=worker_main, args=(job, sender, workdir), name=f"leads-{job.kind}", daemon=True
        )
        await anyio.to_thread.run_sync(process.start)
        sender.close()
        try:
            while True:
                try:
                    message = await anyio.to_thread.run_sync(
                        _receive, receiver, 0.2, abandon_on_cancel=True
                    )
                except (EOFError, OSError) as exc:
                    await anyio.to_thread.run_sync(process.join, 5.0)
                    raise WorkerError(
                        f"the worker process died ({_describe_exit(process.exitcode)}) before "
                        "it reported a result"
                    ) from exc
                if message is None:
                    continue
                kind, payload = message
                if kind == "progress":
                    if on_progress is not None:
                        await on_progress(payload)
                elif kind == "result":
                    return payload
                else:
                    raise WorkerError(str(payload))
        finally:
            with anyio.CancelScope(shield=True):
                if process.is_alive():
                    process.terminate()
                await anyio.to_thread.run_sync(process.join, 10.0)
                if process.is_alive():
                    process.kill()
                receiver.close()
                shutil.rmtree(workdir, ignore_errors=True)
