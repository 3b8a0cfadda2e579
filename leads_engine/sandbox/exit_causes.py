"""One table of exit causes: why a worker process stopped, in the same words everywhere.

Reasons (the rule names of :class:`~.lockdown.SandboxError` and of the trial run's reports):
``timeout`` (the wall-clock limit), ``cpu-time`` (RLIMIT_CPU: SIGXCPU), ``memory`` (a
MemoryError under RLIMIT_AS), ``killed`` (SIGKILL: out of memory, or stopped),
``output-too-large`` (RLIMIT_FSIZE), ``sandbox-denied`` (the audit hook), ``crashed`` (another
signal, a nonzero exit) and ``runtime-error`` (any other exception of the task).
"""

from __future__ import annotations

import errno
import signal
from dataclasses import dataclass

from .lockdown import SandboxError

__all__ = [
    "ExitCause",
    "SoftTimeout",
    "exception_reason",
    "exit_cause",
    "timeout_cause",
    "worker_died",
]


class SoftTimeout(BaseException):
    """Raised in the worker shortly before the parent's hard kill, to locate the slow line."""


@dataclass(frozen=True)
class ExitCause:
    """Why a worker stopped without a result: a ``reason`` (rule name) and a readable message."""

    reason: str
    message: str


_SIGNAL_CAUSES: dict[int, tuple[str, str]] = {
    signal.SIGXCPU: ("cpu-time", "its CPU-time limit was reached (SIGXCPU)"),
    signal.SIGKILL: ("killed", "killed (SIGKILL: out of memory, or stopped)"),
    signal.SIGSEGV: ("crashed", "crashed (SIGSEGV: segmentation fault)"),
    signal.SIGABRT: ("crashed", "aborted (SIGABRT: e.g. a refused thread or process)"),
    signal.SIGBUS: ("crashed", "crashed (SIGBUS: bus error)"),
    signal.SIGXFSZ: ("output-too-large", "its file-size limit was reached (SIGXFSZ)"),
}


def exit_cause(exitcode: int | None) -> ExitCause:
    """A worker's exit code (negative: killed by that signal) as a reason and a message."""
    if exitcode is None or exitcode >= 0:
        return ExitCause("crashed", f"exit code {exitcode}")
    number = -exitcode
    if number in _SIGNAL_CAUSES:
        return ExitCause(*_SIGNAL_CAUSES[number])
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = "an unknown signal"
    return ExitCause("crashed", f"killed by signal {number} ({name})")


def timeout_cause(seconds: float) -> ExitCause:
    """The task ran past its wall-clock limit."""
    return ExitCause("timeout", f"wall-clock limit of {seconds:g} s reached")


def exception_reason(exc: BaseException) -> str:
    """The reason a task failed with ``exc`` (memory, timeout, output or sandbox limits)."""
    text = str(exc)
    if isinstance(exc, SoftTimeout):
        return "timeout"
    if isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and ("alloc" in text.lower() or "out of memory" in text)
    ):
        return "memory"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return "output-too-large"
    if isinstance(exc, PermissionError) and "sandbox:" in text:
        return "sandbox-denied"
    return "runtime-error"


def worker_died(exitcode: int | None) -> SandboxError:
    """The error of a worker that died before it replied, in the table's words."""
    cause = exit_cause(exitcode)
    return SandboxError(
        f"the worker process died ({cause.message}) before it reported a result", cause.reason
    )
