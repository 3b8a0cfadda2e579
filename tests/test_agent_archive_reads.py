"""How ``leads-agent`` reads the archive through ``query_archive``: every row, page by page,
whatever the server's row and byte caps cut off, and a clear error when one row is too big."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from leads_agent.agent import RunConfig, SearchRun
from leads_agent.connection import ToolResult
from leads_agent.errors import AgentError


class CappedArchive:
    """A stand-in server whose ``query_archive`` holds ``rows`` and answers at most
    ``byte_cap`` characters of rows per call, flagging the cut the way the real server does."""

    def __init__(self, rows: list[dict[str, Any]], byte_cap: int) -> None:
        self.rows = rows
        self.byte_cap = byte_cap
        self.calls: list[str] = []

    def has_tool(self, name: str) -> bool:
        return True

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        assert name == "query_archive"
        sql = arguments["sql"]
        self.calls.append(sql)
        limit, offset = map(int, re.search(r"LIMIT (\d+) OFFSET (\d+)$", sql).groups())
        wanted = self.rows[offset : offset + min(limit, arguments["max_rows"])]
        page, size = [], 0
        for row in wanted:
            size += len(str(row))
            if size > self.byte_cap:
                break
            page.append(row)
        truncated = len(page) < len(wanted)
        answer = {
            "columns": ["candidate_id", "code"],
            "rows": [[r["candidate_id"], r["code"]] for r in page],
            "row_count": len(page),
            "truncated": truncated,
            "notice": "cut at the byte cap" if truncated else None,
        }
        return ToolResult(ok=True, data=answer)


def _run(archive: CappedArchive) -> SearchRun:
    run = SearchRun(archive, policy=None, config=RunConfig(), view=None)  # type: ignore[arg-type]
    run.session_id = "s-1"
    return run


def test_every_row_comes_back_when_the_byte_cap_cuts_pages_short():
    rows = [{"candidate_id": f"c-{i}", "code": "x" * 900} for i in range(25)]
    archive = CappedArchive(rows, byte_cap=4000)  # about 4 rows per answer
    got = asyncio.run(_run(archive).query("SELECT candidate_id, code FROM candidates ORDER BY 1"))
    assert [r["candidate_id"] for r in got] == [r["candidate_id"] for r in rows]
    assert len(archive.calls) >= 7  # paged, never one silently shortened answer


def test_a_short_whole_answer_is_the_last_page():
    rows = [{"candidate_id": f"c-{i}", "code": ""} for i in range(3)]
    archive = CappedArchive(rows, byte_cap=10**6)
    got = asyncio.run(_run(archive).query("SELECT candidate_id, code FROM candidates ORDER BY 1"))
    assert len(got) == 3 and len(archive.calls) == 1


def test_a_row_larger_than_the_cap_is_an_error_not_a_shorter_list():
    rows = [{"candidate_id": "c-0", "code": "x" * 5000}]
    with pytest.raises(AgentError, match="larger than the server's result cap"):
        asyncio.run(_run(CappedArchive(rows, byte_cap=1000)).query("SELECT 1 ORDER BY 1"))
