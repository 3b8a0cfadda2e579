"""What a search run is asked to do (:class:`RunConfig`) and what it produced: its steps
(:class:`StepRecord`) and the result the report and the JSON summary are written from
(:class:`RunResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .convergence import PATIENCE
from .policy import Usage
from .reveal import Revealed
from .state import Candidate


@dataclass
class RunConfig:
    """What to run (the CLI's options)."""

    dataset: str = "ap"
    budget: int = 15
    epochs: int = 3
    finetune: int = 10
    batch_size: int | None = None  # None: each template's catalog batch size
    seed: int = 0
    anonymise: bool = True
    resume: str | None = None
    max_steps: int | None = None
    fixed_reaction: str | None = None
    fixed_diffusion: str | None = None
    reactions: list[str] | None = None
    use_true_reaction: bool = False
    label: str = "discover"
    #: most steps whose candidates train at once (the offline policy's reaction screening and
    #: diffusion agenda; 2 or more also trains a guess of its next step meanwhile); 1 trains one
    #: candidate per step as before
    parallel: int = 8
    #: epochs of the offline policy's screening candidates (None: ``epochs``, as every step)
    screening_epochs: int | None = None
    #: the offline policy stops after this many steps without a better validation loss
    #: (:mod:`.convergence`); 0: the whole budget
    patience: int = PATIENCE


@dataclass
class StepRecord:
    """One step of the trajectory as the report shows it."""

    step: int
    thought: str
    action: list[dict[str, Any]]
    observation: str
    candidate_id: str | None = None


@dataclass
class RunResult:
    """Everything the report and the JSON summary need."""

    session_id: str
    dataset: dict[str, Any]
    anonymised: bool
    steps: list[StepRecord]
    candidates: list[Candidate]
    best: Candidate | None
    finetuned: dict[str, Any] | None
    evaluation: dict[str, Any] | None
    catalogs: dict[str, Any]
    usage: Usage
    wall_seconds: float
    completed: bool
    label: str = "discover"
    steps_recorded_on_server: bool = True
    notes: list[str] = field(default_factory=list)
    best_record: dict[str, Any] | None = None
    repairs: dict[str, int] = field(default_factory=dict)
    #: an anonymised session's truth, read for the user after the search (never for the model)
    revealed: Revealed | None = None

    def summary(self) -> dict[str, Any]:
        """Machine-readable summary (the ``--json`` output)."""
        final = self.finetuned or {}
        evaluation = self.evaluation or {}
        return {
            "session_id": self.session_id,
            "mode": self.label,
            "completed": self.completed,
            "anonymised": self.anonymised,
            "steps": len(self.steps),
            "candidates": [
                {
                    "candidate_id": c.candidate_id,
                    "step": c.step,
                    "operation": c.operation,
                    "reaction": c.reaction,
                    "diffusion": c.diffusion,
                    "status": c.status,
                    "val_loss": c.val_loss,
                    "parameter_count": c.parameter_count,
                }
                for c in self.candidates
            ],
            "best": None
            if self.best is None
            else {
                "candidate_id": self.best.candidate_id,
                "reaction": self.best.reaction,
                "diffusion": self.best.diffusion,
                "hyperparameters": self.best.hyperparameters,
                "val_loss": self.best.val_loss,
            },
            "finetuned": None
            if not final
            else {
                "candidate_id": final.get("candidate_id"),
                "status": final.get("status"),
                "best_val_loss": final.get("best_val_loss"),
            },
            "test": None
            if not evaluation
            else {
                "candidate_id": evaluation.get("candidate_id"),
                "mse": evaluation.get("mse"),
                "at_mae_ms": evaluation.get("at_mae_ms", evaluation.get("at_mae")),
            },
            "usage": self.usage.as_dict(),
            "repairs": self.repairs,
            "wall_seconds": round(self.wall_seconds, 2),
            "notes": self.notes,
            "revealed": None if self.revealed is None else self.revealed.as_dict(),
        }
