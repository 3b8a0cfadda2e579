"""Fault injection against the real ``leads-server`` process: each test starts the server (over
streamable HTTP on 127.0.0.1, or over stdio through the agent's own connection), injects one
fault, records what the caller sees, stops the server and reads what the archive file holds.

Every test ends with the same two checks on the archive file read after the server stopped:
no candidate is left ``pending``, and every candidate that completed before the fault is still
there with its status. The rows of the README's fault matrix are these tests.

The tiny data set (200 nodes, 40 ms) keeps an epoch under a second; training faults use edited
diffusion code that misbehaves only above the 60-node trial mesh, so that it passes the sandbox's
trial run and fails at training size. Waits are on events (a worker process appearing, the server
exiting, the archive lock released) with generous deadlines, never on fixed sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import duckdb
import pytest
from leads_agent.connection import ServerConnection, connect
from leads_server.archive import INTERRUPTED_ERROR, Archive

pytest_plugins = ("server_fixtures",)
pytestmark = pytest.mark.anyio

#: Generous deadlines (seconds): a busy machine starts torch slowly.
START_SECONDS = 180.0
STOP_SECONDS = 120.0

TEMPLATE = "laplacian_global"
ORIGINAL = "        return self.conductivity * graph.edge_weight\n"


def edited(*lines: str) -> str:
    """The catalog's ``laplacian_global`` with ``lines`` inserted at the top of
    ``edge_conductance`` (indented there; the integrator calls it); the trial run uses 60
    nodes, training the tiny set's 200."""
    source = (Path(__file__).parents[1] / "catalogs" / "diffusion" / f"{TEMPLATE}.py").read_text()
    assert ORIGINAL in source
    body = "".join(f"        {line}\n" for line in lines)
    return source.replace(ORIGINAL, body + ORIGINAL)


NAN_AT_TRAINING_SIZE = edited(
    "if self.num_nodes > 60:", "    return self.conductivity * graph.edge_weight * torch.nan"
)
HUGE_TENSOR_AT_TRAINING_SIZE = edited(
    "if self.num_nodes > 60:", "    u = u + torch.ones(2**36, device=u.device).sum()"
)
LOOP_AT_TRAINING_SIZE = edited("while self.num_nodes > 60:", "    u = u + 0.0")
#: finite for the first epoch's calls at training size (60 per epoch on the tiny set, counted),
#: NaN from the second epoch on
NAN_FROM_SECOND_EPOCH = edited(
    "if self.num_nodes > 60:",
    "    try:",
    "        self.calls += 1",
    "    except AttributeError:",
    "        self.calls = 1",
    "    if self.calls > 90:",
    "        return self.conductivity * graph.edge_weight * torch.nan",
)


# ---------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``leads-server --transport http`` on 127.0.0.1 as a child process of the test."""

    def __init__(self, home: Path, *options: str) -> None:
        self.archive = home / "archive.duckdb"
        self.port = _free_port()
        self.log = home / "server.log"
        command = [
            sys.executable,
            "-m",
            "leads_server.cli",
            "--transport",
            "http",
            "--port",
            str(self.port),
            "--archive",
            str(self.archive),
            "--no-compile",
            *options,
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, env=dict(os.environ))
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                await anyio.sleep(0.2)
        raise AssertionError(f"the server did not listen within {START_SECONDS} s")

    async def wait_exit(self) -> int:
        deadline = time.monotonic() + STOP_SECONDS
        while self.process.poll() is None:
            assert time.monotonic() < deadline, "the server did not exit"
            await anyio.sleep(0.1)
        return self.process.returncode

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def stop(self) -> int:
        """SIGTERM, then wait for the exit (SIGKILL only past the deadline)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@asynccontextmanager
async def running_server(
    home: Path, *options: str
) -> AsyncIterator[tuple[ServerProcess, ServerConnection]]:
    """A started server and a connection to it; the server is stopped on the way out."""
    server = ServerProcess(home, *options)
    try:
        await server.wait_ready()
        async with connect(server_url=server.url) as connection:
            yield server, connection
    finally:
        server.stop()
        for pid in _descendants(server.process.pid):  # orphaned workers of a killed server
            _kill(pid)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(entry))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def training_workers(server_pid: int) -> list[int]:
    """Worker processes of the server: the children of its fork server."""
    tree = _children()
    forkservers = [p for p in tree.get(server_pid, []) if "forkserver" in _cmdline(p)]
    return [worker for fork in forkservers for worker in tree.get(fork, [])]


async def wait_for_worker(server_pid: int) -> int:
    """The first training worker to appear."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        workers = training_workers(server_pid)
        if workers:
            return workers[0]
        await anyio.sleep(0.1)
    raise AssertionError("no training worker started")


async def workers_left(server_pid: int, seconds: float = 60.0) -> list[int]:
    """The server's training workers once they are gone, or those still alive after
    ``seconds``: a killed worker may outlive its archive row by a moment on a busy machine."""
    deadline = time.monotonic() + seconds
    while (workers := training_workers(server_pid)) and time.monotonic() < deadline:
        await anyio.sleep(0.1)
    return workers


# ---------------------------------------------------------------------------- tool calls


async def ok(connection: ServerConnection, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await connection.call(tool, arguments)
    assert result.ok, result.text
    return result.data


async def new_session(connection: ServerConnection) -> str:
    started = await ok(
        connection, "start_session", dataset="tiny", epochs=1, budget=10, anonymise=False
    )
    return started["session_id"]


async def trained_ok(connection: ServerConnection, session_id: str) -> str:
    """A completed candidate (catalog code), the one that must survive the fault."""
    await ok(connection, "select_reaction", session_id=session_id, reaction="aliev_panfilov")
    await ok(connection, "select_diffusion", session_id=session_id, template=TEMPLATE)
    result = await ok(connection, "train_candidate", session_id=session_id, epochs=1)
    assert result["status"] == "ok", result
    return result["candidate_id"]


async def draft_edit(connection: ServerConnection, session_id: str, source: str) -> None:
    await ok(connection, "select_reaction", session_id=session_id, reaction="aliev_panfilov")
    await ok(
        connection, "modify_diffusion", session_id=session_id, template=TEMPLATE, source=source
    )


async def train(connection: ServerConnection, session_id: str, epochs: int = 1) -> Any:
    return await connection.call("train_candidate", {"session_id": session_id, "epochs": epochs})


# ---------------------------------------------------------------------------- the archive


def archived(path: Path) -> dict[str, dict[str, Any]]:
    """Candidates in the archive file as the stopped server left it (read-only: no recovery),
    waiting for the file to be released."""
    deadline = time.monotonic() + STOP_SECONDS
    while True:
        try:
            con = duckdb.connect(str(path), read_only=True)
            break
        except duckdb.Error:
            assert time.monotonic() < deadline, "the archive stayed locked"
            time.sleep(0.2)
    try:
        rows = con.execute(
            "SELECT candidate_id, status, error, best_epoch, weights IS NOT NULL FROM candidates"
        ).fetchall()
    finally:
        con.close()
    return {
        row[0]: {"status": row[1], "error": row[2], "best_epoch": row[3], "has_weights": row[4]}
        for row in rows
    }


def assert_no_loss(candidates: dict[str, dict[str, Any]], completed: dict[str, str]) -> None:
    """Zero candidates pending, zero completed candidates lost or changed."""
    pending = [cid for cid, row in candidates.items() if row["status"] == "pending"]
    assert pending == [], candidates
    for candidate_id, status in completed.items():
        assert candidates[candidate_id]["status"] == status, candidates


# ---------------------------------------------------------------------------- faults


async def _divergence(
    home: Path, prepare: Callable[[ServerConnection, str], Any], epochs: int
) -> tuple[dict, dict]:
    async with running_server(home) as (server, connection):
        session_id = await new_session(connection)
        completed = {await trained_ok(connection, session_id): "ok"}
        await prepare(connection, session_id)
        result = await train(connection, session_id, epochs)
        assert result.ok, result.text
    candidates = archived(server.archive)
    assert_no_loss(candidates, completed)
    return result.data, candidates


async def test_divergence_at_the_first_epoch_is_unstable(home: Path) -> None:
    async def conductive(connection: ServerConnection, session_id: str) -> None:
        await ok(connection, "select_reaction", session_id=session_id, reaction="aliev_panfilov")
        await ok(
            connection,
            "select_diffusion",
            session_id=session_id,
            template=TEMPLATE,
            hyperparameters={"conductivity": 100.0},
        )

    result, candidates = await _divergence(home, conductive, 1)
    assert result["status"] == "unstable"
    assert result["failure"]["epoch"] == 1 and result["failure"]["step"] >= 0
    assert "time_ms" in result["failure"] and "diverged" in result["diagnosis"]
    assert result["best_epoch"] is None and result["error"] is None
    assert (result["steps_used"], result["budget_left"]) == (2, 8)  # one step per trained one
    row = candidates[result["candidate_id"]]
    assert row["status"] == "unstable" and not row["has_weights"]
    assert json.loads(row["error"])["epoch"] == 1


async def test_divergence_at_a_later_epoch_keeps_the_best_weights(home: Path) -> None:
    async def later(connection: ServerConnection, session_id: str) -> None:
        await draft_edit(connection, session_id, NAN_FROM_SECOND_EPOCH)

    result, candidates = await _divergence(home, later, 3)
    assert result["status"] == "unstable"
    assert result["failure"]["epoch"] >= 2 and result["best_epoch"] == 1
    row = candidates[result["candidate_id"]]
    assert row["status"] == "unstable" and row["has_weights"] and row["best_epoch"] == 1


async def test_nan_only_at_training_size_is_unstable(home: Path) -> None:
    async def nan(connection: ServerConnection, session_id: str) -> None:
        await draft_edit(connection, session_id, NAN_AT_TRAINING_SIZE)

    result, candidates = await _divergence(home, nan, 1)
    assert result["status"] == "unstable" and result["failure"]["epoch"] == 1
    assert candidates[result["candidate_id"]]["status"] == "unstable"


async def test_worker_out_of_memory_fails_the_candidate(home: Path) -> None:
    async with running_server(home) as (server, connection):
        session_id = await new_session(connection)
        completed = {await trained_ok(connection, session_id): "ok"}
        await draft_edit(connection, session_id, HUGE_TENSOR_AT_TRAINING_SIZE)
        result = await train(connection, session_id)
        assert result.ok, result.text
        assert result.data["status"] == "failed"
        assert "memory" in result.data["error"].lower() or "alloc" in result.data["error"]
        assert (await ok(connection, "query_archive", sql="SELECT 1"))["rows"] == [[1]]
    candidates = archived(server.archive)
    assert_no_loss(candidates, completed)
    assert candidates[result.data["candidate_id"]]["status"] == "failed"


async def test_worker_hang_stops_at_the_wall_clock_limit(home: Path) -> None:
    options = ("--job-timeout-factor", "5", "--job-timeout-floor", "8")
    async with running_server(home, *options) as (server, connection):
        session_id = await new_session(connection)
        completed = {await trained_ok(connection, session_id): "ok"}
        await draft_edit(connection, session_id, LOOP_AT_TRAINING_SIZE)
        result = await train(connection, session_id)
        assert result.ok, result.text
        assert result.data["status"] == "failed"
        assert "wall-clock limit of 8 s for 1 epochs reached" in result.data["error"]
        assert await workers_left(server.process.pid) == []
    candidates = archived(server.archive)
    assert_no_loss(candidates, completed)
    assert "wall-clock limit" in candidates[result.data["candidate_id"]]["error"]


async def test_worker_killed_by_a_signal_fails_the_candidate(home: Path) -> None:
    async with running_server(home) as (server, connection):
        session_id = await new_session(connection)
        completed = {await trained_ok(connection, session_id): "ok"}
        await draft_edit(connection, session_id, LOOP_AT_TRAINING_SIZE)
        async with anyio.create_task_group() as group:
            outcome: list[Any] = []

            async def training() -> None:
                outcome.append(await train(connection, session_id))

            group.start_soon(training)
            os.kill(await wait_for_worker(server.process.pid), signal.SIGKILL)
        result = outcome[0]
        assert result.ok and result.data["status"] == "failed", result.text
        assert "SIGKILL" in result.data["error"]
    candidates = archived(server.archive)
    assert_no_loss(candidates, completed)
    assert candidates[result.data["candidate_id"]]["status"] == "failed"


async def _fault_mid_training(
    home: Path, fault: Callable[[ServerProcess], Any]
) -> tuple[ServerProcess, dict[str, str], list[Any]]:
    """Train looping edited code and inject ``fault`` once its worker runs; the caller's
    outcome (a result, or the connection's error). The worker must not outlive the server."""
    outcome: list[Any] = []
    workers: list[int] = []
    try:
        async with running_server(home) as (server, connection):
            session_id = await new_session(connection)
            completed = {await trained_ok(connection, session_id): "ok"}
            await draft_edit(connection, session_id, LOOP_AT_TRAINING_SIZE)
            async with anyio.create_task_group() as group:

                async def training() -> None:
                    outcome.append(await train(connection, session_id))

                group.start_soon(training)
                workers.append(await wait_for_worker(server.process.pid))
                await fault(server)
                with anyio.fail_after(STOP_SECONDS):
                    await server.wait_exit()
    except Exception as exc:  # the connection of a stopped server may fail on the way out
        outcome.append(exc)
    deadline = time.monotonic() + STOP_SECONDS
    while Path(f"/proc/{workers[0]}").exists():  # no worker outlives the server
        assert time.monotonic() < deadline, f"worker {workers[0]} outlived the server"
        await anyio.sleep(0.05)
    return server, completed, outcome


async def test_server_sigterm_interrupts_running_candidates(home: Path) -> None:
    async def sigterm(server: ServerProcess) -> None:
        server.signal(signal.SIGTERM)

    server, completed, outcome = await _fault_mid_training(home, sigterm)
    assert server.process.returncode == 0, server.log.read_text()
    result = outcome[0]
    assert result.ok and result.data["status"] == "failed", result
    assert result.data["error"] == INTERRUPTED_ERROR
    candidates = archived(server.archive)  # as the server left it: no recovery needed
    assert_no_loss(candidates, completed)
    assert candidates[result.data["candidate_id"]]["error"] == INTERRUPTED_ERROR
    assert await workers_left(server.process.pid) == []


async def test_server_sigkill_is_recovered_on_reopen(home: Path) -> None:
    async def sigkill(server: ServerProcess) -> None:
        server.signal(signal.SIGKILL)

    server, completed, outcome = await _fault_mid_training(home, sigkill)
    assert server.process.returncode == -signal.SIGKILL
    assert not getattr(outcome[0], "ok", False)  # the caller's connection broke
    left = archived(server.archive)
    interrupted = [cid for cid, row in left.items() if row["status"] == "pending"]
    assert len(interrupted) == 1  # a killed server cannot finish it: reopening does
    with Archive.open(server.archive) as archive:
        assert archive.recovered_candidates == interrupted
    candidates = archived(server.archive)
    assert_no_loss(candidates, completed)
    assert candidates[interrupted[0]] | {"error": None} == {
        "status": "failed",
        "error": None,
        "best_epoch": None,
        "has_weights": False,
    }
    assert candidates[interrupted[0]]["error"] == INTERRUPTED_ERROR


async def test_client_cancel_mid_training_cancels_the_candidate(home: Path) -> None:
    async with running_server(home) as (server, connection):
        session_id = await new_session(connection)
        completed = {await trained_ok(connection, session_id): "ok"}
        await draft_edit(connection, session_id, LOOP_AT_TRAINING_SIZE)
        async with anyio.create_task_group() as group:
            group.start_soon(train, connection, session_id)
            await wait_for_worker(server.process.pid)
            group.cancel_scope.cancel()
        deadline = time.monotonic() + STOP_SECONDS
        while True:  # the server finishes the candidate once it sees the cancellation
            rows = await ok(
                connection,
                "query_archive",
                sql="SELECT status, error FROM candidates ORDER BY created_at",
            )
            if rows["rows"][-1][0] != "pending":
                break
            assert time.monotonic() < deadline, rows
            await anyio.sleep(0.2)
        assert rows["rows"][-1][0] == "cancelled", rows
        assert await workers_left(server.process.pid) == []
        assert (await ok(connection, "query_archive", sql="SELECT 1"))["rows"] == [[1]]
    candidates = archived(server.archive)
    assert_no_loss(candidates, completed)


async def test_client_disconnect_over_stdio_ends_the_candidate(home: Path) -> None:
    archive = home / "archive.duckdb"
    outcome: list[Any] = []
    with anyio.move_on_after(STOP_SECONDS):
        async with connect(archive=str(archive), compile_training=False) as connection:
            session_id = await new_session(connection)
            completed = {await trained_ok(connection, session_id): "ok"}
            await draft_edit(connection, session_id, LOOP_AT_TRAINING_SIZE)
            async with anyio.create_task_group() as group:

                async def training() -> None:
                    outcome.append(await train(connection, session_id))

                group.start_soon(training)
                await _wait_for_pending_candidate(connection)
                group.cancel_scope.cancel()  # leaving the connection closes the server's stdin
    candidates = archived(archive)  # waits until the server released the file
    assert_no_loss(candidates, completed)
    last = list(candidates.values())[-1]
    assert last["status"] == "cancelled", candidates
    assert outcome == []  # the call was abandoned with the connection


def _stdio_server_pid() -> int:
    """The ``leads-server`` this test process started over stdio."""
    servers = [p for p in _descendants(os.getpid()) if "leads_server.cli" in _cmdline(p)]
    assert len(servers) == 1, servers
    return servers[0]


async def test_server_sigterm_over_stdio_interrupts_running_candidates(home: Path) -> None:
    archive = home / "archive.duckdb"
    outcome: list[Any] = []
    with anyio.move_on_after(STOP_SECONDS):
        try:
            async with connect(archive=str(archive), compile_training=False) as connection:
                session_id = await new_session(connection)
                completed = {await trained_ok(connection, session_id): "ok"}
                await draft_edit(connection, session_id, LOOP_AT_TRAINING_SIZE)
                async with anyio.create_task_group() as group:

                    async def training() -> None:
                        outcome.append(await train(connection, session_id))

                    group.start_soon(training)
                    pid = _stdio_server_pid()
                    await wait_for_worker(pid)
                    os.kill(pid, signal.SIGTERM)
        except Exception as exc:  # the connection ends with the server
            outcome.append(exc)
    assert outcome, "the call did not end"
    result = outcome[0]  # the training answers before the server exits
    assert result.ok and result.data["status"] == "failed", result
    assert result.data["error"] == INTERRUPTED_ERROR
    candidates = archived(archive)  # as the server left it: no recovery needed
    assert_no_loss(candidates, completed)
    last = list(candidates.values())[-1]
    assert (last["status"], last["error"]) == ("failed", INTERRUPTED_ERROR), candidates


async def _wait_for_pending_candidate(connection: ServerConnection) -> None:
    """Until a candidate is training (its worker runs the edited code)."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        sql = "SELECT count(*) FROM candidates WHERE status = 'pending'"
        if (await ok(connection, "query_archive", sql=sql))["rows"][0][0]:
            return
        assert time.monotonic() < deadline, "no training started"
        await anyio.sleep(0.2)


async def test_unwritable_run_folder_keeps_the_evaluation(home: Path) -> None:
    async with running_server(home) as (server, connection):
        session_id = await new_session(connection)
        candidate_id = await trained_ok(connection, session_id)
        blocked = home / "runs" / session_id
        blocked.parent.mkdir(parents=True, exist_ok=True)
        blocked.write_text("a file where the run folder goes")
        result = await connection.call(
            "evaluate_candidate",
            {"session_id": session_id, "candidate_id": candidate_id, "split": "test"},
        )
        assert not result.ok
        assert str(blocked / candidate_id) in result.text and "is archived" in result.text
        evaluations = await ok(connection, "query_archive", sql="SELECT count(*) FROM evaluations")
        assert evaluations["rows"] == [[1]]
        blocked.unlink()  # the server keeps serving: once writable, the figures come
        again = await ok(
            connection,
            "evaluate_candidate",
            session_id=session_id,
            candidate_id=candidate_id,
            split="test",
        )
        assert len(again["files"]) >= 1
    candidates = archived(server.archive)
    assert_no_loss(candidates, {candidate_id: "ok"})
