"""``leads-server``: the LEADS MCP server over stdio (default) or streamable HTTP.

This module imports only the standard library at import time: worker processes re-import the
main module, and a light one keeps their start fast. The server is built inside :func:`main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import Any

#: Environment variables with the defaults of --job-timeout-factor and --job-timeout-floor.
TIMEOUT_FACTOR_ENV = "LEADS_JOB_TIMEOUT_FACTOR"
TIMEOUT_FLOOR_ENV = "LEADS_JOB_TIMEOUT_FLOOR"
#: Signals that stop the server gracefully (running candidates end failed, "interrupted").
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: Seconds the server waits, after a stop signal, for running trainings to archive their final
#: state and answer (their workers are killed at once), and for open HTTP requests.
SHUTDOWN_SECONDS = 10.0


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="leads-server",
        description="LEADS MCP server: discover cardiac EP digital twins through MCP tools.",
        epilog="leads-server reveal SESSION_ID [--archive PATH]: print what an anonymised "
        "session hides from its agent (its data set and the real names behind its aliases), "
        "for the user's eyes; no MCP tool can read it.",
    )
    parser.add_argument(
        "--transport",
        choices=("stdio", "http"),
        default="stdio",
        help="stdio (default; the client starts the server) or streamable HTTP at /mcp",
    )
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (8000)")
    parser.add_argument(
        "--archive",
        type=Path,
        default=None,
        help="DuckDB archive file (default $LEADS_HOME/archive.duckdb, LEADS_HOME=~/.leads)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("LEADS_SERVER_TOKEN"),
        help="HTTP only: require 'Authorization: Bearer TOKEN' (default $LEADS_SERVER_TOKEN)",
    )
    parser.add_argument(
        "--workers",
        choices=("forkserver", "spawn"),
        default="forkserver",
        help="how training worker processes start (forkserver: fast, default)",
    )
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="do not torch.compile the integrator step (faster start on tiny data sets)",
    )
    parser.add_argument(
        "--job-timeout-factor",
        type=_positive,
        default=os.environ.get(TIMEOUT_FACTOR_ENV, "10"),
        help="wall-clock limit of every training, fine-tuning and evaluation job: this factor "
        "times the expected time (epochs x seconds per epoch estimated from the data set's "
        f"size); default 10 or ${TIMEOUT_FACTOR_ENV}",
    )
    parser.add_argument(
        "--job-timeout-floor",
        type=_positive,
        default=os.environ.get(TIMEOUT_FLOOR_ENV, "300"),
        help="the least wall-clock limit of a job of up to 3 epochs, in seconds (longer jobs: "
        f"that much per 3 epochs); default 300 or ${TIMEOUT_FLOOR_ENV}",
    )
    _executor_arguments(parser)
    return parser.parse_args(argv)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _executor_arguments(parser: argparse.ArgumentParser) -> None:
    """Where training, fine-tuning and evaluation jobs run (:mod:`leads_server.executor`)."""
    jobs = parser.add_argument_group("job executor")
    jobs.add_argument(
        "--executor",
        choices=("local", "ray"),
        default=None,
        help="where training jobs run: local worker processes (default) or Ray tasks on a "
        "Ray cluster (pip install 'leads[ray]'); default $LEADS_EXECUTOR or local",
    )
    jobs.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster address (e.g. 10.0.0.5:6379 or auto; default $LEADS_RAY_ADDRESS; "
        "none: start a local Ray instance)",
    )
    jobs.add_argument(
        "--max-jobs",
        type=_count,
        default=None,
        help="trainings and evaluations at once; more calls wait in line ('queued'). Default "
        "$LEADS_MAX_JOBS, else one per core (local) or the cluster's CPUs per job (ray)",
    )
    jobs.add_argument(
        "--ray-cpus-per-job", type=_positive, default=1.0, help="CPUs per Ray job (1)"
    )
    jobs.add_argument(
        "--ray-gpus-per-job",
        type=float,
        default=0.0,
        help="GPUs per Ray job (0; fractions share a GPU)",
    )
    jobs.add_argument(
        "--ray-memory-gb",
        type=_positive,
        default=None,
        help="memory reserved per Ray job in GiB (default: none reserved)",
    )
    jobs.add_argument(
        "--ray-shared-path",
        default=None,
        help="a folder every Ray node mounts: data sets under it are read in place instead of "
        "travelling through the object store",
    )
    jobs.add_argument(
        "--ray-retries",
        type=int,
        default=0,
        help="times Ray re-runs a job whose worker or node died (0: the candidate fails)",
    )


def build_executor(args: argparse.Namespace) -> Any:
    """The executor the flags and environment ask for (:func:`~.executor.make_executor`)."""
    from .executor import ExecutorSettings, make_executor

    settings = ExecutorSettings.from_env(
        kind=args.executor,
        ray_address=args.ray_address,
        max_jobs=args.max_jobs,
        start_method=args.workers,
    )
    if settings.kind == "ray":
        from .ray_executor import RayResources

        resources = RayResources(
            num_cpus=args.ray_cpus_per_job,
            num_gpus=args.ray_gpus_per_job,
            memory_gb=args.ray_memory_gb,
        )
        settings = dataclasses.replace(
            settings,
            resources=resources,
            shared_path=args.ray_shared_path,
            retries=args.ray_retries,
        )
    return make_executor(settings)


async def _serve_stdio(server: Any) -> None:
    """Serve over stdio until stdin ends or a stop signal comes.

    On stdin's end the running trainings are cancelled (``cancelled``). On a stop signal the
    running workers are killed, their trainings end ``failed`` as interrupted and answer, the
    archive is closed, and the process exits at once: the transport's blocked read of stdin
    cannot be cancelled, and would otherwise keep the process alive until the client writes."""
    import anyio

    async with anyio.create_task_group() as group:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
                async for number in signals:
                    stopped = server.stop()
                    print(
                        f"leads-server: {signal.Signals(number).name}: stopping ({stopped} "
                        "running job(s) interrupted)",
                        file=sys.stderr,
                        flush=True,
                    )
                    with anyio.move_on_after(SHUTDOWN_SECONDS):
                        while server.service.training:
                            await anyio.sleep(0.05)
                        await anyio.sleep(0.5)  # the answers reach stdout
                    server.close()
                    sys.stderr.flush()
                    os._exit(0)

        group.start_soon(watch_signals)
        await server.run_stdio_async()
        group.cancel_scope.cancel()


def _serve_http(server: Any, app: Any, host: str, port: int) -> None:
    """Serve over streamable HTTP; a stop signal kills the running workers first (their
    trainings end ``failed`` as interrupted and answer), then uvicorn shuts down."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            server.stop()
            super().handle_exit(sig, frame)

    # uvicorn re-raises the stop signal after its shutdown: handled here, so that the archive
    # is still closed by main()
    for number in STOP_SIGNALS:
        signal.signal(number, lambda *_: None)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
    )
    Server(config).run()


def reveal(argv: list[str]) -> int:
    """``leads-server reveal SESSION_ID [--archive PATH]``: print an anonymised session's truth
    (:mod:`leads_server.archive.truth`) as JSON. Reads the truth file only, so it works while a
    server holds the archive."""
    import json

    from .archive.errors import ArchiveError
    from .archive.truth import TruthStore

    parser = argparse.ArgumentParser(
        prog="leads-server reveal",
        description="Print what an anonymised session hides from its agent: the data set's "
        "name, path and summary, and the real reaction name behind each alias.",
    )
    parser.add_argument("session_id")
    parser.add_argument(
        "--archive",
        type=Path,
        default=None,
        help="DuckDB archive file (default $LEADS_HOME/archive.duckdb, LEADS_HOME=~/.leads)",
    )
    args = parser.parse_args(argv)
    if args.archive is None:
        from leads_engine.dataset import leads_home

        args.archive = leads_home() / "archive.duckdb"
    try:
        truth = TruthStore(args.archive).read(args.session_id)
    except ArchiveError as exc:
        print(f"leads-server reveal: {exc}", file=sys.stderr)
        return 2
    revealed = {
        "session_id": truth.session_id,
        "dataset": truth.dataset,
        "dataset_path": truth.dataset_path,
        "true_reaction": truth.true_reaction,
        "aliases": {alias: real for real, alias in sorted(truth.aliases.items())},
        "dataset_summary": truth.dataset_summary,
    }
    print(json.dumps(revealed, indent=1, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reveal"]:
        return reveal(argv[1:])
    args = parse_args(argv)
    import anyio
    import torch

    from .app import build_server
    from .archive import ArchiveError
    from .jobs import JobLimits

    torch.set_num_threads(1)
    limits = JobLimits(factor=args.job_timeout_factor, floor_s=args.job_timeout_floor)
    try:
        executor = build_executor(args)
    except (RuntimeError, ValueError, ConnectionError) as exc:
        print(f"leads-server: cannot start the job executor: {exc}", file=sys.stderr)
        return 2
    try:
        server = build_server(
            args.archive,
            start_method=args.workers,
            compile_training=not args.no_compile,
            job_limits=limits,
            executor=executor,
        )
    except ArchiveError as exc:
        from .busy import busy_message, busy_server, is_busy

        if not is_busy(str(exc)):
            print(f"leads-server: {exc}", file=sys.stderr)
            return 2
        message = busy_message(args.archive, str(exc))
        print(f"leads-server: {message}", file=sys.stderr, flush=True)
        if args.transport == "stdio":  # the host sees the reason, not "Connection closed"
            anyio.run(busy_server(message).run_stdio_async)
        return 2
    # said once the archive is open: a start-up that fails says only why, in one line
    print(f"leads-server: jobs: {executor.describe()}", file=sys.stderr, flush=True)
    server.service.pool.warm_up()
    try:
        if args.transport == "stdio":
            anyio.run(_serve_stdio, server)
        else:
            from .http import build_http_app

            if args.host not in ("127.0.0.1", "localhost", "::1") and not args.token:
                print(
                    f"leads-server: warning: listening on {args.host} without --token",
                    file=sys.stderr,
                )
            app = build_http_app(server, args.host, args.port, args.token)
            print(
                f"leads-server: streamable HTTP on http://{args.host}:{args.port}/mcp"
                + (" (bearer token required)" if args.token else ""),
                file=sys.stderr,
                flush=True,
            )
            _serve_http(server, app, args.host, args.port)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
