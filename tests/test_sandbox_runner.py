"""The one process runner and the OS lock-down (``leads_engine.sandbox.runner``/``lockdown``):
worker start, exit causes, time limits, reply bounds and cancellation."""

from __future__ import annotations

import fractions
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest
import torch

from leads_engine.sandbox import (
    SETUP_SECONDS,
    SandboxError,
    SandboxLimits,
    Worker,
    exit_cause,
    run_sandboxed,
    runner,
    timeout_cause,
)

CANARY_DIR = Path("/tmp/leads_canary_dir")
CANARY = CANARY_DIR / "canary.txt"
CANARY_TEXT = "untouched\n"
LIMITS = SandboxLimits(memory_bytes=3 * 2**30, file_size_bytes=8 * 2**20, cpu_seconds=30)
TIMEOUT = 4.0

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox needs POSIX")


def sandbox_dirs() -> set[str]:
    return {p.name for p in Path("/tmp").iterdir() if p.name.startswith("leads-sandbox-")}


@pytest.fixture(scope="module", autouse=True)
def canary():
    """A canary outside the sandbox, and the /tmp listing before the tests run."""
    CANARY_DIR.mkdir(exist_ok=True)
    CANARY.write_text(CANARY_TEXT)
    yield sandbox_dirs()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def gone(worker: Worker, seconds: float = 5.0) -> bool:
    """Whether the worker's process (killed and reaped) and its private folder have
    disappeared within ``seconds``."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if not Path(f"/proc/{worker.pid}").exists() and not Path(worker.workdir).exists():
            return True
        time.sleep(0.05)
    return False


# ----------------------------------------------------------------------------- lock-down


def test_worker_runs_in_a_private_folder():
    cwd = run_sandboxed(os.getcwd, limits=LIMITS, timeout_s=TIMEOUT)
    assert Path(cwd).name.startswith("leads-sandbox-")
    assert not Path(cwd).exists()  # removed afterwards


@pytest.mark.parametrize(
    ("target", "args", "phrase"),
    [
        (os.system, ("touch /tmp/LEADS_PWNED_direct",), "os.system"),
        (open, ("/etc/passwd",), "reading '/etc/passwd'"),
        (open, (str(CANARY), "w"), "writing"),
        (os.listdir, ("/",), "os.listdir"),
        (os.remove, (str(CANARY),), "os.remove"),
        (os.kill, (os.getpid(), 9), "os.kill"),
    ],
)
def test_audit_hook_refuses_direct_calls(target, args, phrase):
    with pytest.raises(SandboxError) as info:
        run_sandboxed(target, *args, limits=LIMITS, timeout_s=TIMEOUT)
    assert info.value.reason == "sandbox-denied"
    assert phrase in str(info.value)


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and os.geteuid() == 0), reason="root-only protections"
)
def test_root_gets_namespaces_and_no_capabilities():
    outcome = Worker(os.getcwd, limits=LIMITS, timeout_s=TIMEOUT).run()
    joined = " ".join(outcome.protections)
    assert "network namespace" in joined
    assert "private root" in joined or "read-only filesystem" in joined
    assert "no capabilities" in joined and "audit hook" in joined


# ----------------------------------------------------------------------------- exit causes


def test_one_table_names_every_exit_cause():
    assert exit_cause(-signal.SIGXCPU).reason == "cpu-time"
    assert "CPU-time limit" in exit_cause(-signal.SIGXCPU).message
    assert exit_cause(-signal.SIGKILL).reason == "killed"
    assert "SIGKILL" in exit_cause(-signal.SIGKILL).message
    assert "memory" in exit_cause(-signal.SIGKILL).message
    assert exit_cause(-signal.SIGSEGV).reason == "crashed"
    assert exit_cause(-signal.SIGXFSZ).reason == "output-too-large"
    assert "SIGUSR1" in exit_cause(-signal.SIGUSR1).message
    assert exit_cause(3) == exit_cause(3) and exit_cause(3).message == "exit code 3"
    assert timeout_cause(2.0).reason == "timeout"
    assert timeout_cause(2.0).message == "wall-clock limit of 2 s reached"


def test_a_worker_killed_by_a_signal_is_described_from_the_table():
    with pytest.raises(SandboxError) as info:
        Worker(os.abort, timeout_s=TIMEOUT).run()
    cause = exit_cause(-signal.SIGABRT)
    assert info.value.reason == cause.reason == "crashed"
    assert (
        str(info.value) == f"the worker process died ({cause.message}) before it reported a result"
    )


def test_a_nonzero_exit_is_described_from_the_table():
    with pytest.raises(SandboxError) as info:
        Worker(os._exit, (7,), timeout_s=TIMEOUT).run()
    assert info.value.reason == "crashed"
    assert "(exit code 7)" in str(info.value)


def test_wall_clock_and_cpu_limits():
    with pytest.raises(SandboxError) as info:
        run_sandboxed(time.sleep, 60, limits=LIMITS, timeout_s=1.5)
    assert info.value.reason == "timeout"
    assert str(info.value) == timeout_cause(1.5).message
    cpu = SandboxLimits(cpu_seconds=1)
    with pytest.raises(SandboxError) as info:
        run_sandboxed(math.factorial, 10**8, limits=cpu, timeout_s=20)
    assert info.value.reason == "cpu-time"


def test_set_up_does_not_count_against_the_wall_clock_limit():
    """A spawned worker imports torch before its task starts (seconds): a 1 s limit still lets
    a 0.2 s task finish, because the clock starts with the task (issue 19)."""
    started = time.monotonic()
    outcome = Worker(time.sleep, (0.2,), timeout_s=1.0, start_method="spawn").run()
    assert outcome.value is None
    assert time.monotonic() - started < SETUP_SECONDS


# ----------------------------------------------------------------------------- replies


def test_replies_are_plain_data_only():
    """The reply is read with ``torch.load(weights_only=True)``: no custom classes."""
    assert Worker(torch.ones, (3,), timeout_s=TIMEOUT).run().value.tolist() == [1.0] * 3
    with pytest.raises(SandboxError) as info:
        Worker(fractions.Fraction, (1, 3), timeout_s=TIMEOUT).run()
    assert info.value.reason == "result-type"
    assert "not plain data" in str(info.value)


def test_replies_are_bounded(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(runner, "MAX_MESSAGE_BYTES", 4096)
    with pytest.raises(SandboxError) as info:
        Worker(torch.zeros, (10_000,), timeout_s=TIMEOUT).run()
    assert info.value.reason == "result-too-large"


def test_failures_carry_the_message_and_the_full_traceback():
    with pytest.raises(SandboxError) as info:
        Worker(int, ("not a number",), timeout_s=TIMEOUT).run()
    assert info.value.reason == "runtime-error"
    assert str(info.value).startswith("ValueError: invalid literal")
    assert "Traceback" in info.value.details


# ----------------------------------------------------------------------------- cancellation


@pytest.mark.anyio
async def test_cancelling_the_awaiting_task_kills_the_worker():
    worker = Worker(time.sleep, (60,), timeout_s=120)
    with anyio.move_on_after(1.0) as scope:
        await worker.run_async()
    assert scope.cancelled_caught
    assert worker.pid is not None and gone(worker)


def test_stop_from_another_thread_ends_a_waiting_run():
    worker = Worker(time.sleep, (60,), timeout_s=120)
    worker.start()
    threading.Timer(0.5, worker.stop).start()
    with pytest.raises(SandboxError):
        worker.receive()
    assert gone(worker)


def test_zz_nothing_escaped(canary):
    assert CANARY.read_text() == CANARY_TEXT
    assert not Path("/tmp/LEADS_PWNED_direct").exists()
    assert sandbox_dirs() <= canary, f"left behind: {sandbox_dirs() - canary}"
