"""Scripts call the tools directly: ``leads_server.connect()`` opens the LEADS tools in-process,
over stdio or over streamable HTTP, and returns the pydantic result models.

.. code-block:: python

    import anyio
    from leads_server import connect

    async def main() -> None:
        async with connect() as tools:  # in-process; connect("stdio"), connect(url, token=...)
            session = await tools.start_session(dataset="ap", budget=3, anonymise=False)
            await tools.select_reaction(session.session_id, "aliev_panfilov")
            await tools.select_diffusion(session.session_id, "laplacian_global")
            trained = await tools.train_candidate(session.session_id)
            print(trained.best_val_loss, trained.diagnosis)

    if __name__ == "__main__":  # training workers re-import the main module
        anyio.run(main)

Every call goes through MCP (the same tools a host or ``leads-agent`` sees); a refused call
raises :class:`ToolCallError` with the server's message. In a notebook, a
:class:`~leads_server.models.QueryResult` shows as a table and :meth:`Tools.figures` returns
figures that show inline.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import mcp_types as types
from mcp import Client, StdioServerParameters
from pydantic import BaseModel

from .inputs import TOOL_INPUTS
from .models import (
    CandidateProgress,
    CandidateRecord,
    CatalogsResult,
    DraftResult,
    EvaluationResult,
    QueryResult,
    SessionStarted,
    StepRecorded,
    TrainingResult,
)

M = TypeVar("M", bound=BaseModel)


class ToolCallError(Exception):
    """A tool refused the call; the message says what to do instead."""


@dataclass(frozen=True)
class Figure:
    """A PNG figure a candidate came with; shows inline in a notebook."""

    png: bytes

    def _repr_png_(self) -> bytes:
        return self.png

    def save(self, path: str | Path) -> Path:
        """Write the PNG to ``path``."""
        target = Path(path)
        target.write_bytes(self.png)
        return target


class Tools:
    """The LEADS tools over one MCP connection, one typed method per tool."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def _result(self, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        request = TOOL_INPUTS[tool].model_validate(
            {k: v for k, v in arguments.items() if v is not None}
        )
        result = await self.client.call_tool(tool, request.model_dump(exclude_none=True))
        if result.is_error:
            text = " ".join(b.text for b in result.content if isinstance(b, types.TextContent))
            raise ToolCallError(text)
        return result

    async def call(self, tool: str, model: type[M], **arguments: Any) -> M:
        """Call ``tool`` and read its structured result as ``model``."""
        result = await self._result(tool, arguments)
        return model.model_validate(result.structured_content)

    # ------------------------------------------------------------------ the tools

    async def list_catalogs(self, session_id: str | None = None) -> CatalogsResult:
        return await self.call("list_catalogs", CatalogsResult, session_id=session_id)

    async def start_session(self, **arguments: Any) -> SessionStarted:
        """Arguments of :class:`~leads_server.inputs.StartSession` (dataset, budget, ...)."""
        return await self.call("start_session", SessionStarted, **arguments)

    async def select_reaction(
        self, session_id: str, reaction: str, hyperparameters: dict[str, int] | None = None
    ) -> DraftResult:
        return await self.call(
            "select_reaction",
            DraftResult,
            session_id=session_id,
            reaction=reaction,
            hyperparameters=hyperparameters,
        )

    async def select_diffusion(
        self, session_id: str, template: str, hyperparameters: dict[str, Any] | None = None
    ) -> DraftResult:
        return await self.call(
            "select_diffusion",
            DraftResult,
            session_id=session_id,
            template=template,
            hyperparameters=hyperparameters,
        )

    async def refine_diffusion(
        self, session_id: str, candidate_id: str, hyperparameters: dict[str, Any]
    ) -> DraftResult:
        return await self.call(
            "refine_diffusion",
            DraftResult,
            session_id=session_id,
            candidate_id=candidate_id,
            hyperparameters=hyperparameters,
        )

    async def modify_diffusion(self, session_id: str, source: str, **arguments: Any) -> DraftResult:
        return await self.call(
            "modify_diffusion", DraftResult, session_id=session_id, source=source, **arguments
        )

    async def modify_reaction(self, session_id: str, source: str, **arguments: Any) -> DraftResult:
        return await self.call(
            "modify_reaction", DraftResult, session_id=session_id, source=source, **arguments
        )

    async def simplify_diffusion(
        self, session_id: str, candidate_id: str, **arguments: Any
    ) -> DraftResult:
        return await self.call(
            "simplify_diffusion",
            DraftResult,
            session_id=session_id,
            candidate_id=candidate_id,
            **arguments,
        )

    async def train_candidate(
        self,
        session_id: str,
        epochs: int | None = None,
        wait: bool = True,
        warm_start: list[str] | None = None,
        learning_rate_scale: float = 1.0,
    ) -> TrainingResult:
        return await self.call(
            "train_candidate",
            TrainingResult,
            session_id=session_id,
            epochs=epochs,
            wait=wait,
            warm_start=warm_start or [],
            learning_rate_scale=learning_rate_scale,
        )

    async def wait_candidate(self, candidate_id: str, timeout_s: float = 45.0) -> CandidateProgress:
        return await self.call(
            "wait_candidate", CandidateProgress, candidate_id=candidate_id, timeout_s=timeout_s
        )

    async def cancel_candidate(self, candidate_id: str) -> CandidateProgress:
        return await self.call("cancel_candidate", CandidateProgress, candidate_id=candidate_id)

    async def query_archive(
        self, sql: str, session_id: str | None = None, max_rows: int = 200
    ) -> QueryResult:
        return await self.call(
            "query_archive", QueryResult, sql=sql, session_id=session_id, max_rows=max_rows
        )

    async def get_candidate(self, candidate_id: str) -> CandidateRecord:
        return await self.call("get_candidate", CandidateRecord, candidate_id=candidate_id)

    async def finetune_candidate(
        self,
        session_id: str,
        candidate_id: str,
        epochs: int = 10,
        learning_rate_scale: float = 1.0,
        warmup_epochs: float = 0.0,
    ) -> TrainingResult:
        return await self.call(
            "finetune_candidate",
            TrainingResult,
            session_id=session_id,
            candidate_id=candidate_id,
            epochs=epochs,
            learning_rate_scale=learning_rate_scale,
            warmup_epochs=warmup_epochs,
        )

    async def evaluate_candidate(
        self, session_id: str, candidate_id: str, split: str = "test"
    ) -> EvaluationResult:
        return await self.call(
            "evaluate_candidate",
            EvaluationResult,
            session_id=session_id,
            candidate_id=candidate_id,
            split=split,
        )

    async def record_step(
        self, session_id: str, thought: str, action: dict[str, Any], observation: str = ""
    ) -> StepRecorded:
        return await self.call(
            "record_step",
            StepRecorded,
            session_id=session_id,
            thought=thought,
            action=action,
            observation=observation,
        )

    async def figures(self, candidate_id: str) -> list[Figure]:
        """The candidate's figures (activation map once evaluated, training curves)."""
        result = await self._result("get_candidate", {"candidate_id": candidate_id})
        return [
            Figure(base64.b64decode(block.data))
            for block in result.content
            if isinstance(block, types.ImageContent)
        ]


def _stdio(archive: str | Path | None, compile_training: bool) -> StdioServerParameters:
    args = ["-m", "leads_server.cli"]
    if archive is not None:
        args += ["--archive", str(archive)]
    if not compile_training:
        args.append("--no-compile")
    env = {k: v for k, v in os.environ.items() if k.startswith(("LEADS_", "PATH", "HOME"))}
    return StdioServerParameters(command=sys.executable, args=args, env=env)


@asynccontextmanager
async def connect(
    target: str | None = None,
    *,
    archive: str | Path | None = None,
    token: str | None = None,
    compile_training: bool = False,
) -> AsyncIterator[Tools]:
    """The LEADS tools: in-process (``target`` None: a server on ``archive``, default
    ``$LEADS_HOME/archive.duckdb``, closed on exit), over stdio (``"stdio"``: a
    ``leads-server`` child process) or over streamable HTTP (an ``http(s)://`` URL, with the
    bearer ``token`` if the server wants one)."""
    if target is None:
        from .app import build_server

        server = build_server(Path(archive) if archive else None, compile_training=compile_training)
        try:
            async with Client(server) as client:
                yield Tools(client)
        finally:
            server.close()
    elif target == "stdio":
        async with Client(_stdio(archive, compile_training)) as client:
            yield Tools(client)
    elif target.startswith(("http://", "https://")):
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        headers = {"Authorization": f"Bearer {token}"} if token else None
        http = create_mcp_http_client(headers)
        async with http, Client(streamable_http_client(target, http_client=http)) as client:
            yield Tools(client)
    else:
        raise ValueError(
            f"connect(): target must be None, 'stdio' or an http(s) URL, not {target!r}"
        )
