"""The LEADS MCP server: thin tools and resources over :class:`DiscoveryService`.

Every tool takes typed arguments (their pydantic ``Field`` constraints become the published input
schema), returns a pydantic model (published as the output schema, sent as structured content),
carries honest annotations (nothing is destructive: the archive is append-only), and turns a
:class:`DiscoveryError` into an ``isError`` result whose text says what to do instead.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from .models import (
    CandidateId,
    CandidateRecord,
    CatalogsResult,
    DiffusionSource,
    DraftResult,
    Epochs,
    EvaluationResult,
    Hyperparameters,
    MaxRows,
    QueryResult,
    ReactionHyperparameters,
    ReactionName,
    SessionId,
    SessionStarted,
    Split,
    SqlQuery,
    StepRecorded,
    TemplateName,
    TrainingResult,
)
from .sessions import FIGURES, DiscoveryError, DiscoveryService

T = TypeVar("T")

INSTRUCTIONS = """\
LEADS discovers a cardiac electrophysiology digital twin du/dt = D(u) + R(u, v): a diffusion
operator D (graph template) and a reaction model R (ionic model), fitted by gradient descent.
Workflow: start_session -> list_catalogs(session_id) -> select_reaction + select_diffusion ->
train_candidate (one unit of budget) -> read the diagnosis and query_archive -> refine_diffusion /
modify_diffusion / simplify_diffusion / select_* -> train_candidate ... until the budget is
spent; then finetune_candidate the best one and evaluate_candidate it.
Tables for query_archive: sessions, candidates, epochs, steps, evaluations."""

READ_ONLY = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
DRAFT_EDIT = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
APPEND = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)


class LeadsServer(MCPServer):
    """An MCP server that owns one :class:`DiscoveryService` (its only mutable state)."""

    def __init__(self, service: DiscoveryService, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = service

    def close(self) -> None:
        """Close the archive (pending candidates of a dead process are recovered on reopen)."""
        self.service.close()


async def _tool(call: Awaitable[T]) -> T:
    """Await a service call; a refused action becomes an ``isError`` result."""
    try:
        return await call
    except DiscoveryError as exc:
        raise ToolError(str(exc)) from exc


async def _resource(call: Awaitable[T]) -> T:
    try:
        return await call
    except DiscoveryError as exc:
        raise ResourceError(str(exc)) from exc


def _progress(ctx: Context):
    async def report(progress: float, total: float | None, message: str) -> None:
        await ctx.report_progress(progress, total, message)

    return report


def build_server(
    archive_path: Path | None = None,
    *,
    start_method: str = "forkserver",
    compile_training: bool = True,
    name: str = "leads",
) -> LeadsServer:
    """The LEADS MCP server over the archive at ``archive_path`` (default
    ``$LEADS_HOME/archive.duckdb``), opened now. ``start_method`` is how training workers start
    (``forkserver`` or ``spawn``); ``compile_training`` lets the trainer torch.compile the
    integrator step (seconds per worker, then faster epochs: worth it on full-size sets).
    Call :meth:`LeadsServer.close` when done."""
    from leads_engine import __version__

    service = DiscoveryService.open(archive_path, start_method, compile_training)
    server = LeadsServer(service, name=name, version=str(__version__), instructions=INSTRUCTIONS)

    @server.tool(annotations=READ_ONLY)
    async def list_catalogs(
        session_id: Annotated[
            str | None,
            Field(description="show reaction names as this session does (anonymised aliases)"),
        ] = None,
    ) -> CatalogsResult:
        """List the action space: reaction models (with parameters and ranges), diffusion
        templates (with hyper-parameters, types and ranges) and the search operations."""
        return await _tool(service.list_catalogs(session_id))

    @server.tool(annotations=APPEND)
    async def start_session(
        ctx: Context,
        dataset: Annotated[
            str,
            Field(
                min_length=1,
                max_length=500,
                description="data set name under $LEADS_HOME/datasets, a .npz path, or a "
                "benchmark name (ap, rm, ms, fhn, fk) that is generated if missing",
            ),
        ] = "ap",
        budget: Annotated[
            int, Field(ge=1, le=200, description="how many candidates train_candidate may train")
        ] = 15,
        anonymise: Annotated[
            bool, Field(description="show reaction models as reaction_A, reaction_B, ...")
        ] = True,
        seed: Annotated[
            int, Field(ge=0, le=2**31 - 1, description="training seed and alias order")
        ] = 0,
        epochs: Annotated[
            int, Field(ge=1, le=100, description="training epochs per candidate")
        ] = 3,
        batch_size: Annotated[
            int | None,
            Field(
                ge=1,
                le=256,
                description="trajectories per optimizer step; default: each diffusion "
                "template's own (catalog batch_size: 2 physical, 10 neural)",
            ),
        ] = None,
    ) -> SessionStarted:
        """Start a discovery session on a data set; returns its session_id and budget."""
        return await _tool(
            service.start_session(
                dataset, budget, anonymise, seed, epochs, _progress(ctx), batch_size
            )
        )

    @server.tool(annotations=DRAFT_EDIT)
    async def select_reaction(
        session_id: SessionId,
        reaction: ReactionName,
        hyperparameters: ReactionHyperparameters | None = None,
    ) -> DraftResult:
        """Set the reaction model of the draft candidate."""
        return await _tool(service.select_reaction(session_id, reaction, hyperparameters))

    @server.tool(annotations=DRAFT_EDIT)
    async def select_diffusion(
        session_id: SessionId,
        template: TemplateName,
        hyperparameters: Hyperparameters | None = None,
    ) -> DraftResult:
        """Set the diffusion of the draft to a catalog template (operation 'select')."""
        return await _tool(service.select_diffusion(session_id, template, hyperparameters))

    @server.tool(annotations=DRAFT_EDIT)
    async def refine_diffusion(
        session_id: SessionId,
        candidate_id: CandidateId,
        hyperparameters: Hyperparameters,
    ) -> DraftResult:
        """Draft = a trained candidate with changed diffusion hyper-parameters (operation
        'refine'); at least one value must change and all must be within range."""
        return await _tool(service.refine_diffusion(session_id, candidate_id, hyperparameters))

    @server.tool(annotations=APPEND)
    async def modify_diffusion(
        session_id: SessionId,
        source: DiffusionSource,
        candidate_id: Annotated[
            str | None, Field(description="edit the diffusion code of this candidate")
        ] = None,
        template: Annotated[
            str | None, Field(description="or edit this catalog template's code")
        ] = None,
    ) -> DraftResult:
        """Draft = edited diffusion code (operation 'modify'). The code is checked in a sandbox
        first; refused code is archived as a 'refused' candidate and returned as an error with
        the reason, line and traceback. Read the original at catalog://diffusion/{name}."""
        return await _tool(service.modify_diffusion(session_id, source, candidate_id, template))

    @server.tool(annotations=DRAFT_EDIT)
    async def simplify_diffusion(
        session_id: SessionId,
        candidate_id: CandidateId,
        template: Annotated[
            str | None, Field(description="a simpler template (default: the candidate's)")
        ] = None,
        hyperparameters: Hyperparameters | None = None,
    ) -> DraftResult:
        """Draft = a variant of a trained candidate with strictly fewer trainable parameters
        (operation 'simplify')."""
        return await _tool(
            service.simplify_diffusion(session_id, candidate_id, template, hyperparameters)
        )

    @server.tool(annotations=APPEND)
    async def train_candidate(
        ctx: Context,
        session_id: SessionId,
        epochs: Annotated[
            int | None,
            Field(ge=1, le=100, description="override the session's epochs per candidate"),
        ] = None,
    ) -> TrainingResult:
        """Train the draft candidate (uses one unit of the search budget; reports progress per
        epoch). Missing parts of the draft come from its parent or the session's latest
        candidate. Returns the curves, best validation loss and a diagnosis."""
        return await _tool(service.train_candidate(session_id, epochs, _progress(ctx)))

    @server.tool(annotations=READ_ONLY)
    async def query_archive(
        sql: SqlQuery,
        max_rows: MaxRows = 200,
        session_id: Annotated[
            str | None, Field(description="mask reaction names as this session shows them")
        ] = None,
    ) -> QueryResult:
        """Run one read-only SELECT on the archive (tables: sessions, candidates, epochs, steps,
        evaluations); no file or network access, 5 s time limit."""
        return await _tool(service.query_archive(sql, max_rows, session_id))

    @server.tool(annotations=READ_ONLY)
    async def get_candidate(candidate_id: CandidateId) -> CandidateRecord:
        """One archived candidate: spec, code, status, losses, epochs, evaluations."""
        return await _tool(service.get_candidate(candidate_id))

    @server.tool(annotations=APPEND)
    async def finetune_candidate(
        ctx: Context,
        session_id: SessionId,
        candidate_id: CandidateId,
        epochs: Epochs = 10,
    ) -> TrainingResult:
        """Continue training a candidate from its stored weights into a new candidate
        (operation 'finetune'); does not use the search budget."""
        return await _tool(
            service.finetune_candidate(session_id, candidate_id, epochs, _progress(ctx))
        )

    @server.tool(annotations=APPEND)
    async def evaluate_candidate(
        session_id: SessionId,
        candidate_id: CandidateId,
        split: Annotated[Split, Field(description="data split to score")] = "test",
    ) -> EvaluationResult:
        """Score a trained candidate (trajectory MSE, activation-time MAE), write its
        activation-map and training-curve figures (candidate:// resources) and archive it."""
        return await _tool(service.evaluate_candidate(session_id, candidate_id, split))

    @server.resource(
        "catalog://diffusion/{name}",
        name="diffusion_template_source",
        description="Python source of a diffusion template (what modify_diffusion edits)",
        mime_type="text/x-python",
    )
    async def diffusion_template(name: str) -> str:
        return await _resource(_async(service.template_source, name))

    @server.resource(
        "candidate://{candidate_id}/activation_map.png",
        name="activation_map",
        description="true vs predicted activation times (first sample), after evaluate_candidate",
        mime_type="image/png",
    )
    async def activation_map(candidate_id: str) -> bytes:
        return await _resource(_async(service.figure, candidate_id, FIGURES[0]))

    @server.resource(
        "candidate://{candidate_id}/training_curves.png",
        name="training_curves",
        description="train/val loss per epoch, after evaluate_candidate",
        mime_type="image/png",
    )
    async def training_curves(candidate_id: str) -> bytes:
        return await _resource(_async(service.figure, candidate_id, FIGURES[1]))

    @server.tool(annotations=APPEND)
    async def record_step(
        session_id: SessionId,
        thought: Annotated[str, Field(max_length=20_000, description="the reasoning trace")],
        action: Annotated[
            dict[str, Any], Field(description="the action taken, e.g. tool names and arguments")
        ],
        observation: Annotated[
            str, Field(max_length=20_000, description="what the agent observed after acting")
        ] = "",
    ) -> StepRecorded:
        """Store one agent step (thought, action, observation) in the archive's steps table."""
        return await _tool(service.record_step(session_id, thought, action, observation))

    @server.resource(
        "candidate://{candidate_id}/weights.pt",
        name="candidate_weights",
        description="the trained state dict (torch.save; load with weights_only=True)",
        mime_type="application/octet-stream",
    )
    async def candidate_weights(candidate_id: str) -> bytes:
        return await _resource(_async(service.weights, candidate_id))

    @server.resource(
        "session://{session_id}/summary",
        name="session_summary",
        description="a session's configuration, budget, draft and candidates",
        mime_type="application/json",
    )
    async def session_summary(session_id: str) -> str:
        summary = await _resource(service.session_summary(session_id))
        return json.dumps(summary.model_dump(mode="json"), indent=1)

    return server


async def _async(function: Any, *args: Any) -> Any:
    return function(*args)
