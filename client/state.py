"""What the agent observes and decides: candidates read back from the archive, the search state,
and a decision (thought + tool calls).

The archive is read through the server's ``query_archive`` tool only; these classes hold plain
data so that a policy can be tested on a hand-made state without a server.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SEARCH_OPERATIONS",
    "Candidate",
    "Decision",
    "SearchState",
    "ToolCall",
    "parse_verdict",
    "rows_to_dicts",
]

#: Operations that spend a step of the search budget. The same list as the engine's
#: ``leads_engine.spec.SEARCH_OPERATIONS`` (the client cannot import the engine;
#: ``tests/test_state.py`` checks that the two agree).
SEARCH_OPERATIONS = ("select", "refine", "modify", "simplify")
VERDICTS = ("good_fit", "overfitting", "underfitting", "unstable", "failed")


def parse_verdict(diagnosis: Any) -> str | None:
    """The verdict of a diagnosis given as a dict (``verdict`` key) or a text ``"verdict: ..."``."""
    if isinstance(diagnosis, dict):
        verdict = diagnosis.get("verdict")
        return str(verdict) if verdict else parse_verdict(diagnosis.get("text"))
    if isinstance(diagnosis, str):
        text = diagnosis.strip()
        if text.startswith("{"):
            try:
                return parse_verdict(json.loads(text))
            except json.JSONDecodeError:
                pass
        head = text.split(":", 1)[0].strip().lower()
        if head in VERDICTS:
            return head
        for verdict in VERDICTS:
            if verdict in text.lower():
                return verdict
    return None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def rows_to_dicts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """``query_archive``'s ``{"columns": [...], "rows": [[...]]}`` as a list of dicts."""
    columns = result.get("columns") or []
    rows = result.get("rows") or []
    if rows and isinstance(rows[0], dict):
        return [dict(row) for row in rows]
    return [dict(zip(columns, row, strict=False)) for row in rows]


#: a candidate with a hybrid reaction trains for this many times the run's epochs: its network
#: starts from zero and learns more slowly than a catalog model's few parameters (one budget
#: step still)
RESIDUAL_EPOCHS_FACTOR = 4
#: ... and is fine-tuned for this many times the run's fine-tuning epochs (at most the tool's
#: 100). Measured on the quick anisotropic Beeler-Reuter set, from the bench's combination of
#: seed 0 (full steps, the warm-up below): test MSE 3.33e-3 after 40 epochs, still falling, and
#: 2.86e-3 after 60; earlier, without a warm-up, 4.0e-3 after 10 epochs and 3.4e-3 after 40.
RESIDUAL_FINETUNE_FACTOR = 6
#: ... and its fine-tuning warms its learning rates up over this many epochs (the server warms
#: up a warm-started combination the same way): Adam's first full steps threw the trained
#: weights out (a long fine-tuning of the anisotropic hybrid wandered, validation MSE 6.9e-3 at
#: its best from 8.7e-3). On the quick anisotropic Beeler-Reuter set, seeds 0 and 1, the
#: combination's test MSE after its fine-tuning was 2.46e-3 / 2.44e-3 with full steps and this
#: warm-up, against 3.33e-3 / 2.27e-3 with 0.3x steps and none.
RESIDUAL_FINETUNE_WARMUP = 1.0


@dataclass
class Candidate:
    """One trained (or refused) candidate as the archive holds it."""

    candidate_id: str
    operation: str
    reaction: str
    diffusion: str
    status: str
    val_loss: float | None = None
    train_loss: float | None = None
    parameter_count: int | None = None
    parent_id: str | None = None
    diagnosis: str | None = None
    verdict: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    edited: bool = False
    code: str | None = None
    #: a hybrid reaction's residual options (hidden, layers, penalty); None: the model alone
    residual: dict[str, Any] | None = None
    train_curve: list[float] = field(default_factory=list)
    val_curve: list[float] = field(default_factory=list)
    step: int | None = None

    def finetune_arguments(self, run_epochs: int) -> dict[str, Any]:
        """``finetune_candidate``'s epochs (and warm-up) for this candidate when a run
        fine-tunes for ``run_epochs``: a hybrid reaction's :data:`RESIDUAL_FINETUNE_FACTOR` times
        longer (the tool allows at most 100), warming up over :data:`RESIDUAL_FINETUNE_WARMUP`."""
        if not self.residual:
            return {"epochs": run_epochs}
        return {
            "epochs": min(100, run_epochs * RESIDUAL_FINETUNE_FACTOR),
            "warmup_epochs": RESIDUAL_FINETUNE_WARMUP,
        }

    @property
    def ok(self) -> bool:
        """Trained to the end with a finite validation loss."""
        return self.status == "ok" and self.val_loss is not None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Candidate:
        """Build from a ``candidates`` row (``spec`` may be a JSON string or a dict)."""
        spec = row.get("spec")
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError:
                spec = {}
        spec = spec if isinstance(spec, dict) else {}
        diagnosis = row.get("diagnosis")
        if isinstance(diagnosis, dict):
            diagnosis_text = str(diagnosis.get("text") or diagnosis)
        else:
            diagnosis_text = diagnosis
        count = row.get("parameter_count")
        return cls(
            candidate_id=str(row.get("candidate_id")),
            operation=str(row.get("operation") or spec.get("operation") or "select"),
            reaction=str(row.get("reaction") or spec.get("reaction") or "?"),
            diffusion=str(row.get("diffusion") or spec.get("diffusion") or "?"),
            status=str(row.get("status") or "?"),
            val_loss=_float(row.get("val_loss")),
            train_loss=_float(row.get("train_loss")),
            parameter_count=int(count) if count is not None else None,
            parent_id=row.get("parent_id"),
            diagnosis=diagnosis_text,
            verdict=parse_verdict(diagnosis),
            hyperparameters=dict(spec.get("diffusion_hyperparameters") or {}),
            edited=bool(row.get("code") or spec.get("diffusion_source")),
            code=row.get("code") or spec.get("diffusion_source"),
            residual=spec.get("reaction_residual") or None,
        )

    def gap(self) -> float | None:
        """Relative generalisation gap (val - train) / train at the end of the curves."""
        train = self.train_loss if self.train_loss is not None else _last(self.train_curve)
        val = self.val_loss if self.val_loss is not None else _last(self.val_curve)
        if train is None or val is None or train <= 0:
            return None
        return (val - train) / train

    def plateaued(self, tolerance: float = 0.05) -> bool:
        """Whether the validation curve stopped improving (last epoch within 5% of the first)."""
        if len(self.val_curve) < 2:
            return False
        first, last = self.val_curve[0], self.val_curve[-1]
        return last > (1.0 - tolerance) * first

    def summary(self) -> str:
        """One line for a prompt or a log."""
        loss = f"{self.val_loss:.4g}" if self.val_loss is not None else "-"
        hyper = json.dumps(self.hyperparameters, sort_keys=True) if self.hyperparameters else "{}"
        edited = " (edited code)" if self.edited else ""
        if self.residual:
            edited += f" (reaction + neural residual {json.dumps(self.residual, sort_keys=True)})"
        curve = ", ".join(f"{v:.3g}" for v in self.val_curve)
        return (
            f"{self.candidate_id}: {self.operation} {self.reaction} + {self.diffusion}{edited} "
            f"{hyper} status={self.status} val={loss} params={self.parameter_count} "
            f"verdict={self.verdict} val_curve=[{curve}]"
        )


def _last(values: list[float]) -> float | None:
    return values[-1] if values else None


@dataclass
class SearchState:
    """The session as the policy sees it at the start of a step."""

    session_id: str
    reactions: list[str]
    templates: list[str]
    budget: int
    step: int
    candidates: list[Candidate] = field(default_factory=list)
    template_families: dict[str, str] = field(default_factory=dict)
    hyperparameter_ranges: dict[str, dict[str, Any]] = field(default_factory=dict)
    fixed_reaction: str | None = None
    fixed_diffusion: str | None = None
    notes: list[str] = field(default_factory=list)
    #: whether the data set's mesh carries a fibre field (its summary's ``fibers``), None when
    #: the policy was not told (a resumed session)
    dataset_fibers: bool | None = None
    #: the offline policy stops after this many steps without a better validation loss
    #: (:mod:`.convergence`); 0: it searches the whole budget
    patience: int = 0

    @property
    def steps_left(self) -> int:
        """Steps left in the budget, this one included."""
        return max(0, self.budget - self.step + 1)

    def trained(self) -> list[Candidate]:
        """Search candidates (fine-tuned copies excluded), in archive order."""
        return [
            c
            for c in self.candidates
            if c.operation in SEARCH_OPERATIONS and c.status not in ("refused", "pending")
        ]

    def best(self, reaction: str | None = None) -> Candidate | None:
        """The candidate with the lowest validation loss (optionally of one reaction)."""
        pool = [c for c in self.trained() if c.ok and (reaction is None or c.reaction == reaction)]
        return min(pool, key=lambda c: c.val_loss or math.inf, default=None)

    def get(self, candidate_id: str) -> Candidate | None:
        """A candidate by id."""
        return next((c for c in self.candidates if c.candidate_id == candidate_id), None)

    def describe(self) -> str:
        """The archive as text: one line per candidate, best first marked."""
        best = self.best()
        lines = [
            f"session {self.session_id}, step {self.step} of {self.budget} "
            f"({self.steps_left} left including this one)",
            f"reaction models: {', '.join(self.reactions)}",
            f"diffusion templates: {', '.join(self.templates)}",
        ]
        if not self.trained():
            lines.append("archive: no candidate trained yet")
        for candidate in self.trained():
            mark = "  <- best so far" if best and candidate is best else ""
            lines.append(f"- {candidate.summary()}{mark}")
        return "\n".join(lines)


@dataclass
class ToolCall:
    """One MCP tool call an agent made or wants made."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    ok: bool | None = None
    result: str | None = None

    def as_action(self) -> dict[str, Any]:
        """JSON form stored in the archive's ``steps.action`` (session id and code elided)."""
        arguments = {k: v for k, v in self.arguments.items() if k != "session_id"}
        if isinstance(arguments.get("source"), str):
            arguments["source"] = f"<{len(arguments['source'])} characters of code>"
        return {"tool": self.name, "arguments": arguments, "ok": self.ok}


@dataclass
class Decision:
    """A policy's answer for one step: its reasoning and the calls that set up the candidate."""

    thought: str
    calls: list[ToolCall] = field(default_factory=list)
    stop: bool = False
    #: the candidate trains for this many times the run's epochs per candidate (a hybrid
    #: reaction's network starts from zero and needs longer than physical parameters)
    epochs_factor: int = 1
    #: trained candidates whose shared parts (reaction, residual, diffusion) start the new one
    #: (train_candidate's ``warm_start``): a combination of two structures starts from both
    warm_start: list[str] = field(default_factory=list)

    def epochs_for(self, run_epochs: int) -> int:
        """The epochs to ask train_candidate for (the tool allows at most 100)."""
        return min(100, run_epochs * max(1, self.epochs_factor))


#: How the loop reports a step whose action the server refused (policies key on it).
NOT_TRAINED = "no candidate was trained this step"
