"""Helpers of the server tests: call a tool through the in-memory client and check the outcome."""

from __future__ import annotations

from typing import Any

from mcp import Client

REAL_NAMES = ("aliev", "panfilov", "rogers", "mcculloch", "mitchell", "schaeffer", "fenton")


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
