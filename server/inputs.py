"""One input model per tool: its arguments, their types, ranges, defaults and descriptions.

Each model is the single place a tool's defaults live. The MCP layer publishes every field as a
flat tool argument (the input schema clients see has the field names at top level) and the
model's docstring as the tool's description; the service methods take the models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ---------------------------------------------------------------------------- argument types

SessionId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="session id returned by start_session (s-<12 hex>)",
    ),
]
CandidateId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="candidate id returned by train_candidate or finetune_candidate (c-<12 hex>)",
    ),
]
HyperparameterValue = int | float | str
Hyperparameters = Annotated[
    dict[str, HyperparameterValue],
    Field(
        description="diffusion hyper-parameters by name (see list_catalogs for types and ranges); "
        "missing ones take the catalog default (select) or the parent's value (refine, simplify)"
    ),
]
TemplateName = Annotated[
    str,
    Field(min_length=1, max_length=64, description="diffusion template name from list_catalogs"),
]
ReactionName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="reaction model as listed by list_catalogs for this session (reaction_A, ... "
        "when anonymised), or 'neural' for the learned MLP reaction",
    ),
]
ReactionHyperparameters = Annotated[
    dict[str, int],
    Field(description="only for reaction='neural': hidden (4-256), layers (1-4), n_recovery (1-3)"),
]
ReactionResidual = Annotated[
    dict[str, int | float],
    Field(
        description="a neural residual added to a catalog reaction (hybrid reaction "
        "R + r_phi, r_phi an MLP kept small by a norm penalty in the loss): hidden (4-128, "
        "default 16), layers (1-3, default 2), penalty (0-10, default 0.1), latent (0-4, "
        "default 0: extra state variables only the residual drives, memory the catalog model "
        "lacks such as a slow current behind a plateau), learning_rate (Adam step of the "
        "network, default 3e-3); {} takes the defaults. Not for "
        "'neural'. The trained candidate reports the residual's share of "
        "the reaction rate"
    ),
]
DiffusionSource = Annotated[
    str,
    Field(
        min_length=1,
        max_length=50_000,
        description="complete Python source of the edited template: it must define "
        "`class Diffusion(nn.Module)` with `__init__(self, num_nodes, **hyperparameters)` and "
        "`forward(u, graph)` (or edge_conductance) like the catalog file; imports limited to "
        "torch, torch_geometric and math",
    ),
]
ReactionSource = Annotated[
    str,
    Field(
        min_length=1,
        max_length=50_000,
        description="complete Python source of the edited reaction model: exactly one class "
        "deriving from ReactionModel (from leads_engine.reactions.base import ParameterRange, "
        "ReactionModel, smooth_step) with state_names, resting_state (u first), "
        "parameter_ranges, time_scale_range and rates(self, u, w, p) -> (du [n, 1], "
        "dw [r, n, 1]) in the model's time; imports limited to torch and math",
    ),
]
Epochs = Annotated[int, Field(ge=1, le=100, description="training epochs")]
LearningRateScale = Annotated[
    float,
    Field(
        gt=0.0,
        le=1.0,
        description="every learning rate times this (1: the search's steps); smaller steps "
        "suit training that starts from trained weights (a fine-tuning, a warm start): "
        "Adam's first steps move every parameter by about its learning rate",
    ),
]
#: at most this many candidates warm-start one draft (one per part is enough)
MAX_WARM_START = 3
Split = Literal["train", "val", "test"]
SqlQuery = Annotated[
    str,
    Field(
        min_length=1,
        max_length=20_000,
        description="one read-only DuckDB SELECT over the tables sessions, candidates, epochs, "
        "steps, evaluations (e.g. SELECT candidate_id, diffusion, val_loss FROM candidates "
        "ORDER BY val_loss)",
    ),
]
MaxRows = Annotated[int, Field(ge=1, le=1000, description="at most this many rows are returned")]


class ToolInput(BaseModel):
    """The arguments of one tool (subclasses are published field by field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------- one per tool


class ListCatalogs(ToolInput):
    """List the action space: reaction models (with parameters and ranges), diffusion
    templates (with hyper-parameters, types and ranges) and the search operations."""

    session_id: Annotated[
        str | None,
        Field(description="show reaction names as this session does (anonymised aliases)"),
    ] = None


class StartSession(ToolInput):
    """Start a discovery session on a data set; returns its session_id and budget."""

    dataset: Annotated[
        str,
        Field(
            min_length=1,
            max_length=500,
            description="data set name under $LEADS_HOME/datasets, a .npz path, or a "
            "benchmark name (ap, rm, ms, fhn, fk) that is generated if missing",
        ),
    ] = "ap"
    budget: Annotated[
        int, Field(ge=1, le=200, description="how many candidates train_candidate may train")
    ] = 15
    anonymise: Annotated[
        bool, Field(description="show reaction models as reaction_A, reaction_B, ...")
    ] = True
    seed: Annotated[int, Field(ge=0, le=2**31 - 1, description="training seed and alias order")] = 0
    epochs: Annotated[int, Field(ge=1, le=100, description="training epochs per candidate")] = 3
    batch_size: Annotated[
        int | None,
        Field(
            ge=1,
            le=256,
            description="trajectories per optimizer step; default: each diffusion "
            "template's own (catalog batch_size: 2 physical, 10 neural)",
        ),
    ] = None


class SelectReaction(ToolInput):
    """Set the reaction model of the draft candidate; residual={...} makes it a hybrid reaction
    (the catalog model plus a small neural residual kept small by a norm penalty)."""

    session_id: SessionId
    reaction: ReactionName
    hyperparameters: ReactionHyperparameters | None = None
    residual: ReactionResidual | None = None


class SelectDiffusion(ToolInput):
    """Set the diffusion of the draft to a catalog template (operation 'select')."""

    session_id: SessionId
    template: TemplateName
    hyperparameters: Hyperparameters | None = None


class RefineDiffusion(ToolInput):
    """Draft = a trained candidate with changed diffusion hyper-parameters (operation
    'refine'); at least one value must change and all must be within range."""

    session_id: SessionId
    candidate_id: CandidateId
    hyperparameters: Hyperparameters


class ModifyDiffusion(ToolInput):
    """Draft = edited diffusion code (operation 'modify'). The code is checked in a sandbox
    first; refused code is archived as a 'refused' candidate and returned as an error with
    the reason, line and traceback. Read the original at catalog://diffusion/{name}."""

    session_id: SessionId
    source: DiffusionSource
    candidate_id: Annotated[
        str | None, Field(description="edit the diffusion code of this candidate")
    ] = None
    template: Annotated[str | None, Field(description="or edit this catalog template's code")] = (
        None
    )


class ModifyReaction(ToolInput):
    """Draft = edited reaction code (operation 'modify'), for when the error is in the action
    potential's shape and a residual did not close it. The code is checked in a sandbox first
    (rates finite, rest an equilibrium, gradients flow); refused code is archived as a
    'refused' candidate and returned as an error with the reason, line and traceback. Read the
    original at session://{session_id}/reaction/{name} (or catalog://reaction/{name}). The
    draft keeps its diffusion (edited or not) and the residual of what is edited."""

    session_id: SessionId
    source: ReactionSource
    candidate_id: Annotated[
        str | None, Field(description="edit the reaction code of this trained candidate")
    ] = None
    reaction: Annotated[
        str | None,
        Field(description="or edit this catalog reaction's code (as list_catalogs names it)"),
    ] = None


class SimplifyDiffusion(ToolInput):
    """Draft = a variant of a trained candidate with strictly fewer trainable parameters
    (operation 'simplify')."""

    session_id: SessionId
    candidate_id: CandidateId
    template: Annotated[
        str | None, Field(description="a simpler template (default: the candidate's)")
    ] = None
    hyperparameters: Hyperparameters | None = None


class TrainCandidate(ToolInput):
    """Train the draft candidate (uses one unit of the search budget; reports progress after
    every batch). Missing parts of the draft come from its parent or the session's latest
    candidate. warm_start starts the parts it shares with earlier candidates from their trained
    values instead of from scratch. Returns the curves, best validation loss and a diagnosis;
    with wait=false it answers at once with the candidate id (status 'training'): then poll
    wait_candidate."""

    session_id: SessionId
    epochs: Annotated[
        int | None,
        Field(ge=1, le=100, description="override the session's epochs per candidate"),
    ] = None
    wait: Annotated[
        bool,
        Field(
            description="true: answer when the training ends; false: answer at once and train "
            "in the background (for hosts whose requests time out)"
        ),
    ] = True
    learning_rate_scale: LearningRateScale = 1.0
    warm_start: Annotated[
        list[CandidateId],
        Field(
            max_length=MAX_WARM_START,
            description="trained candidates whose parameters initialise the parts of the draft "
            "they share (the reaction model, a residual network of the same shape, the same "
            "diffusion template and hyper-parameters), the first that has a part giving it; "
            "other parts start fresh; the learning rates then rise over the first epoch. E.g. "
            "combine a residual found on one operator with another operator: [residual "
            "candidate, operator candidate]",
        ),
    ] = []


class WaitCandidate(ToolInput):
    """Wait (at most timeout_s) for a training started with train_candidate(wait=false);
    returns its result when it ends, else its progress so far: call again until done."""

    candidate_id: CandidateId
    timeout_s: Annotated[
        float, Field(ge=0, le=55, description="seconds to wait at most (under a host's timeout)")
    ] = 45.0


class CancelCandidate(ToolInput):
    """Stop a training started with train_candidate(wait=false): its worker is killed, the
    candidate ends 'cancelled' and its unit of budget is given back."""

    candidate_id: CandidateId


class ListDatasets(ToolInput):
    """List the data sets a session can start on: the benchmarks (generated on first use) and
    the sets saved under $LEADS_HOME/datasets, with their size (no names of anonymised
    sessions' data sets)."""


DatasetName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="name of the data set file under $LEADS_HOME/datasets (letters, digits, "
        "'_', '.', '-')",
    ),
]


class GenerateDataset(ToolInput):
    """Generate a benchmark data set (simulated with the benchmark's ionic model; minutes for
    the full size, with progress) and save it under $LEADS_HOME/datasets."""

    benchmark: Annotated[
        Literal["ap", "rm", "ms", "fhn", "fk"], Field(description="which benchmark to generate")
    ] = "ap"


ArrayPath = Annotated[str, Field(min_length=1, max_length=1000, description="a .npy file")]


class ImportRecording(ToolInput):
    """Import measured electrograms as a data set (saved under $LEADS_HOME/datasets/{name}):
    a mesh, signals [samples, frames, electrodes], frame times in ms, and exactly one of a lead
    field, electrode positions or contact nodes."""

    name: DatasetName
    mesh: Annotated[str, Field(min_length=1, max_length=1000, description="mesh file (meshio)")]
    signals: ArrayPath
    times: ArrayPath
    lead_field: Annotated[str | None, Field(description="H [electrodes, nodes] (.npy)")] = None
    electrodes: Annotated[
        str | None, Field(description="electrode positions [electrodes, 3] in mm (.npy)")
    ] = None
    contact_nodes: Annotated[
        str | None, Field(description="node index of each electrode [electrodes] (.npy)")
    ] = None
    pacing_sites: Annotated[
        str | None, Field(description="pacing node of each sample [samples] (.npy)")
    ] = None


class QueryArchive(ToolInput):
    """Run one read-only SELECT on the archive (tables: sessions, candidates, epochs, steps,
    evaluations); no file or network access, 5 s time limit."""

    sql: SqlQuery
    max_rows: MaxRows = 200
    session_id: Annotated[
        str | None,
        Field(
            description="query this session's rows only (the way to read an anonymised "
            "session); without it, the rows of every non-anonymised session"
        ),
    ] = None


class GetCandidate(ToolInput):
    """One archived candidate: spec, code, status, losses, epochs, evaluations."""

    candidate_id: CandidateId


class FinetuneCandidate(ToolInput):
    """Continue training a candidate from its stored weights into a new candidate
    (operation 'finetune'); does not use the search budget."""

    session_id: SessionId
    candidate_id: CandidateId
    epochs: Epochs = 10
    learning_rate_scale: LearningRateScale = 1.0
    warmup_epochs: Annotated[
        float,
        Field(
            ge=0.0,
            le=10.0,
            description="epochs over which the learning rates rise linearly from near zero to "
            "their value before decaying (0: none); a long fine-tuning at full steps, e.g. of a "
            "hybrid reaction, keeps its trained weights through Adam's first steps with 1",
        ),
    ] = 0.0


class EvaluateCandidate(ToolInput):
    """Score a trained candidate (trajectory MSE, activation-time MAE), write its
    activation-map and training-curve figures (candidate:// resources) and archive it."""

    session_id: SessionId
    candidate_id: CandidateId
    split: Annotated[Split, Field(description="data split to score")] = "test"


class RecordStep(ToolInput):
    """Store one agent step (thought, action, observation) in the archive's steps table."""

    session_id: SessionId
    thought: Annotated[str, Field(max_length=20_000, description="the reasoning trace")]
    action: Annotated[
        dict[str, Any], Field(description="the action taken, e.g. tool names and arguments")
    ]
    observation: Annotated[
        str, Field(max_length=20_000, description="what the agent observed after acting")
    ] = ""


#: the tools in the order they are published, by name
TOOL_INPUTS: dict[str, type[ToolInput]] = {
    "list_catalogs": ListCatalogs,
    "start_session": StartSession,
    "select_reaction": SelectReaction,
    "select_diffusion": SelectDiffusion,
    "refine_diffusion": RefineDiffusion,
    "modify_diffusion": ModifyDiffusion,
    "modify_reaction": ModifyReaction,
    "simplify_diffusion": SimplifyDiffusion,
    "train_candidate": TrainCandidate,
    "query_archive": QueryArchive,
    "wait_candidate": WaitCandidate,
    "cancel_candidate": CancelCandidate,
    "get_candidate": GetCandidate,
    "finetune_candidate": FinetuneCandidate,
    "evaluate_candidate": EvaluateCandidate,
    "record_step": RecordStep,
    "list_datasets": ListDatasets,
    "generate_dataset": GenerateDataset,
    "import_recording": ImportRecording,
}
