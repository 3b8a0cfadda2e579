"""Structured outputs of the LEADS tools (pydantic; no MCP imports).

The models are what the tools return; the SDK publishes their JSON schema as the tool's
``outputSchema`` and sends the dumped model as ``structuredContent``. The tools' inputs are in
:mod:`leads_server.inputs`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .inputs import HyperparameterValue

# ---------------------------------------------------------------------------- outputs


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParameterInfo(_Output):
    """One reaction parameter: its default and admissible interval."""

    default: float
    low: float
    high: float
    log_scale: bool
    description: str


class ReactionEntry(_Output):
    """A reaction model of the catalog, under the name this session shows."""

    name: str = Field(description="name to pass to select_reaction")
    description: str = Field(description="equations (and, when not anonymised, the source)")
    state_names: list[str] = Field(description="recovery variables besides u")
    parameters: dict[str, ParameterInfo] = Field(description="learnable physical parameters")
    hyperparameters: dict[str, str] = Field(
        default_factory=dict, description="structural options (neural only)"
    )


class DiffusionEntry(_Output):
    """A diffusion template of the catalog."""

    name: str
    family: str = Field(description="physical or neural")
    summary: str
    equation: str
    hyperparameters: dict[str, dict[str, Any]] = Field(
        description="type, default, min/max or choices, description of each hyper-parameter"
    )
    source_uri: str = Field(description="resource with the template's Python source")
    batch_size: int = Field(
        description="trajectories per optimizer step when training this template (unless the "
        "session sets one): small for physical templates, which gain from many steps"
    )


class CatalogsResult(_Output):
    """The action space: reaction models and diffusion templates."""

    session_id: str | None
    anonymised: bool
    reactions: list[ReactionEntry]
    diffusion_templates: list[DiffusionEntry]
    operations: dict[str, str] = Field(description="what each search tool does")


class SessionStarted(_Output):
    """A new discovery session."""

    session_id: str
    dataset: dict[str, Any] = Field(description="data set summary (splits, frames, nodes)")
    dataset_generated: bool = Field(description="whether the benchmark set was generated now")
    budget: int
    budget_left: int
    epochs_per_candidate: int
    seed: int
    anonymised: bool
    reactions: list[str] = Field(description="reaction names as this session shows them")
    next_step: str


class DraftView(_Output):
    """The candidate being assembled; train_candidate trains it."""

    reaction: str | None = Field(description="selected reaction (None: the parent's at training)")
    reaction_hyperparameters: dict[str, int]
    reaction_residual: dict[str, float] | None = Field(
        default=None,
        description="the neural residual added to the reaction (hidden, layers, penalty); None: "
        "the catalog model alone (or the parent's reaction at training)",
    )
    diffusion: str | None
    diffusion_hyperparameters: dict[str, HyperparameterValue]
    edited_source: bool = Field(description="whether the diffusion code is an edited template")
    parent_id: str | None
    operation: str
    parameter_count: int | None = Field(
        description="trainable parameters of the draft when it is fully known, else None"
    )


class DraftResult(_Output):
    """Outcome of a select/refine/modify/simplify action."""

    session_id: str
    draft: DraftView
    budget_left: int
    message: str


class TrainingResult(_Output):
    """One trained candidate (search step or fine-tuning)."""

    candidate_id: str
    session_id: str
    status: Literal["ok", "unstable", "failed", "cancelled", "training"] = Field(
        description="training: started with wait=false, still running (see wait_candidate)"
    )
    operation: str
    parent_id: str | None
    reaction: str
    diffusion: str
    train_losses: list[float | None]
    val_losses: list[float | None]
    best_val_loss: float | None
    best_epoch: int | None
    diagnosis: str
    verdict: str
    catalog_may_lack: Literal["reaction", "diffusion"] | None = Field(
        default=None,
        description="set when this fit plateaued far above the noise floor: the part (reaction "
        "or diffusion) whose right model the catalog may lack, if no other structure does better",
    )
    error_split: dict[str, float | None] | None = Field(
        default=None,
        description="validation error split: wavefront_share (activation timing) vs "
        "shape_share (plateau, repolarisation), at_mae_ms, at_missed_fraction",
    )
    parameter_count: int | None
    wall_seconds: float
    reaction_parameters: dict[str, float | None] = Field(default_factory=dict)
    residual: dict[str, Any] | None = Field(
        default=None,
        description="a hybrid reaction's residual: hidden, layers, penalty and its share of the "
        "reaction rate over the best epoch's validation rollout (share: all state variables, "
        "share_u: the u equation; 0 = pure physics); None without a residual",
    )
    warm_start: dict[str, str] | None = Field(
        default=None,
        description="the parts (reaction, residual, diffusion) that started from another "
        "candidate's trained values, and from which; None: trained from scratch",
    )
    failure: dict[str, Any] | None = None
    error: str | None = None
    budget_left: int
    steps_used: int


class QueryResult(_Output):
    """Rows of a read-only archive query, within the query limits (rows, bytes, time)."""

    columns: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool = Field(description="whether rows were left out (see truncated_reason)")
    truncated_reason: Literal["max_rows", "max_bytes"] | None = Field(
        default=None,
        description="the limit that left rows out: max_rows, or max_bytes (the result's JSON "
        "size limit); None when every row is shown",
    )
    notice: str | None = Field(
        default=None,
        description="what was cut (rows, or over-long values ending with '…[cut: N characters "
        "in all]') and how to narrow the query; None when nothing was",
    )

    def _repr_html_(self) -> str:
        """The rows as an HTML table (how a notebook shows the result)."""
        from html import escape

        head = "".join(f"<th>{escape(str(c))}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>"
            for row in self.rows
        )
        note = f"<p>{escape(self.notice)}</p>" if self.notice else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


class CandidateRecord(BaseModel):
    """An archived candidate with its epochs and evaluations (no weights)."""

    model_config = ConfigDict(extra="ignore")

    candidate_id: str
    session_id: str
    created_at: str
    status: str
    operation: str
    parent_id: str | None
    reaction: str | None
    diffusion: str | None
    spec: dict[str, Any] | None
    code: str | None
    code_hash: str | None = None
    train_loss: float | None
    val_loss: float | None
    best_epoch: int | None
    parameter_count: int | None
    wall_seconds: float | None
    metrics: dict[str, Any] | None
    diagnosis: str | None
    error: str | None
    has_weights: bool
    epochs: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]


class EvaluationResult(_Output):
    """Scores of a trained candidate on one split, and where its figures are."""

    candidate_id: str
    split: str
    mse: float
    at_mae_ms: float | None
    per_sample_mse: list[float]
    at_compared: int
    at_missing_pred: int
    at_missing_true: int
    activation_map_uri: str
    training_curves_uri: str
    files: list[str]


class SessionSummary(_Output):
    """A session's configuration, budget and candidates (the session:// resource)."""

    session_id: str
    dataset: str
    dataset_path: str | None
    status: str
    budget: int
    steps_used: int
    budget_left: int
    epochs_per_candidate: int
    seed: int
    anonymised: bool
    draft: DraftView | None
    best_candidate_id: str | None
    candidates: list[dict[str, Any]]


class StepRecorded(_Output):
    """An agent step stored in the archive's ``steps`` table."""

    session_id: str
    step: int = Field(description="the step's number within the session")


class CandidateProgress(_Output):
    """Where a candidate's training stands (wait_candidate, cancel_candidate)."""

    candidate_id: str
    status: str = Field(description="training, or the final status (ok, unstable, failed, ...)")
    done: bool = Field(description="whether the training has ended")
    fraction: float = Field(description="share of the epochs done (0-1)")
    message: str = Field(description="the last progress message, or the outcome")
    result: TrainingResult | None = Field(
        default=None, description="the full training result once done (this server's trainings)"
    )


class DatasetEntry(_Output):
    """A data set a session can start on."""

    name: str = Field(description="what start_session(dataset=...) takes")
    kind: Literal["benchmark", "simulated", "recording"]
    saved: bool = Field(description="whether the file exists (a benchmark is generated if not)")
    summary: dict[str, Any] = Field(
        description="shape and sampling: samples, split, frames, nodes, ... (saved sets only)"
    )


class DatasetList(_Output):
    """The data sets of $LEADS_HOME/datasets and the benchmarks."""

    datasets: list[DatasetEntry]
    notice: str | None = Field(
        default=None, description="what is not listed (data sets of anonymised sessions)"
    )
