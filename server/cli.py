"""``leads-server``: the LEADS MCP server over stdio (default) or streamable HTTP.

This module imports only the standard library at import time: worker processes re-import the
main module, and a light one keeps their start fast. The server is built inside :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="leads-server",
        description="LEADS MCP server: discover cardiac EP digital twins through MCP tools.",
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import anyio
    import torch

    from .app import build_server
    from .archive import ArchiveError

    torch.set_num_threads(1)
    try:
        server = build_server(
            args.archive, start_method=args.workers, compile_training=not args.no_compile
        )
    except ArchiveError as exc:
        print(f"leads-server: {exc}", file=sys.stderr)
        return 2
    server.service.pool.warm_up()
    try:
        if args.transport == "stdio":
            anyio.run(server.run_stdio_async)
        else:
            import uvicorn

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
            uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
