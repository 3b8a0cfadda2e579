"""The one process runner: every worker process LEADS starts is started and watched here.

A :class:`Worker` is a fresh child of a ``multiprocessing`` forkserver that has torch, PyG and
the engine preloaded (:data:`PRELOAD`, the one list the fork server is configured with), so a
task costs a fork rather than a torch import. The worker becomes the leader of its own process
group, and either locks itself down (:func:`~.lockdown.lock_down`) before the task runs
(``limits=``: untrusted code from the first line, as in :func:`run_sandboxed`) or hands the
task a :class:`WorkerChannel` with which it locks itself down later, after reading what it
needs from the file system (the server's training jobs).

The worker talks to the parent over one pipe: a ``started`` message when the task begins,
any number of progress events, and one final reply. Every message is ``torch.save`` bytes,
read back with ``torch.load(weights_only=True)`` (never plain pickle) and at most
:data:`MAX_MESSAGE_BYTES` long, so a compromised worker cannot make the parent run code.

Time limits: the set-up (fork, imports, lock-down) has its own generous limit,
:data:`SETUP_SECONDS`; the task's wall-clock limit starts only when the task starts, so a busy
machine's slow start-up never eats it. The parent enforces it with SIGKILL to the worker's
process group; shortly before, the worker raises a timeout inside the running code, so that
the report names the slow line.

Why a worker stopped is told by the one table of :mod:`.exit_causes` (timeout, CPU time,
memory, signals, nonzero exit), with the same readable message wherever it is shown. Async
callers use :meth:`Worker.run_async`: cancelling the awaiting task kills the worker's process
group before the cancellation propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import linecache
import math
import multiprocessing
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from .exit_causes import SoftTimeout, exception_reason, timeout_cause, worker_died
from .lockdown import LockdownState, SandboxError, SandboxLimits, lock_down
from .rules import EDITED_FILENAME

__all__ = [
    "PRELOAD",
    "SETUP_SECONDS",
    "MAX_MESSAGE_BYTES",
    "Worker",
    "WorkerChannel",
    "WorkerOutcome",
    "run_sandboxed",
    "worker_context",
]

T = TypeVar("T")
ProgressHandler = Callable[[dict[str, Any]], Awaitable[None]]

#: Modules the fork server imports once, so that every worker starts with them loaded.
PRELOAD = (
    "__main__",
    "torch",
    "torch_geometric",
    "torch_geometric.nn",
    "leads_engine.mesh",
    "leads_engine.graph",
    "leads_engine.diffusion",
    "leads_engine.hybrid",
    "leads_engine.training",
    "leads_engine.sandbox",
    "leads_engine.diffusion_trial",
    "leads_engine.reaction_trial",
)
#: Largest message a worker may send (a serialised reply: the biggest catalog model's weights
#: are ~1 MB).
MAX_MESSAGE_BYTES = 256 * 2**20
#: Limit of a worker's set-up (fork, imports, lock-down) before its task starts: generous, so
#: that a loaded machine's slow start is never mistaken for slow code.
SETUP_SECONDS = 120.0
#: Characters of the worker's stdout/stderr tail kept in reports.
OUTPUT_TAIL_CHARS = 4000
#: Characters of a failed task's full traceback kept for trusted callers.
DETAILS_CHARS = 4000
_DEFAULT_PREFIX = "leads-sandbox"


def worker_context(start_method: str = "forkserver") -> Any:
    """The ``multiprocessing`` context workers are started from; the fork server (the default)
    always gets :data:`PRELOAD`, whoever starts it first."""
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        context.set_forkserver_preload(list(PRELOAD))
    return context


# ----------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class _Task:
    """What a worker process runs (pickled to the worker)."""

    target: Callable[..., Any]
    args: tuple
    kwargs: dict[str, Any]
    limits: SandboxLimits | None
    timeout_s: float | None
    threads: int
    workdir: str
    with_channel: bool


class WorkerChannel:
    """The worker's end of the pipe, handed to tasks started with ``with_channel=True``:
    progress events for the parent, and :meth:`lock_down` for tasks that lock themselves down
    once they have read what they need from the file system."""

    def __init__(self, connection: Any, workdir: str) -> None:
        self.workdir = Path(workdir)
        self.lockdown: LockdownState | None = None
        self._connection = connection

    def send(self, message: dict[str, Any]) -> None:
        """One message to the parent (``torch.save`` bytes: plain data and tensors only)."""
        buffer = io.BytesIO()
        torch.save(message, buffer)
        self._connection.send_bytes(buffer.getvalue())

    def progress(self, event: dict[str, Any]) -> None:
        """A progress event (plain data) for the parent's ``on_progress`` handler."""
        self.send({"kind": "progress", "event": event})

    def lock_down(self, limits: SandboxLimits) -> LockdownState:
        """Enter the sandbox in :attr:`workdir` (irreversible); stdout and stderr go to a log
        there from now on, whose tail the parent reports."""
        torch.save({"warm-up": torch.zeros(1)}, io.BytesIO())  # its lazy imports, before the hook
        state = lock_down(limits, self.workdir)
        output = os.open("output.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(output, 1)
        os.dup2(output, 2)
        self.lockdown = state
        return state

    def reply(self, payload: dict[str, Any]) -> None:
        """The final reply; an unserialisable result becomes a ``result-type`` failure."""
        try:
            self.send({"kind": "reply", **payload})
        except Exception as exc:  # an unserialisable result
            message = f"the result cannot be serialised: {type(exc).__name__}: {exc}"[:2000]
            self.send({"kind": "reply", "ok": False, "reason": "result-type", "message": message})


def _untrusted_frames(tb: Any, filenames: tuple[str, ...]) -> list[traceback.FrameSummary]:
    summary = traceback.StackSummary.extract(traceback.walk_tb(tb), lookup_lines=False)
    return [f for f in summary if f.filename in filenames or f.filename.startswith("<edited")]


def _format_exception(exc: BaseException, filenames: tuple[str, ...]) -> tuple[str, int | None]:
    """Traceback of ``exc`` keeping only frames of the untrusted source; its innermost line."""
    frames = _untrusted_frames(exc.__traceback__, filenames)
    lines = ["Traceback (edited source only):"]
    for frame in frames:
        lines.append(f"  line {frame.lineno}, in {frame.name}")
        code = linecache.getline(frame.filename, frame.lineno or 0).strip()
        if code:
            lines.append(f"    {code}")
    message = str(exc)
    if len(message) > 1000:
        message = message[:1000] + " ..."
    lines.append(f"{type(exc).__name__}: {message}")
    line = frames[-1].lineno if frames else None
    if isinstance(exc, SyntaxError) and exc.filename in filenames:
        line = exc.lineno
    return "\n".join(lines), line


def _trim(text: str, limit: int = DETAILS_CHARS) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _call_target(task: _Task, channel: WorkerChannel) -> tuple[Any, BaseException | None]:
    """Run the task under its soft wall-clock alarm: (value, None) or (None, exception).

    The alarm only interrupts the task's own frames: one arriving while this function handles
    the task's exception (say a MemoryError raised while the alarm was pending) is ignored, so
    the report keeps the code's real failure."""
    timeout = task.timeout_s

    def soft_timeout(signum: int, frame: Any) -> None:
        if frame is not None and frame.f_code is _call_target.__code__:
            return
        raise SoftTimeout(timeout_cause(timeout or 0.0).message)

    if timeout is not None:
        margin = max(0.3, min(1.0, 0.2 * timeout))
        signal.signal(signal.SIGALRM, soft_timeout)
        signal.setitimer(signal.ITIMER_REAL, max(0.05, timeout - margin))
    args = (channel, *task.args) if task.with_channel else task.args
    try:
        value = task.target(*args, **task.kwargs)
        failure = None
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
        value, failure = None, exc
    signal.setitimer(signal.ITIMER_REAL, 0)
    return value, failure


def _run_task(task: _Task, channel: WorkerChannel) -> dict[str, Any]:
    """The reply of one task. With ``limits`` (locked down before the task), any refusal of
    the audit hook fails the run as ``sandbox-denied``, even if the code caught the error."""
    strict = task.limits is not None
    channel.send({"kind": "started"})  # the wall clock starts now
    value, exc = _call_target(task, channel)
    state = channel.lockdown
    denials = state.denials if state is not None else []
    if exc is None:
        if strict and denials:
            return {"ok": False, "reason": "sandbox-denied", "message": "; ".join(denials[:3])}
        return {"ok": True, "value": value, "protections": state.protections if state else []}
    trace, line = _format_exception(exc, (EDITED_FILENAME,))
    reason = exception_reason(exc)
    message = f"{type(exc).__name__}: {exc}"[:2000]
    if strict and denials and reason in ("runtime-error", "sandbox-denied"):
        reason, message = "sandbox-denied", "; ".join(denials[:3])
    details = _trim("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return {
        "ok": False,
        "reason": reason,
        "message": message,
        "traceback": trace,
        "line": line,
        "details": details,
    }


def _worker_main(connection: Any, task: _Task) -> None:
    """Body of a worker process: own process group, lock down if asked, run, reply, exit."""
    code = 0
    channel = WorkerChannel(connection, task.workdir)
    try:
        os.setsid()  # own process group: the parent kills the whole group
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        with contextlib.suppress(AttributeError, ValueError):
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversized output: EFBIG instead
        torch.set_num_threads(max(1, task.threads))
        if task.limits is not None:
            channel.lock_down(task.limits)
        payload = _run_task(task, channel)
        sys.stdout.flush()
        channel.reply(payload)
    except BaseException as exc:  # noqa: BLE001 - the sandbox itself failed
        code = 3
        with contextlib.suppress(BaseException):
            traceback.print_exc()
        with contextlib.suppress(BaseException):
            channel.reply(
                {"ok": False, "reason": "crashed", "message": f"worker setup failed: {exc!r}"}
            )
    finally:
        os._exit(code)


# ----------------------------------------------------------------------------- parent side


@dataclass
class WorkerOutcome:
    """A task's result, the sandbox protections that were in force, the tail of its output."""

    value: Any
    protections: list[str] = field(default_factory=list)
    output: str = ""


def _read_tail(path: str, limit: int = OUTPUT_TAIL_CHARS) -> str:
    """Last ``limit`` bytes of a regular file written by the worker (no symlinks followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            return ""
        handle.seek(max(0, info.st_size - limit))
        return handle.read(limit).decode("utf-8", errors="replace")


def _remove_tree(path: str) -> None:
    def make_writable_and_retry(function: Callable, name: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), 0o700)
            function(name)

    shutil.rmtree(path, onerror=make_writable_and_retry)


class Worker:
    """One task in one fresh worker process, watched by the parent.

    ``target(*args, **kwargs)`` (``target(channel, *args, **kwargs)`` with ``with_channel``)
    must be a picklable top-level function. With ``limits`` the worker is locked down before
    the task starts and the wall-clock limit is ``min(timeout_s, limits.wall_seconds)``;
    without, the task runs as trusted code (it may lock itself down through the channel) and
    ``timeout_s=None`` means no wall-clock limit. ``prefix`` names the private folder
    (``tempfile.mkdtemp``), deleted when the worker stops: return what you need.

    :meth:`run` and :meth:`run_async` return a :class:`WorkerOutcome` or raise
    :class:`SandboxError` whose ``reason`` and message come from the exit-cause table;
    :meth:`start`, :meth:`receive` and :meth:`stop` are their steps.
    """

    def __init__(
        self,
        target: Callable[..., Any],
        args: tuple = (),
        kwargs: dict[str, Any] | None = None,
        *,
        limits: SandboxLimits | None = None,
        timeout_s: float | None = None,
        with_channel: bool = False,
        threads: int | None = None,
        start_method: str = "forkserver",
        prefix: str = _DEFAULT_PREFIX,
    ) -> None:
        if limits is not None:
            wall = limits.wall_seconds
            timeout_s = wall if timeout_s is None else min(timeout_s, wall)
        self.timeout_s = None if timeout_s is None else float(timeout_s)
        self._target, self._args, self._kwargs = target, tuple(args), dict(kwargs or {})
        self._limits, self._with_channel = limits, with_channel
        self._threads = torch.get_num_threads() if threads is None else threads
        self._start_method, self._prefix = start_method, prefix
        self._lock = threading.RLock()
        self._process: Any = None
        self._pid: int | None = None
        self._receiver: Any = None
        self._workdir: str | None = None
        self._deadline = math.inf
        self._started = False
        self._stopped = False
        self._reaped = False
        self._watchdog: threading.Timer | None = None

    @property
    def pid(self) -> int | None:
        """The worker's process id (also its process group's), once started."""
        return self._pid

    @property
    def workdir(self) -> str | None:
        """The worker's private folder, once started (deleted when the worker stops)."""
        return self._workdir

    # -- steps -----------------------------------------------------------------------------
    def start(self) -> None:
        """Fork the worker (the first one also starts the fork server: seconds)."""
        if os.name != "posix" or "forkserver" not in multiprocessing.get_all_start_methods():
            raise SandboxError("the sandbox needs a POSIX system (Linux or macOS)", "unsupported")
        with self._lock:
            if self._stopped:
                return
            context = worker_context(self._start_method)
            self._workdir = tempfile.mkdtemp(prefix=f"{self._prefix}-")
            self._receiver, sender = context.Pipe(duplex=False)
            task = _Task(
                self._target,
                self._args,
                self._kwargs,
                self._limits,
                self.timeout_s,
                self._threads,
                self._workdir,
                self._with_channel,
            )
            self._process = context.Process(
                target=_worker_main, args=(sender, task), name=self._prefix, daemon=True
            )
            try:
                self._process.start()
                self._pid = self._process.pid
            finally:
                sender.close()
            self._set_deadline(time.monotonic() + SETUP_SECONDS)

    def receive(self, wait: float | None = None) -> dict[str, Any] | WorkerOutcome | None:
        """The next progress event (a dict) or the :class:`WorkerOutcome`; ``None`` when
        nothing came within ``wait`` seconds (``None``: wait until one comes). Raises
        :class:`SandboxError` when the task failed, the worker died or ran out of time."""
        with self._lock:
            if self._receiver is None or self._stopped:
                raise SandboxError("the worker was stopped", "killed")
            until = math.inf if wait is None else time.monotonic() + wait
            while True:
                now = time.monotonic()
                if now >= self._deadline:
                    raise self._fail(self._deadline_failure())
                if now >= until:
                    return None
                budget = min(until, self._deadline) - now
                if not self._receiver.poll(None if math.isinf(budget) else budget):
                    continue
                message = self._read()
                kind = message.get("kind")
                if kind == "started":
                    self._started = True
                    start = time.monotonic()
                    self._set_deadline(
                        math.inf if self.timeout_s is None else start + self.timeout_s
                    )
                elif kind == "progress" and isinstance(message.get("event"), dict):
                    return message["event"]
                elif kind == "reply":
                    return self._outcome(message)
                else:
                    raise self._fail(SandboxError("malformed message from the worker", "crashed"))

    def kill(self) -> None:
        """SIGKILL to the worker's process group, at once (safe from any thread: it never
        waits for the process, and never signals one that was already reaped)."""
        pid = self._pid
        if pid is None or self._reaped:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)  # before its setsid(), the group is not its own yet

    def stop(self) -> None:
        """Kill the worker's process group, reap it, close the pipe, delete the private folder.
        Idempotent; waits for a :meth:`start` or :meth:`receive` in another thread to return."""
        self.kill()
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            if self._watchdog is not None:
                self._watchdog.cancel()
            if self._process is not None:
                self.kill()
                self._join(5.0)
                with contextlib.suppress(Exception):
                    self._process.close()
            if self._receiver is not None:
                self._receiver.close()
            if self._workdir is not None:
                _remove_tree(self._workdir)

    # -- whole runs ------------------------------------------------------------------------
    def run(self, on_progress: Callable[[dict[str, Any]], None] | None = None) -> WorkerOutcome:
        """Start, pass progress events to ``on_progress``, return the outcome; always stop."""
        try:
            self.start()
            while True:
                message = self.receive()
                if isinstance(message, WorkerOutcome):
                    return message
                if message is not None and on_progress is not None:
                    on_progress(message)
        finally:
            self.stop()

    async def run_async(self, on_progress: ProgressHandler | None = None) -> WorkerOutcome:
        """:meth:`run` for async callers: the event loop never blocks, and cancelling the
        awaiting task kills the worker's process group before the cancellation propagates
        (it is reaped and its folder deleted in a background thread)."""
        try:
            await asyncio.to_thread(self.start)
            while True:
                message = await asyncio.to_thread(self.receive, 0.2)
                if isinstance(message, WorkerOutcome):
                    break
                if message is not None and on_progress is not None:
                    await on_progress(message)
        except asyncio.CancelledError:
            self.kill()
            threading.Thread(target=self.stop, name="leads-worker-stop", daemon=True).start()
            raise
        except BaseException:
            await asyncio.to_thread(self.stop)
            raise
        await asyncio.to_thread(self.stop)
        return message

    # -- internals -------------------------------------------------------------------------
    def _set_deadline(self, deadline: float) -> None:
        """The parent's limit, with a watchdog 2 s later in case a read blocks."""
        self._deadline = deadline
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if not math.isinf(deadline):
            self._watchdog = threading.Timer(deadline - time.monotonic() + 2.0, self.kill)
            self._watchdog.daemon = True
            self._watchdog.start()

    def _join(self, seconds: float) -> None:
        """Wait for the worker to exit and reap it (callers hold the lock)."""
        with contextlib.suppress(Exception):
            self._process.join(seconds)
            if self._process.exitcode is not None:
                self._reaped = True

    def _deadline_failure(self) -> SandboxError:
        if self._started:
            return SandboxError(timeout_cause(self.timeout_s or 0.0).message, "timeout")
        return SandboxError(
            f"the worker did not start its task within {SETUP_SECONDS:g} s (set-up: fork, "
            "imports, lock-down)",
            "crashed",
        )

    def _read(self) -> dict[str, Any]:
        """One message: bounded, ``torch.load(weights_only=True)``; failures raise."""
        try:
            raw = self._receiver.recv_bytes(MAX_MESSAGE_BYTES)
        except EOFError:
            self._join(5.0)
            raise self._fail(worker_died(self._process.exitcode)) from None
        except OSError as exc:
            raise self._fail(
                SandboxError(
                    f"the result is larger than {MAX_MESSAGE_BYTES} bytes ({exc})",
                    "result-too-large",
                )
            ) from None
        try:
            message = torch.load(io.BytesIO(raw), weights_only=True)
        except Exception as exc:
            raise self._fail(
                SandboxError(
                    f"the worker's reply is not plain data: {type(exc).__name__}: {exc}"[:2000],
                    "result-type",
                )
            ) from None
        if not isinstance(message, dict) or "kind" not in message:
            raise self._fail(SandboxError("malformed reply from the worker", "crashed"))
        return message

    def _output(self) -> str:
        return _read_tail(os.path.join(self._workdir, "output.log")) if self._workdir else ""

    def _fail(self, error: SandboxError) -> SandboxError:
        """Kill the worker and attach its output tail to ``error``."""
        self.kill()
        self._join(5.0)
        error.output = self._output()
        return error

    def _outcome(self, reply: dict[str, Any]) -> WorkerOutcome:
        self._join(2.0)
        self.kill()
        output = self._output()
        if "ok" not in reply:
            raise self._fail(SandboxError("malformed reply from the worker", "crashed"))
        if not reply["ok"]:
            line = reply.get("line")
            raise SandboxError(
                str(reply.get("message", "failed")),
                str(reply.get("reason", "runtime-error")),
                traceback=reply.get("traceback"),
                line=line if isinstance(line, int) else None,
                output=output,
                details=str(reply.get("details") or ""),
            )
        protections = [str(p) for p in reply.get("protections", [])]
        return WorkerOutcome(reply.get("value"), protections, output)


def run_sandboxed(
    target: Callable[..., T],
    *args: Any,
    limits: SandboxLimits,
    timeout_s: float,
    **kwargs: Any,
) -> T:
    """Run picklable top-level ``target(*args, **kwargs)`` in a sandboxed worker; return its result.

    The worker calls :func:`~.lockdown.enter_sandbox` on a fresh private folder, runs
    ``target`` and sends its result back. The wall-clock limit is ``min(timeout_s,
    limits.wall_seconds)`` from the moment ``target`` starts, enforced by the parent (SIGKILL
    to the worker's process group); shortly before it the worker raises a timeout inside the
    running code so that the report names the slow line.

    The result travels through ``torch.save``/``torch.load(weights_only=True)``: it may
    contain tensors, dicts, lists, tuples, strings, bytes, numbers, booleans and None (no
    custom classes), at most :data:`MAX_MESSAGE_BYTES`. Files written by ``target`` stay in
    the private folder, which is deleted afterwards: return what you need.

    Raises :class:`SandboxError` (``reason``: timeout, cpu-time, memory, killed, crashed,
    sandbox-denied, runtime-error, output-too-large, result-too-large, result-type) with the
    exception message and the traceback trimmed to frames compiled from
    :data:`~.rules.EDITED_FILENAME` (or any ``<edited ...>`` filename). A run in which the audit
    hook refused anything fails with ``sandbox-denied`` even if the code caught the error.
    """
    return Worker(target, args, kwargs, limits=limits, timeout_s=timeout_s).run().value
