"""``leads-server --transport http`` on 127.0.0.1 as a child process of a test: started on a free
port with its own ``$LEADS_HOME``, waited for until it listens (on the socket, with a generous
deadline for a busy machine), and stopped at the end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Seconds a busy machine may take to start the server (torch's import dominates).
START_SECONDS = 180.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def http_server(home: Path, token: str | None = None) -> Iterator[str]:
    """The URL of a running ``leads-server --transport http --no-compile`` on ``home``."""
    port = free_port()
    command = [sys.executable, "-m", "leads_server.cli", "--no-compile", "--transport", "http"]
    command += ["--port", str(port)] + (["--token", token] if token else [])
    server = subprocess.Popen(
        command,
        env={**os.environ, "LEADS_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + START_SECONDS
        while not listening(port):
            if server.poll() is not None:
                raise AssertionError(f"leads-server exited: {server.stderr.read()[-2000:]}")
            assert time.monotonic() < deadline, "leads-server did not listen in time"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.terminate()
        server.wait(timeout=60)
