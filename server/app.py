"""The LEADS MCP server: thin tools and resources over :class:`DiscoveryService`.

Every tool takes the fields of its input model (:mod:`leads_server.inputs`) as flat, typed
arguments (their ``Field`` constraints and defaults become the published input schema), calls
the :class:`DiscoveryService` method of the same name with the model, returns a pydantic model
(published as the output schema, sent as structured content), carries honest annotations
(nothing is destructive: the archive is append-only), and turns a :class:`DiscoveryError` into
an ``isError`` result whose text says what to do instead.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import ToolAnnotations
from pydantic import Field
from pydantic.fields import FieldInfo

from .inputs import TOOL_INPUTS, ToolInput
from .jobs import JobLimits
from .service import FIGURES, DiscoveryError, DiscoveryService
from .viewer.mcp_app import ViewerApp

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
TOOL_ANNOTATIONS = {
    "list_catalogs": READ_ONLY,
    "start_session": APPEND,
    "select_reaction": DRAFT_EDIT,
    "select_diffusion": DRAFT_EDIT,
    "refine_diffusion": DRAFT_EDIT,
    "modify_diffusion": APPEND,
    "simplify_diffusion": DRAFT_EDIT,
    "train_candidate": APPEND,
    "query_archive": READ_ONLY,
    "get_candidate": READ_ONLY,
    "finetune_candidate": APPEND,
    "evaluate_candidate": APPEND,
    "record_step": APPEND,
}


class LeadsServer(MCPServer):
    """An MCP server that owns one :class:`DiscoveryService` (its only mutable state)."""

    def __init__(self, service: DiscoveryService, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = service

    def stop(self) -> int:
        """Shutdown has begun: kill the running training workers, whose candidates end
        ``failed`` as interrupted (as reopening the archive marks those of a killed server).
        Safe from a signal handler; the number of workers killed."""
        return self.service.stop()

    def close(self) -> None:
        """Stop the running workers and close the archive (pending candidates of a dead process
        are recovered on reopen)."""
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


def _flat_annotation(field: FieldInfo) -> Any:
    """A field of an input model as a parameter annotation: its type, constraints and
    description (the SDK turns each parameter into one property of the input schema)."""
    metadata = list(field.metadata)
    if field.description:
        metadata.append(Field(description=field.description))
    return Annotated[(field.annotation, *metadata)] if metadata else field.annotation


def _tool_function(
    name: str, model: type[ToolInput], method: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    """The tool function the SDK publishes for ``method``: one flat argument per field of the
    tool's input model (type, constraints, description and default from the model), plus the
    request context when ``method`` reports progress; it returns what ``method`` returns."""
    reports_progress = "progress" in inspect.signature(method).parameters
    parameters = [
        inspect.Parameter(
            field_name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=_flat_annotation(field),
            default=inspect.Parameter.empty if field.is_required() else field.default,
        )
        for field_name, field in model.model_fields.items()
    ]
    if reports_progress:
        parameters.insert(
            0, inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)
        )
    result = typing.get_type_hints(method)["return"]

    async def tool(**arguments: Any) -> Any:
        ctx = arguments.pop("ctx", None)
        request = model.model_validate(arguments)
        if reports_progress:
            return await _tool(method(request, _progress(ctx)))
        return await _tool(method(request))

    tool.__name__ = tool.__qualname__ = name
    tool.__signature__ = inspect.Signature(parameters, return_annotation=result)
    tool.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": result}
    return tool


def build_server(
    archive_path: Path | None = None,
    *,
    start_method: str = "forkserver",
    compile_training: bool = True,
    job_limits: JobLimits | None = None,
    name: str = "leads",
) -> LeadsServer:
    """The LEADS MCP server over the archive at ``archive_path`` (default
    ``$LEADS_HOME/archive.duckdb``), opened now. ``start_method`` is how training workers start
    (``forkserver`` or ``spawn``); ``compile_training`` lets the trainer torch.compile the
    integrator step (seconds per worker, then faster epochs: worth it on full-size sets);
    ``job_limits`` sizes the wall-clock limit of training and evaluation jobs (default
    :class:`JobLimits`). Call :meth:`LeadsServer.close` when done."""
    from leads_engine import __version__

    service = DiscoveryService.open(archive_path, start_method, compile_training, job_limits)
    viewer = ViewerApp(service)
    server = LeadsServer(
        service,
        name=name,
        version=str(__version__),
        instructions=INSTRUCTIONS,
        extensions=[viewer.extension],
    )
    viewer.register(server)

    for tool_name, model in TOOL_INPUTS.items():
        server.add_tool(
            _tool_function(tool_name, model, getattr(service, tool_name)),
            name=tool_name,
            description=inspect.cleandoc(model.__doc__ or ""),
            annotations=TOOL_ANNOTATIONS[tool_name],
            meta=viewer.tool_meta(tool_name),
        )

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
