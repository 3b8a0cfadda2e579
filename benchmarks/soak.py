"""Soak run: several MCP clients at once against the real ``leads-server`` over streamable HTTP.

    python benchmarks/soak.py [--clients 4 --calls 300 --seconds 600 --port 0]

It writes the tiny data set (200 nodes, 4 samples, 40 ms) into a temporary ``LEADS_HOME``,
starts ``leads-server --transport http --no-compile`` on 127.0.0.1 with a bearer token, and runs
``--clients`` concurrent clients (each its own streamable HTTP session, as ``leads-agent
--server-url`` connects) until ``--calls`` calls were made in all or ``--seconds`` passed (no
call starts after that; one in flight finishes). Each client opens a discovery session (1 epoch per
candidate, a budget larger than it can spend) and loops over a round of calls: ``select_reaction``,
``select_diffusion`` and ``train_candidate`` (cheap physical catalog templates), ``query_archive``,
``get_candidate``, ``list_catalogs``, the ``session://{id}/summary`` resource, and every fourth
round ``evaluate_candidate``.

A thread samples the server process's resident memory (and that of its worker processes) during
the run. At the end the server is stopped with SIGTERM and the archive file is opened with
:class:`leads_server.archive.Archive`, which must find: nothing left ``pending``, every training
the clients saw answer archived with that final status and no other candidate, every epoch
numbered from 1 without gaps (an ``ok`` candidate has all its epochs), every session's steps
numbered from 1 without gaps, one step per draft change and per training the clients saw, and
an evaluation row for each evaluation they saw answer (one that failed may have been archived
before its figures failed, so at most one per call). The figures are printed; the exit code is
1 when a check failed or a call failed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psutil
from leads_agent.connection import ServerConnection, connect
from leads_server.archive import FINAL_STATUSES, Archive, ArchiveError

from leads_engine.generator import BenchmarkConfig, generate_benchmark
from leads_engine.heart_mesh import make_lv_mesh

#: Generous deadlines (seconds): a busy machine imports torch slowly.
START_SECONDS = 180.0
STOP_SECONDS = 120.0
#: How often the server's memory is sampled (seconds).
SAMPLE_SECONDS = 0.25
#: The rotation of cheap catalog choices (physical diffusion: a few parameters each).
REACTIONS = ("aliev_panfilov", "mitchell_schaeffer", "fitzhugh_nagumo")
TEMPLATES = ("laplacian_global", "laplacian_nodewise")
#: Every how many rounds a client evaluates its last candidate.
EVALUATE_EVERY = 4
#: Calls that run a worker job (their latency is reported apart).
JOB_TOOLS = ("train_candidate", "evaluate_candidate")
SUMMARY_CALL = "session_summary"
DATASET = "tiny"
BUDGET = 200


# ---------------------------------------------------------------------------- set-up


def save_tiny(home: Path, name: str = DATASET) -> Path:
    """A 200-node, 4-sample, 40 ms data set under ``home/datasets`` (about 0.1 s per epoch)."""
    data = generate_benchmark(
        BenchmarkConfig(reaction="ap", n_samples=4, split_sizes=(2, 1, 1), duration_ms=40.0),
        mesh=make_lv_mesh(200),
        name=name,
    )
    return data.save(home / "datasets" / f"{name}.npz")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SoakServer:
    """``leads-server --transport http`` on 127.0.0.1 as a child process, with a token."""

    def __init__(self, home: Path, port: int) -> None:
        self.archive = home / "archive.duckdb"
        self.port = port or free_port()
        self.token = secrets.token_urlsafe(24)
        self.log = home / "server.log"
        command = [
            sys.executable,
            "-m",
            "leads_server.cli",
            "--transport",
            "http",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--archive",
            str(self.archive),
            "--no-compile",
        ]
        # the token goes by environment: not on the command line, and a token_urlsafe that
        # starts with "-" would read as an option there
        env = {**os.environ, "LEADS_HOME": str(home), "LEADS_SERVER_TOKEN": self.token}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, env=env)
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def log_tail(self, lines: int = 20) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    async def wait_ready(self) -> None:
        """Until the server accepts connections (it listens once torch is imported)."""
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited at start:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                await anyio.sleep(0.2)
        raise RuntimeError(f"the server did not listen within {START_SECONDS:.0f} s")

    def status_without_token(self) -> int:
        """The HTTP status of an MCP request without the token (401 expected)."""
        request = urllib.request.Request(
            self.url, data=b"{}", headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30.0) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def stop(self) -> int:
        """SIGTERM, then wait for the exit (SIGKILL, and its workers, only past the deadline);
        the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                for child in _descendants(self.process.pid):
                    child.kill()
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


class MemorySampler:
    """Samples the resident memory of a process (and of it with its descendants) in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.server: list[int] = []
        self.with_workers: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> None:
        try:
            rss = self.process.memory_info().rss
        except psutil.Error:
            return
        total = rss
        for child in _descendants(self.process.pid):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue
        self.server.append(rss)
        self.with_workers.append(total)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# ---------------------------------------------------------------------------- the clients


@dataclass
class Trained:
    """A training as its client saw it answer."""

    session_id: str
    status: str
    epochs: int


@dataclass
class Ledger:
    """What every client asked and saw: the calls, their latencies, the failures, the
    trainings, the expected steps and evaluations of each session."""

    calls: Counter[str] = field(default_factory=Counter)
    latencies: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    trained: dict[str, Trained] = field(default_factory=dict)
    steps: Counter[str] = field(default_factory=Counter)
    evaluations: Counter[str] = field(default_factory=Counter)
    evaluate_calls: Counter[str] = field(default_factory=Counter)
    sessions: list[str] = field(default_factory=list)


class CallQuota:
    """Calls left to all clients together, and the time they may run."""

    def __init__(self, calls: int, seconds: float) -> None:
        self._tickets = itertools.count()
        self.calls = calls
        self.deadline = time.monotonic() + seconds

    def take(self) -> bool:
        """Whether one more call may be made (and counts it)."""
        return time.monotonic() < self.deadline and next(self._tickets) < self.calls


class SoakClient:
    """One MCP client's loop of rounds over its own discovery session."""

    def __init__(self, index: int, connection: ServerConnection, ledger: Ledger) -> None:
        self.index = index
        self.connection = connection
        self.ledger = ledger
        self.session_id = ""

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any] | None:
        """Call a tool and record its latency; its data, or None on a failure (recorded)."""
        started = time.perf_counter()
        result = await self.connection.call(tool, arguments)
        self.ledger.latencies[tool].append(time.perf_counter() - started)
        self.ledger.calls[tool] += 1
        if not result.ok or not isinstance(result.data, dict):
            self.ledger.errors.append(f"client {self.index} {tool}: {result.text[:300]}")
            return None
        return result.data

    async def read_summary(self) -> None:
        started = time.perf_counter()
        try:
            await self.connection.read_resource(f"session://{self.session_id}/summary")
        except Exception as exc:  # a failed read is a soak error, recorded with its text
            self.ledger.errors.append(f"client {self.index} {SUMMARY_CALL}: {exc!r}"[:300])
        self.ledger.latencies[SUMMARY_CALL].append(time.perf_counter() - started)
        self.ledger.calls[SUMMARY_CALL] += 1

    async def run(self, quota: CallQuota) -> None:
        if not quota.take():
            return
        started = await self.call(
            "start_session",
            dataset=DATASET,
            budget=BUDGET,
            epochs=1,
            anonymise=False,
            seed=self.index,
        )
        if started is None:
            return
        self.session_id = started["session_id"]
        self.ledger.sessions.append(self.session_id)
        for number in itertools.count():
            if not await self.round(number, quota):
                return

    async def round(self, number: int, quota: CallQuota) -> bool:
        """One round of calls; False once the quota ends it (or the budget is spent)."""
        session = self.session_id
        shift = self.index + number
        draft = (
            ("select_reaction", {"reaction": REACTIONS[shift % len(REACTIONS)]}),
            # a round's own initial conductivity: the server refuses a structure trained before
            (
                "select_diffusion",
                {
                    "template": TEMPLATES[shift % len(TEMPLATES)],
                    "hyperparameters": {"conductivity": 1.0 + 0.01 * number},
                },
            ),
        )
        for tool, arguments in draft:
            if not quota.take():
                return False
            if await self.call(tool, session_id=session, **arguments) is not None:
                self.ledger.steps[session] += 1
        if number >= BUDGET or not quota.take():
            return False
        trained = await self.call("train_candidate", session_id=session, epochs=1)
        candidate_id = None
        if trained is not None:
            candidate_id = trained["candidate_id"]
            epochs = len(trained["train_losses"])
            self.ledger.trained[candidate_id] = Trained(session, trained["status"], epochs)
            self.ledger.steps[session] += 1
        sql = "SELECT status, count(*) FROM candidates GROUP BY status ORDER BY status"
        reads: list[tuple[str, dict[str, Any]]] = [("query_archive", {"sql": sql})]
        if candidate_id is not None:
            reads.append(("get_candidate", {"candidate_id": candidate_id}))
        reads.append(("list_catalogs", {"session_id": session}))
        for tool, arguments in reads:
            if not quota.take():
                return False
            await self.call(tool, **arguments)
        if not quota.take():
            return False
        await self.read_summary()
        ok = candidate_id is not None and trained is not None and trained["status"] == "ok"
        if ok and number % EVALUATE_EVERY == EVALUATE_EVERY - 1:
            if not quota.take():
                return False
            self.ledger.evaluate_calls[candidate_id] += 1
            evaluation = await self.call(
                "evaluate_candidate", session_id=session, candidate_id=candidate_id, split="test"
            )
            if evaluation is not None:
                self.ledger.evaluations[candidate_id] += 1
        return True


async def run_clients(url: str, token: str, clients: int, quota: CallQuota, ledger: Ledger) -> None:
    """``clients`` concurrent MCP sessions over streamable HTTP until the quota ends."""

    async def one(index: int) -> None:
        try:
            async with connect(server_url=url, token=token) as connection:
                await SoakClient(index, connection, ledger).run(quota)
        except Exception as exc:  # a broken connection is a soak error, not a crash
            ledger.errors.append(f"client {index} connection: {exc!r}"[:300])

    async with anyio.create_task_group() as group:
        for index in range(clients):
            group.start_soon(one, index)


# ---------------------------------------------------------------------------- the archive


def open_archive(path: Path) -> Archive:
    """The archive file, once the stopped server released it."""
    deadline = time.monotonic() + STOP_SECONDS
    while True:
        try:
            return Archive.open(path)
        except ArchiveError as exc:
            if "in use" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _all_rows(archive: Archive, sql: str) -> list[list[Any]]:
    result = archive.query(sql, max_rows=1_000_000, max_bytes=256 * 1024 * 1024, timeout_s=60.0)
    if result.truncated:
        raise ArchiveError(f"the check's query was cut ({result.truncated_reason}): {sql}")
    return result.rows


def check_archive(path: Path, ledger: Ledger) -> list[str]:
    """What the archive gets wrong against what the clients saw (empty when nothing)."""
    problems: list[str] = []
    with open_archive(path) as archive:
        if archive.recovered_candidates:
            problems.append(f"left pending by the server: {archive.recovered_candidates}")
        candidates = {
            row.candidate_id: row
            for session in archive.list_sessions()
            for row in archive.list_candidates(session.session_id)
        }
        not_final = {cid: row.status for cid, row in candidates.items()}
        not_final = {cid: s for cid, s in not_final.items() if s not in FINAL_STATUSES}
        if not_final:
            problems.append(f"candidates not final: {not_final}")
        for candidate_id, seen in ledger.trained.items():
            row = candidates.get(candidate_id)
            if row is None:
                problems.append(f"{candidate_id} ({seen.status}) is missing from the archive")
            elif (row.status, row.session_id) != (seen.status, seen.session_id):
                problems.append(f"{candidate_id}: archived {row.status}, answered {seen.status}")
        unseen = sorted(set(candidates) - set(ledger.trained))
        if unseen:
            problems.append(f"archived candidates no client saw answer: {unseen}")
        for candidate_id in candidates:
            detail = archive.get_candidate(candidate_id)
            numbers = [epoch.epoch for epoch in detail.epochs]
            seen = ledger.trained.get(candidate_id)
            if numbers != list(range(1, len(numbers) + 1)):
                problems.append(f"{candidate_id}: epochs {numbers} are not 1..n")
            elif detail.status == "ok" and len(numbers) != 1:
                problems.append(f"{candidate_id}: ok with {len(numbers)} epoch rows, not 1")
            elif seen is not None and seen.epochs != len(numbers):
                problems.append(
                    f"{candidate_id}: {len(numbers)} epoch rows, answered {seen.epochs}"
                )
            answered, called = ledger.evaluations[candidate_id], ledger.evaluate_calls[candidate_id]
            if not answered <= len(detail.evaluations) <= called:
                problems.append(
                    f"{candidate_id}: {len(detail.evaluations)} evaluations archived, "
                    f"{answered} answered of {called} calls"
                )
        orphans = _all_rows(
            archive,
            "SELECT count(*) FROM epochs WHERE candidate_id NOT IN "
            "(SELECT candidate_id FROM candidates)",
        )[0][0]
        if orphans:
            problems.append(f"{orphans} epoch rows of no candidate")
        steps = {
            row[0]: row[1:]
            for row in _all_rows(
                archive,
                "SELECT session_id, count(*), count(DISTINCT step), min(step), max(step) "
                "FROM steps GROUP BY session_id",
            )
        }
        for session_id in ledger.sessions:
            count, distinct, first, last = steps.get(session_id, (0, 0, None, None))
            expected = ledger.steps[session_id]
            if count and (count != distinct or first != 1 or last != count):
                problems.append(f"{session_id}: steps are not numbered 1..{count}")
            if count != expected:
                problems.append(f"{session_id}: {count} steps archived, {expected} answered")
        named = Counter(
            row[0]
            for row in _all_rows(
                archive,
                "SELECT action->>'candidate_id' FROM steps "
                "WHERE action->>'candidate_id' IS NOT NULL",
            )
        )
        twice = {cid: n for cid, n in named.items() if n != 1}
        missing = sorted(set(candidates) - set(named))
        if twice or missing:
            problems.append(f"training steps: repeated {twice}, missing {missing}")
    return problems


# ---------------------------------------------------------------------------- the run


@dataclass
class SoakReport:
    """The figures of one soak run."""

    clients: int
    ledger: Ledger
    wall_seconds: float
    rss_server: list[int]
    rss_with_workers: list[int]
    exit_code: int
    problems: list[str]

    @property
    def total_calls(self) -> int:
        return sum(self.ledger.calls.values())

    @property
    def failed(self) -> bool:
        return bool(self.problems or self.ledger.errors or self.exit_code != 0)

    def latency_ms(self, job_calls: bool) -> tuple[float, float, int]:
        """p50 and p95 (ms) of the calls that run a worker job, or of the others; their count."""
        values = sorted(
            seconds * 1000
            for tool, timings in self.ledger.latencies.items()
            if (tool in JOB_TOOLS) == job_calls
            for seconds in timings
        )
        if len(values) < 2:
            return (values[0], values[0], 1) if values else (0.0, 0.0, 0)
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cuts[49], cuts[94], len(values)

    def per_tool_latency(self) -> str:
        """Each tool's median and 95th-percentile latency (ms), to find which call is slow."""
        parts = []
        for tool, timings in sorted(self.ledger.latencies.items()):
            values = sorted(seconds * 1000 for seconds in timings)
            if len(values) >= 2:
                cuts = statistics.quantiles(values, n=100, method="inclusive")
                parts.append(f"{tool} {cuts[49]:.0f}/{cuts[94]:.0f}")
            elif values:
                parts.append(f"{tool} {values[0]:.0f}")
        return ", ".join(parts)

    def lines(self) -> list[str]:
        mib = 1024 * 1024
        per_tool = ", ".join(f"{tool} {n}" for tool, n in sorted(self.ledger.calls.items()))
        statuses = Counter(seen.status for seen in self.ledger.trained.values())
        other = self.latency_ms(job_calls=False)
        jobs = self.latency_ms(job_calls=True)
        rss, total = self.rss_server, self.rss_with_workers
        lines = [
            f"clients: {self.clients}",
            f"calls: {self.total_calls} ({per_tool})",
            f"errors: {len(self.ledger.errors)}",
            *[f"  {error}" for error in self.ledger.errors[:20]],
            f"wall time: {self.wall_seconds:.1f} s",
            f"calls/s: {self.total_calls / max(self.wall_seconds, 1e-9):.2f}",
            f"non-job calls: {other[2]}, latency p50 {other[0]:.0f} ms, p95 {other[1]:.0f} ms",
            f"job calls (train/evaluate): {jobs[2]}, latency p50 {jobs[0]:.0f} ms, "
            f"p95 {jobs[1]:.0f} ms",
            f"per tool, p50/p95 ms: {self.per_tool_latency()}",
            f"trainings: {len(self.ledger.trained)} ({dict(sorted(statuses.items()))})",
            f"evaluations: {sum(self.ledger.evaluations.values())}",
        ]
        if rss:
            lines.append(
                f"server RSS: start {rss[0] / mib:.0f} MiB, peak {max(rss) / mib:.0f} MiB, "
                f"end {rss[-1] / mib:.0f} MiB ({len(rss)} samples)"
            )
            lines.append(
                f"server + workers RSS: start {total[0] / mib:.0f} MiB, peak "
                f"{max(total) / mib:.0f} MiB, end {total[-1] / mib:.0f} MiB"
            )
        lines.append(f"server exit code after SIGTERM: {self.exit_code}")
        verdict = "ok" if not self.problems else "FAILED"
        lines.append(f"archive check: {verdict}")
        lines.extend(f"  {problem}" for problem in self.problems)
        return lines


async def run_soak(clients: int, calls: int, seconds: float, port: int, home: Path) -> SoakReport:
    """Write the tiny set under ``home``, start the server, run the clients, stop the server
    and check its archive."""
    save_tiny(home)
    server = SoakServer(home, port)
    ledger = Ledger()
    try:
        await server.wait_ready()
        refused = await anyio.to_thread.run_sync(server.status_without_token)
        with MemorySampler(server.process.pid) as memory:
            started = time.perf_counter()
            await run_clients(server.url, server.token, clients, CallQuota(calls, seconds), ledger)
            wall = time.perf_counter() - started
    finally:
        exit_code = server.stop()
    problems = check_archive(server.archive, ledger)
    if refused != 401:
        problems.append(f"a request without the token got HTTP {refused}, not 401")
    if exit_code != 0:
        problems.append(f"the server exited {exit_code}:\n{server.log_tail()}")
    return SoakReport(
        clients, ledger, wall, memory.server, memory.with_workers, exit_code, problems
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent MCP clients (4)")
    parser.add_argument("--calls", type=int, default=300, help="calls of all clients (300)")
    parser.add_argument("--seconds", type=float, default=600.0, help="time bound (600 s)")
    parser.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.calls < 1 or args.seconds <= 0:
        parser.error("--clients, --calls and --seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="leads-soak-") as folder:
        report = anyio.run(
            run_soak, args.clients, args.calls, args.seconds, args.port, Path(folder)
        )
    print("\n".join(report.lines()))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
