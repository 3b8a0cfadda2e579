"""The LEADS MCP server: thin tools, resources and prompts over :class:`DiscoveryService`.

Every tool takes the fields of its input model (:mod:`leads_server.inputs`) as flat, typed
arguments (their ``Field`` constraints and defaults become the published input schema), calls
the method of the same name (of :class:`~leads_server.host_tools.HostTools` when it has one,
else of :class:`DiscoveryService`) with the model, and answers with the pydantic result as
structured content (its schema is the tool's output schema) next to a compact text summary
(:mod:`leads_server.tool_text`) and, for get_candidate and evaluate_candidate, the candidate's
figures as images (:mod:`leads_server.pictures`). Tools carry a title and honest annotations
(every tool that changes a session appends a step row, so none of them is idempotent); a
refused action is an ``isError`` result saying what to do instead, and arguments that do not
fit the schema are refused in one line. Host features (prompts, completions, logging,
subscriptions) are registered by their own functions below.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.server.mcpserver.resources import TextResource
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from mcp_types.jsonrpc import INVALID_PARAMS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field, ValidationError
from pydantic.fields import FieldInfo

from . import tool_text
from .completions import register_completions
from .host_logging import HostChannels
from .host_tools import HostTools
from .inputs import TOOL_INPUTS, GetCandidate, ToolInput
from .jobs import JobLimits
from .models import CandidateRecord, EvaluationResult
from .pictures import candidate_images
from .prompts import register_prompts
from .service import FIGURES, DiscoveryError, DiscoveryService
from .viewer.mcp_app import ViewerApp

T = TypeVar("T")

#: JSON-RPC code of an unknown resource (MCP 2025-11-25 and earlier)
RESOURCE_NOT_FOUND = -32002

INSTRUCTIONS = """\
LEADS discovers a cardiac electrophysiology digital twin du/dt = D(u) + R(u, v): a diffusion
operator D (graph template) and a reaction model R (ionic model), fitted by gradient descent.
Workflow: start_session -> list_catalogs(session_id) -> select_reaction + select_diffusion ->
train_candidate (one unit of budget; wait=false answers at once, then poll wait_candidate) ->
read the diagnosis and query_archive -> refine_diffusion / modify_diffusion /
simplify_diffusion / select_* -> train_candidate ... until the budget is spent; then
finetune_candidate the best one and evaluate_candidate it. select_reaction(..., residual={...})
makes a hybrid reaction (catalog model + a small neural residual; its share of the reaction rate
is reported) for data the catalog does not explain; modify_reaction edits a reaction model's
code (source at session://{session_id}/reaction/{name}) when the error is in the action
potential's shape and a residual did not close it. The prompt 'discover' walks through the
whole loop. Tables for query_archive: sessions, candidates, epochs, steps, evaluations."""

READ_ONLY = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
APPEND = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)
STOP = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
)
FILE = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
#: title and annotations of each tool (draft edits append a step row: not idempotent; the data
#: set tools write a file once: a second call changes nothing)
TOOLS: dict[str, tuple[str, ToolAnnotations]] = {
    "list_catalogs": ("List reactions and diffusion templates", READ_ONLY),
    "start_session": ("Start a discovery session", APPEND),
    "select_reaction": ("Select the reaction model", APPEND),
    "select_diffusion": ("Select a diffusion template", APPEND),
    "refine_diffusion": ("Refine diffusion hyper-parameters", APPEND),
    "modify_diffusion": ("Edit diffusion code", APPEND),
    "modify_reaction": ("Edit reaction code", APPEND),
    "simplify_diffusion": ("Simplify the diffusion", APPEND),
    "train_candidate": ("Train the draft candidate", APPEND),
    "wait_candidate": ("Wait for a training", READ_ONLY),
    "cancel_candidate": ("Cancel a training", STOP),
    "query_archive": ("Query the archive (SQL)", READ_ONLY),
    "get_candidate": ("Show a candidate", READ_ONLY),
    "finetune_candidate": ("Fine-tune a candidate", APPEND),
    "evaluate_candidate": ("Evaluate a candidate", APPEND),
    "record_step": ("Record a reasoning step", APPEND),
    "list_datasets": ("List data sets", READ_ONLY),
    "generate_dataset": ("Generate a benchmark data set", FILE),
    "import_recording": ("Import a recording", FILE),
}
#: tools whose answer carries the candidate's figures as images
PICTURE_TOOLS = ("get_candidate", "evaluate_candidate")


def description(doc: str | None) -> str:
    """A docstring as a tool description: de-indented, each paragraph on one line."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def argument_error(tool: str, exc: ValidationError) -> str:
    """Arguments that do not fit the tool's schema, in one line (no pydantic links)."""
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"] if part != tool + "Arguments")
        given = error.get("input")
        shown = "" if isinstance(given, dict) else f" (got {json.dumps(given, default=str)[:60]})"
        problems.append(f"{where or 'arguments'}: {error['msg']}{shown}")
    return f"{tool}: invalid arguments: " + "; ".join(problems) + "; see the tool's input schema"


class LeadsServer(MCPServer):
    """An MCP server that owns one :class:`DiscoveryService` (its only mutable state), the
    host tools over it and the host channels (log levels, subscriptions)."""

    def __init__(self, service: DiscoveryService, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = service
        self.host_tools = HostTools(service)
        self.channels = HostChannels()

    def stop(self) -> int:
        """Shutdown has begun: kill the running training workers, whose candidates end
        ``failed`` as interrupted (as reopening the archive marks those of a killed server).
        Safe from a signal handler; the number of workers killed."""
        return self.service.stop()

    def close(self) -> None:
        """Stop the running workers and close the archive (pending candidates of a dead process
        are recovered on reopen)."""
        self.host_tools.close()
        self.service.close()

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context | None = None
    ) -> Any:
        """The SDK's call, with arguments that do not fit the schema refused in one line."""
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(argument_error(name, exc.__cause__)) from None
            raise

    async def read_resource(self, uri: Any, context: Context | None = None) -> Any:
        """The SDK's read; an unknown resource answers the spec's "resource not found"."""
        try:
            return await super().read_resource(uri, context)
        except ResourceNotFoundError as exc:
            version = None
            if context is not None:
                try:
                    version = context.request_context.protocol_version
                except (AttributeError, ValueError):
                    version = None
            code = INVALID_PARAMS if version in MODERN_PROTOCOL_VERSIONS else RESOURCE_NOT_FOUND
            raise MCPError(code=code, message=str(exc), data={"uri": str(uri)}) from exc

    async def list_resources(self) -> list[types.Resource]:
        """The static resources (template sources), then one summary per archived session
        (named by what the session shows: an anonymised session's neutral data set handle)."""
        listed = await super().list_resources()
        for row in self.service.archive.list_sessions():
            listed.append(
                types.Resource(
                    uri=f"session://{row.session_id}/summary",
                    name=f"session_{row.session_id}",
                    title=f"Session {row.session_id} on {row.dataset}",
                    description="configuration, budget, draft and candidates of the session",
                    mime_type="application/json",
                )
            )
        return listed

    async def after_tool(self, tool: str, ctx: Context | None, request: Any, result: Any) -> None:
        """Tell the subscribers of the session's summary that a tool changed it."""
        if TOOLS[tool][1].read_only_hint:
            return
        session_id = getattr(result, "session_id", None) or getattr(request, "session_id", None)
        if session_id:
            await self.channels.updated(ctx, f"session://{session_id}/summary")

    async def answer(self, tool: str, result: BaseModel) -> CallToolResult:
        """The tool's answer: compact text, figures for the picture tools, and the whole
        result as structured content."""
        content: list[Any] = [TextContent(type="text", text=tool_text.summary(result))]
        if tool in PICTURE_TOOLS and isinstance(result, CandidateRecord | EvaluationResult):
            record = (
                result
                if isinstance(result, CandidateRecord)
                else await self.service.get_candidate(
                    GetCandidate(candidate_id=result.candidate_id)
                )
            )
            content += await candidate_images(self.service, record)
        return CallToolResult(content=content, structured_content=result.model_dump(mode="json"))


async def _tool(call: Awaitable[T]) -> T:
    """Await a service call; a refused action becomes an ``isError`` result."""
    try:
        return await call
    except DiscoveryError as exc:
        raise ToolError(str(exc)) from exc


async def _resource(call: Awaitable[T]) -> T:
    """Await a resource read; a refused read is an unknown resource."""
    try:
        return await call
    except DiscoveryError as exc:
        raise ResourceNotFoundError(str(exc)) from exc


def _progress(server: LeadsServer, ctx: Context):
    """Progress notifications for the request (every batch), and an info log line at each
    epoch and at the end of a data set's generation."""

    async def report(progress: float, total: float | None, message: str) -> None:
        await ctx.report_progress(progress, total, message)
        if float(progress).is_integer() and ", batch " not in message:  # whole epochs, sets
            await server.channels.log(ctx, "info", message)

    return report


def _flat_annotation(field: FieldInfo) -> Any:
    """A field of an input model as a parameter annotation: its type, constraints and
    description (the SDK turns each parameter into one property of the input schema)."""
    metadata = list(field.metadata)
    if field.description:
        metadata.append(Field(description=field.description))
    return Annotated[(field.annotation, *metadata)] if metadata else field.annotation


def _tool_function(
    server: LeadsServer, name: str, model: type[ToolInput], method: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    """The tool function the SDK publishes for ``method``: one flat argument per field of the
    tool's input model (type, constraints, description and default from the model), plus the
    request context; it answers with :meth:`LeadsServer.answer` of what ``method`` returns."""
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
    parameters.insert(
        0, inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)
    )
    result = typing.get_type_hints(method)["return"]

    async def tool(**arguments: Any) -> Any:
        ctx = arguments.pop("ctx", None)
        try:
            request = model.model_validate(arguments)
        except ValidationError as exc:
            raise ToolError(argument_error(name, exc)) from None
        if reports_progress:
            answer = await _tool(method(request, _progress(server, ctx)))
        else:
            answer = await _tool(method(request))
        await server.after_tool(name, ctx, request, answer)
        return await server.answer(name, answer)

    tool.__name__ = tool.__qualname__ = name
    tool.__signature__ = inspect.Signature(parameters, return_annotation=result)
    tool.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": result}
    return tool


def register_tools(
    server: LeadsServer, meta: Callable[[str], dict[str, Any] | None] = lambda name: None
) -> None:
    """Publish every tool of :data:`TOOL_INPUTS` (with ``meta(name)`` as its ``_meta``: the
    viewer's MCP App link for the tools that show a candidate or a session)."""
    for tool_name, model in TOOL_INPUTS.items():
        method = getattr(server.host_tools, tool_name, None) or getattr(server.service, tool_name)
        title, annotations = TOOLS[tool_name]
        server.add_tool(
            _tool_function(server, tool_name, model, method),
            name=tool_name,
            title=title,
            description=description(model.__doc__),
            annotations=annotations,
            meta=meta(tool_name),
        )


def register_host_features(server: LeadsServer) -> None:
    """Prompts, completions, logging/setLevel and resource subscriptions."""
    register_prompts(server, server.service)
    register_completions(server, server.service)
    lowlevel = server._lowlevel_server
    lowlevel.add_request_handler(
        "logging/setLevel", types.SetLevelRequestParams, server.channels.set_level
    )
    lowlevel.add_request_handler(
        "resources/subscribe", types.SubscribeRequestParams, server.channels.subscribe
    )
    lowlevel.add_request_handler(
        "resources/unsubscribe", types.UnsubscribeRequestParams, server.channels.unsubscribe
    )


def register_template_sources(server: LeadsServer) -> None:
    """Each diffusion template's source as a listed resource (catalog://diffusion/{name})."""
    from leads_engine import diffusion as diffusion_catalog

    for info in diffusion_catalog.list_templates():
        server.add_resource(
            TextResource(
                uri=f"catalog://diffusion/{info.name}",
                name=f"diffusion_{info.name}",
                title=f"Diffusion template {info.name}",
                description=f"Python source of {info.name} ({info.family}): {info.summary}",
                mime_type="text/x-python",
                text=server.service.template_source(info.name),
            )
        )


def build_server(
    archive_path: Path | None = None,
    *,
    start_method: str = "forkserver",
    compile_training: bool = True,
    job_limits: JobLimits | None = None,
    name: str = "leads",
    executor: Any = None,
) -> LeadsServer:
    """The LEADS MCP server over the archive at ``archive_path`` (default
    ``$LEADS_HOME/archive.duckdb``), opened now. ``start_method`` is how training workers start
    (``forkserver`` or ``spawn``); ``compile_training`` lets the trainer torch.compile the
    integrator step (seconds per worker, then faster epochs: worth it on full-size sets);
    ``job_limits`` sizes the wall-clock limit of training and evaluation jobs (default
    :class:`JobLimits`); ``executor`` runs the jobs (default: local worker processes, see
    :mod:`leads_server.executor`). Call :meth:`LeadsServer.close` when done."""
    from leads_engine import __version__

    service = DiscoveryService.open(
        archive_path, start_method, compile_training, job_limits, executor
    )
    viewer = ViewerApp(service)
    server = LeadsServer(
        service,
        name=name,
        version=str(__version__),
        instructions=INSTRUCTIONS,
        extensions=[viewer.extension],
    )
    viewer.register(server)

    register_tools(server, viewer.tool_meta)
    register_template_sources(server)
    register_host_features(server)

    @server.resource(
        "catalog://diffusion/{name}",
        name="diffusion_template_source",
        description="Python source of a diffusion template (what modify_diffusion edits)",
        mime_type="text/x-python",
    )
    async def diffusion_template(name: str) -> str:
        return await _resource(_async(service.template_source, name))

    @server.resource(
        "catalog://reaction/{name}",
        name="reaction_model_source",
        description="Python source of a catalog reaction model by catalog name (what "
        "modify_reaction edits); in a session use session://{session_id}/reaction/{name}",
        mime_type="text/x-python",
    )
    async def reaction_model(name: str) -> str:
        return await _resource(_async(service.reaction_source, name))

    @server.resource(
        "session://{session_id}/reaction/{name}",
        name="session_reaction_source",
        description="Python source of a reaction model as the session names it (what "
        "modify_reaction edits; anonymised sessions get it without names)",
        mime_type="text/x-python",
    )
    async def session_reaction(session_id: str, name: str) -> str:
        return await _resource(service.session_reaction_source(session_id, name))

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
