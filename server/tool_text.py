"""The text a host's model reads next to a tool's structured result: a compact summary.

Every tool sends its pydantic result as ``structuredContent`` (the whole thing, for scripts and
clients that read it) and, as text content, the few lines a model needs to decide its next step
(hosts that show the model only text content still see the ids, losses, diagnosis and rows).
Everything here is built from the result models, which already show an anonymised session's
aliases: no real name can appear that the structured result does not hold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from .models import (
    CandidateRecord,
    CatalogsResult,
    DraftResult,
    DraftView,
    EvaluationResult,
    QueryResult,
    SessionStarted,
    SessionSummary,
    StepRecorded,
    TrainingResult,
)

#: characters of a query's rows shown as text (the structured content has them all)
QUERY_TEXT_LIMIT = 6000
#: characters of any other summary's fallback JSON
FALLBACK_LIMIT = 2000


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _hyper(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "defaults"


def catalogs(result: CatalogsResult) -> str:
    lines = ["Reactions (select_reaction):"]
    for reaction in result.reactions:
        params = ", ".join(f"{k} [{p.low:g}, {p.high:g}]" for k, p in reaction.parameters.items())
        lines.append(f"- {reaction.name}: {params or 'learned MLP'}")
    lines.append("Diffusion templates (select_diffusion; source at catalog://diffusion/{name}):")
    for template in result.diffusion_templates:
        ranges = []
        for key, spec in template.hyperparameters.items():
            if "choices" in spec:
                ranges.append(f"{key} in {spec['choices']}")
            elif "min" in spec or "max" in spec:
                ranges.append(f"{key} [{spec.get('min')}, {spec.get('max')}]")
            else:
                ranges.append(key)
        shown = f" ({'; '.join(ranges)})" if ranges else ""
        lines.append(f"- {template.name} [{template.family}]: {template.summary}{shown}")
    lines.append("Operations: " + "; ".join(f"{k}: {v}" for k, v in result.operations.items()))
    return "\n".join(lines)


def session_started(result: SessionStarted) -> str:
    data = result.dataset
    shape = ", ".join(f"{k} {data[k]}" for k in ("samples", "nodes", "frames") if k in data)
    return (
        f"Session {result.session_id} on {data.get('name', 'the data set')} ({shape}); budget "
        f"{result.budget} candidates, {result.epochs_per_candidate} epochs each, seed "
        f"{result.seed}, anonymised {result.anonymised}.\nReactions: "
        f"{', '.join(result.reactions)}.\nNext: {result.next_step}."
    )


def residual_share(residual: dict[str, Any] | None) -> str:
    """One phrase for a hybrid reaction's residual and its share of the reaction rate."""
    if not residual:
        return ""
    options = f"hidden {residual.get('hidden')}, layers {residual.get('layers')}"
    options += f", penalty {residual.get('penalty')}"
    share = residual.get("share")
    if share is None:
        return f"neural residual ({options})"
    text = (
        f"neural residual ({options}): RMS {share:.1%} of the reaction rate's "
        f"({residual.get('share_u', 0.0):.1%} in du/dt) on the validation rollout"
    )
    if share > 1.0:
        text += "; it outweighs the rate, so it cancels much of the catalog model"
    return text


def draft(view: DraftView) -> str:
    diffusion = view.diffusion or "(from the parent)"
    if view.edited_source:
        diffusion += " (edited code)"
    count = "unknown" if view.parameter_count is None else str(view.parameter_count)
    reaction = view.reaction or "(from the parent)"
    if view.reaction_residual:
        reaction += " + " + residual_share(view.reaction_residual)
    return (
        f"draft: reaction {reaction}, diffusion {diffusion} "
        f"({_hyper(view.diffusion_hyperparameters)}), operation {view.operation}, parent "
        f"{view.parent_id or 'none'}, {count} trainable parameters"
    )


def draft_result(result: DraftResult) -> str:
    return f"{result.message}\n{draft(result.draft)}; budget left {result.budget_left}."


def training(result: TrainingResult) -> str:
    head = (
        f"{result.candidate_id} ({result.operation} of {result.parent_id or 'nothing'}): "
        f"{result.status}; reaction {result.reaction}, diffusion {result.diffusion}"
    )
    if result.best_val_loss is not None:
        head += f"; best val loss {_num(result.best_val_loss)} at epoch {result.best_epoch}"
    if result.parameter_count is not None:
        head += f"; {result.parameter_count} parameters"
    curves = (
        f"train {[_num(v) for v in result.train_losses]}, val "
        f"{[_num(v) for v in result.val_losses]}"
    )
    tail = f"Budget left {result.budget_left} ({result.steps_used} used)."
    if result.residual:
        tail = f"Hybrid reaction: {residual_share(result.residual)}.\n{tail}"
    error = f"\nError: {result.error}" if result.error else ""
    return (
        f"{head}.\nCurves: {curves}; {result.wall_seconds:.1f} s.\n"
        f"Diagnosis ({result.verdict}): {result.diagnosis}{error}\n{tail}"
    )


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text.replace("\t", " ").replace("\n", " ")


def query(result: QueryResult) -> str:
    lines = ["\t".join(result.columns)]
    size = len(lines[0])
    shown = 0
    for row in result.rows:
        line = "\t".join(_cell(v) for v in row)
        if size + len(line) > QUERY_TEXT_LIMIT:
            break
        lines.append(line)
        size += len(line) + 1
        shown += 1
    notes = [f"{result.row_count} row(s)"]
    if shown < len(result.rows):
        notes.append(f"{shown} shown as text, all {len(result.rows)} in the structured result")
    if result.notice:
        notes.append(result.notice)
    return "\n".join(lines) + "\n(" + "; ".join(notes) + ")"


def candidate(result: CandidateRecord) -> str:
    lines = [
        f"{result.candidate_id} in {result.session_id}: {result.status}, {result.operation} of "
        f"{result.parent_id or 'nothing'}; reaction {result.reaction}, diffusion "
        f"{result.diffusion}; val loss {_num(result.val_loss)} (best epoch {result.best_epoch}); "
        f"{result.parameter_count} parameters; weights "
        f"{'stored' if result.has_weights else 'none'}"
    ]
    if result.epochs:
        losses = [
            f"{e.get('epoch')}: {_num(e.get('train_loss'))}/{_num(e.get('val_loss'))}"
            for e in result.epochs
        ]
        lines.append("Epochs (train/val): " + ", ".join(losses))
    if result.diagnosis:
        lines.append(f"Diagnosis: {result.diagnosis}")
    residual = (result.metrics or {}).get("residual")
    if residual:
        lines.append(f"Hybrid reaction: {residual_share(residual)}")
    for evaluation in result.evaluations:
        lines.append(
            f"Evaluation on {evaluation.get('split')}: MSE {_num(evaluation.get('mse'))}, AT MAE "
            f"{_num(evaluation.get('at_mae_ms'))} ms"
        )
    if result.error:
        lines.append(f"Error: {result.error}")
    if result.code:
        lines.append("Edited diffusion code: in the structured result's 'code' field")
    return "\n".join(lines)


def evaluation(result: EvaluationResult) -> str:
    mae = "n/a" if result.at_mae_ms is None else f"{result.at_mae_ms:.3g} ms"
    return (
        f"{result.candidate_id} on {result.split}: trajectory MSE {result.mse:.4g}, activation-"
        f"time MAE {mae} ({result.at_compared} nodes compared, {result.at_missing_pred} never "
        f"activated in the prediction, {result.at_missing_true} in the data).\nFigures: "
        f"{result.activation_map_uri}, {result.training_curves_uri}"
    )


def session_summary(result: SessionSummary) -> str:
    best = result.best_candidate_id or "none yet"
    return (
        f"Session {result.session_id} on {result.dataset}: {result.status}, budget left "
        f"{result.budget_left} of {result.budget}, {len(result.candidates)} candidate(s), best "
        f"{best}."
    )


def step(result: StepRecorded) -> str:
    return f"Step {result.step} of {result.session_id} recorded."


SUMMARIES: dict[type[BaseModel], Callable[[Any], str]] = {
    CatalogsResult: catalogs,
    SessionStarted: session_started,
    DraftResult: draft_result,
    TrainingResult: training,
    QueryResult: query,
    CandidateRecord: candidate,
    EvaluationResult: evaluation,
    SessionSummary: session_summary,
    StepRecorded: step,
}


def summary(result: BaseModel) -> str:
    """The compact text of a tool result (its own summary, or its JSON cut short)."""
    describe = SUMMARIES.get(type(result))
    if describe is not None:
        return describe(result)
    text = result.model_dump_json()
    return text if len(text) <= FALLBACK_LIMIT else text[:FALLBACK_LIMIT] + " …"
