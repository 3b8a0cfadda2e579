"""Helpers of the server tests: a tiny data set, and calling a tool through the in-memory
client with a check of the outcome."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcp import Client

from leads_engine.generator import BenchmarkConfig, generate_benchmark
from leads_engine.heart_mesh import make_lv_mesh

REAL_NAMES = ("aliev", "panfilov", "rogers", "mcculloch", "mitchell", "schaeffer", "fenton")


def save_tiny(home: Path, name: str = "tiny", **overrides: Any) -> Path:
    """A 200-node, 4-sample, 40 ms data set (about 0.1 s per training epoch)."""
    settings = {"n_samples": 4, "split_sizes": (2, 1, 1), "duration_ms": 40.0, **overrides}
    nodes = settings.pop("nodes", 200)
    data = generate_benchmark(
        BenchmarkConfig(reaction="ap", **settings), mesh=make_lv_mesh(nodes), name=name
    )
    return data.save(home / "datasets" / f"{name}.npz")


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool that must succeed; its structured content."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content[0].text
    assert result.structured_content is not None
    return result.structured_content


async def fails(client: Client, tool: str, **arguments: Any) -> str:
    """Call a tool that must fail; its error text."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return result.content[0].text


async def start(client: Client, **arguments: Any) -> str:
    settings = {"dataset": "tiny", "budget": 4, "anonymise": False, "epochs": 2, **arguments}
    return (await call(client, "start_session", **settings))["session_id"]


async def train(client: Client, session_id: str, **arguments: Any) -> tuple[dict, list]:
    events: list[tuple[float, float | None, str | None]] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        events.append((value, total, message))

    result = await client.call_tool(
        "train_candidate", {"session_id": session_id, **arguments}, progress_callback=progress
    )
    assert not result.is_error, result.content[0].text
    return result.structured_content, events
