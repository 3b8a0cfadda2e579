"""MCP completions (``completion/complete``) for the arguments of the prompts and resources.

Values are chosen by the argument's name: diffusion template names (``name``, ``template``),
the session's reaction names (``reaction``: its aliases when anonymised, and ``neural``),
session ids, candidate ids (of the session named in the context's arguments, else of every
session), data set names (the benchmark names and the sets saved under ``$LEADS_HOME``, never
those of anonymised sessions) and
budgets. The partial value filters by prefix; at most :data:`MAX_VALUES` are returned (the spec's
limit), with ``total`` and ``hasMore`` telling how many matched. Unknown references get an
empty list, as the spec allows.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import mcp_types as types
from mcp.server.mcpserver import MCPServer

from leads_engine import diffusion as diffusion_catalog
from leads_engine.dataset import datasets_dir

from .catalog_view import reaction_names
from .errors import DiscoveryError
from .service import DiscoveryService

MAX_VALUES = 100
BENCHMARKS = ("ap", "rm", "ms", "fhn", "fk")
BUDGETS = ("4", "8", "15", "30")
TEMPLATE_ARGUMENTS = ("name", "template")
CANDIDATE_ARGUMENTS = ("candidate_id", "first", "second")


def _completion(values: Iterable[str], prefix: str) -> types.Completion:
    matched = sorted({v for v in values if v.lower().startswith(prefix.lower())})
    return types.Completion(
        values=matched[:MAX_VALUES], total=len(matched), has_more=len(matched) > MAX_VALUES
    )


def dataset_names(hidden: set[Path]) -> list[str]:
    """Benchmark names and the data sets saved under ``$LEADS_HOME/datasets``, except the
    files in ``hidden`` (the data sets of anonymised sessions)."""
    folder = datasets_dir()
    saved = [path.stem for path in folder.glob("*.npz")] if folder.is_dir() else []
    names = dict.fromkeys([*BENCHMARKS, *saved])
    return [name for name in names if (folder / f"{name}.npz").resolve() not in hidden]


class Completions:
    """The completion values of one server's service."""

    def __init__(self, service: DiscoveryService) -> None:
        self.service = service

    def session_ids(self) -> list[str]:
        return [row.session_id for row in self.service.archive.list_sessions()]

    def candidate_ids(self, session_id: str | None) -> list[str]:
        sessions = [session_id] if session_id else self.session_ids()
        return [
            row.candidate_id
            for sid in sessions
            for row in self.service.archive.list_candidates(sid)
            if row.status != "refused"
        ]

    async def reactions(self, session_id: str | None) -> list[str]:
        try:
            return reaction_names(await self.service.sessions.aliases(session_id))
        except DiscoveryError:
            return []

    async def values(self, argument: str, context: dict[str, str]) -> list[str]:
        """Every value of ``argument`` (before the prefix filter)."""
        session_id = context.get("session_id")
        if argument in TEMPLATE_ARGUMENTS:
            return [info.name for info in diffusion_catalog.list_templates()]
        if argument == "reaction":
            return await self.reactions(session_id)
        if argument == "session_id":
            return self.session_ids()
        if argument in CANDIDATE_ARGUMENTS:
            return self.candidate_ids(session_id)
        if argument == "dataset":
            from .datasets import DatasetTools

            return dataset_names(DatasetTools(self.service).hidden_paths())
        if argument == "budget":
            return list(BUDGETS)
        return []

    async def complete(
        self,
        ref: types.PromptReference | types.ResourceTemplateReference,
        argument: types.CompletionArgument,
        context: types.CompletionContext | None,
    ) -> types.Completion:
        known = dict(context.arguments or {}) if context is not None else {}
        try:
            values = await self.values(argument.name, known)
        except Exception:  # noqa: BLE001 - an unknown session id in the context, a closed archive
            values = []
        return _completion(values, argument.value)


def register_completions(server: MCPServer, service: DiscoveryService) -> Completions:
    """Serve ``completion/complete`` on ``server``."""
    completions = Completions(service)
    server.completion()(completions.complete)
    return completions
