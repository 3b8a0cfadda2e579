"""The run report: ``report.md``, figures and the best model's spec (and weights when the server
offers them), written from what the server returned (tools and resources)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .agent import RunResult
from .connection import ServerConnection
from .report_html import write_report_html

__all__ = ["plot_validation_per_step", "write_report"]


def _cell(text: Any, limit: int = 400) -> str:
    value = " ".join(str(text if text is not None else "").split())
    if len(value) > limit:
        value = value[: limit - 3] + "..."
    return value.replace("|", "\\|")


def _loss(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "-"


def _cost(usage: Any) -> str:
    if usage.cost_usd is not None:
        return f"${usage.cost_usd:.4f} at list prices"
    if usage.requests == 0:
        return "none (no LLM)"
    return f"unknown (no list price for {usage.model})"


def plot_validation_per_step(result: RunResult, path: Path) -> Path | None:
    """Validation loss of each step's candidate, with the running best."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    points = [
        (c.step, c.val_loss)
        for c in result.candidates
        if c.operation != "finetune" and c.step is not None and c.val_loss is not None
    ]
    if not points:
        return None
    steps, losses = zip(*points, strict=True)
    running = []
    best = float("inf")
    for loss in losses:
        best = min(best, loss)
        running.append(best)
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.subplots()
    ax.plot(steps, losses, "o", label="candidate")
    ax.step(steps, running, where="post", label="best so far")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("validation MSE")
    ax.set_title(f"search {result.session_id}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


async def _fetch(conn: ServerConnection, uri: str, path: Path) -> Path | None:
    try:
        data = await conn.read_resource(uri)
    except Exception:  # a missing figure is reported, never fatal
        return None
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _reaction_entry(result: RunResult, name: str) -> dict[str, Any]:
    for entry in result.catalogs.get("reactions", []):
        if entry.get("name") == name:
            return entry
    return {}


async def write_report(conn: ServerConnection, result: RunResult, folder: Path) -> Path:
    """Write the report folder; returns the path of ``report.md``."""
    folder.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    curve = plot_validation_per_step(result, folder / "validation_per_step.png")
    if curve:
        figures["validation loss per step"] = curve
    evaluation = result.evaluation or {}
    final_id = evaluation.get("candidate_id")
    if final_id:
        for key, name in (
            ("activation_map_uri", "activation_map.png"),
            ("training_curves_uri", "training_curves.png"),
        ):
            uri = evaluation.get(key) or f"candidate://{final_id}/{name}"
            fetched = await _fetch(conn, uri, folder / name)
            if fetched:
                figures[name.removesuffix(".png").replace("_", " ")] = fetched
            else:
                result.notes.append(f"figure {uri} could not be read")
    spec_path = None
    weights_path = None
    if result.best_record is not None:
        spec = {
            "candidate_id": result.best_record.get("candidate_id"),
            "spec": result.best_record.get("spec"),
            "code": result.best_record.get("code"),
            "val_loss": result.best_record.get("val_loss"),
            "metrics": result.best_record.get("metrics"),
        }
        spec_path = folder / "best_model_spec.json"
        spec_path.write_text(json.dumps(spec, indent=2, default=str))
        if await conn.has_resource_template("/weights.pt"):
            weights_path = await _fetch(
                conn, f"candidate://{spec['candidate_id']}/weights.pt", folder / "best_model.pt"
            )
    await write_report_html(conn, result, folder)
    (folder / "summary.json").write_text(json.dumps(result.summary(), indent=2, default=str))
    path = folder / "report.md"
    path.write_text(_markdown(result, figures, spec_path, weights_path))
    return path


def _diagnosis_lines(finetuned: dict[str, Any], best: Any) -> list[str]:
    """The final model's diagnosis, and loudly whether the catalog may lack the right model
    (the server's ``catalog_may_lack``: the fit plateaued far above the noise floor)."""
    text = finetuned.get("diagnosis") or getattr(best, "diagnosis", None)
    lines = [f"- diagnosis: {_cell(text, 600)}"] if text else []
    part = finetuned.get("catalog_may_lack")
    if part in ("reaction", "diffusion"):
        split = finetuned.get("error_split") or {}
        share = split.get("wavefront_share")
        detail = (
            f" ({share:.0%} of the validation error at the wavefront, "
            f"{1 - share:.0%} in the action potential's shape)"
            if isinstance(share, (int, float))
            else ""
        )
        lines += [
            "",
            f"**The catalog may lack the right {part} model**: the best structure plateaued "
            f"far above the noise floor{detail}.",
        ]
    return lines


def _revealed_lines(result: RunResult) -> list[str]:
    """What the anonymised session hid from its agent (read for the user after the search)."""
    revealed = result.revealed
    if revealed is None:
        return []
    lines = ["", "## Revealed after the search", ""]
    if revealed.unavailable:
        return lines + [f"Real names not read here: {revealed.unavailable}."]
    best = result.best
    lines += [
        f"- data set: `{revealed.dataset}`; true reaction: **{revealed.true_reaction or '?'}**",
    ]
    if best is not None:
        chosen = revealed.real(best.reaction)
        verdict = (
            "the true reaction"
            if revealed.true_reaction and chosen == revealed.true_reaction
            else "not the true reaction"
        )
        lines.append(f"- chosen: {best.reaction} = **{chosen}** ({verdict})")
    lines += ["", "| alias | reaction |", "|---|---|"]
    lines += [f"| {alias} | {real} |" for alias, real in sorted(revealed.aliases.items())]
    return lines


def _markdown(
    result: RunResult, figures: dict[str, Path], spec_path: Path | None, weights: Path | None
) -> str:
    lines = [f"# LEADS {result.label} report: session `{result.session_id}`", ""]
    dataset = result.dataset
    name = dataset.get("name") if isinstance(dataset, dict) else dataset
    lines += [
        f"- data set: `{name or '?'}`",
        f"- reaction names anonymised: {'yes' if result.anonymised else 'no'}",
        f"- policy: {result.usage.model}; steps: {len(result.steps)}; "
        f"completed: {'yes' if result.completed else 'no (resumable)'}",
        f"- wall time: {result.wall_seconds:.1f} s",
        "",
        "## Search trajectory",
        "",
        "| step | thought | action | observation |",
        "|---|---|---|---|",
    ]
    for step in result.steps:
        actions = "; ".join(
            f"{a.get('tool')}({_cell(json.dumps(a.get('arguments', {}), default=str), 120)})"
            f"{'' if a.get('ok', True) is not False else ' REFUSED'}"
            for a in step.action
            if isinstance(a, dict)
        )
        lines.append(
            f"| {step.step} | {_cell(step.thought)} | {_cell(actions, 300)} | "
            f"{_cell(step.observation, 300)} |"
        )
    lines += [
        "",
        "## Candidates",
        "",
        "| step | id | operation | reaction | diffusion | parameters | val loss | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in result.candidates:
        lines.append(
            f"| {c.step or '-'} | `{c.candidate_id}` | {c.operation}"
            f"{' (edited)' if c.edited else ''}"
            f" | {c.reaction} | {c.diffusion} {_cell(json.dumps(c.hyperparameters), 80)} | "
            f"{c.parameter_count if c.parameter_count is not None else '-'} | "
            f"{_loss(c.val_loss)} | {c.status} |"
        )
    lines += ["", "## Best model", ""]
    best = result.best
    if best is None:
        lines.append("No candidate trained successfully.")
    else:
        lines += [
            f"- candidate `{best.candidate_id}`: reaction **{best.reaction}** + diffusion "
            f"**{best.diffusion}** {json.dumps(best.hyperparameters)}"
            f"{' (edited code)' if best.edited else ''}, search val loss {_loss(best.val_loss)}",
        ]
        entry = _reaction_entry(result, best.reaction)
        if entry.get("description"):
            lines += [
                "",
                "Reaction equations:",
                "",
                "```",
                str(entry["description"]).strip(),
                "```",
            ]
        finetuned = result.finetuned or {}
        parameters = finetuned.get("reaction_parameters") or {}
        if parameters:
            lines += ["", "Fitted reaction parameters:", "", "| parameter | value |", "|---|---|"]
            lines += [f"| {k} | {_loss(v)} |" for k, v in parameters.items()]
        if finetuned:
            lines += [
                "",
                f"- fine-tuned `{finetuned.get('candidate_id')}`: status "
                f"{finetuned.get('status')}, "
                f"val loss {_loss(finetuned.get('best_val_loss'))}",
            ]
        lines += _diagnosis_lines(finetuned, best)
        if spec_path:
            lines.append(f"- spec: [{spec_path.name}]({spec_path.name})")
        lines.append(
            f"- weights: [{weights.name}]({weights.name})"
            if weights
            else "- weights: not offered by the server (kept in its archive)"
        )
    lines += _revealed_lines(result)
    evaluation = result.evaluation or {}
    lines += ["", "## Test split", ""]
    if evaluation:
        at = evaluation.get("at_mae_ms", evaluation.get("at_mae"))
        lines += [
            f"- test MSE: {_loss(evaluation.get('mse'))}",
            f"- activation-time MAE: {_loss(at)} ms",
        ]
    else:
        lines.append("Not evaluated (the search did not finish).")
    lines += ["", "## Figures", ""]
    lines += [f"![{title}]({p.name})" for title, p in figures.items()] or ["(none)"]
    usage = result.usage
    lines += [
        "",
        "## Tokens and cost",
        "",
        f"- model: {usage.model}; requests {usage.requests}, retries {usage.retries}",
        f"- input tokens {usage.input_tokens} (cache writes {usage.cache_creation_tokens}, "
        f"cache reads {usage.cache_read_tokens}), output tokens {usage.output_tokens}",
        f"- cost: {_cost(usage)}",
    ]
    repairs = {k: v for k, v in result.repairs.items() if v}
    if repairs:
        lines.append(
            "- repaired or refused: "
            + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in repairs.items())
        )
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"
