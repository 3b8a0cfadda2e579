"""The paper's scripted baselines, run on the engine directly (no agent, no MCP).

=============  ===========================================================================
method         structure
=============  ===========================================================================
physics        true reaction with its true parameters, fixed, + FE Laplacian with a learnable
               per-node conductivity (the oracle: only the tissue is unknown)
hybrid-gat     true reaction + GAT diffusion (the human-designed hybrid, as HyPer-EP)
diff-only      true reaction; the diffusion chosen among the catalog by validation loss
react-only     GAT diffusion fixed; the reaction chosen among the catalog by validation loss
all-neural     neural (MLP) reaction + GAT diffusion
catalog-best   every catalog reaction + FE Laplacian with a learnable per-node conductivity,
               the best by validation loss (the best pure catalog structure)
=============  ===========================================================================

On a data set whose true reaction is not in the search catalog (``leads-bench --beyond``),
hybrid-gat and diff-only use the *stand-in*: the catalog reaction that fits best with the FE
Laplacian (the catalog-best screening, shared through the fit cache), and say so in their
notes; the physics oracle is the generator's own simulation (:mod:`leads_bench.beyond`).

Each candidate trains for the search budget (``epochs``, default 3); the chosen one is then
fine-tuned (``finetune_epochs``, default 10) and evaluated on the test split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from leads_engine.dataset import EPDataset
from leads_engine.diffusion import list_templates
from leads_engine.reactions import REACTION_MODELS
from leads_engine.reactions.generator_models import in_search_catalog
from leads_engine.spec import CandidateSpec
from leads_engine.training import (
    Evaluation,
    FitResult,
    TrainingConfig,
    TrainingProgress,
    evaluate,
    fit,
)

__all__ = [
    "BASELINES",
    "EXTRA_BASELINES",
    "BaselineResult",
    "baseline_candidates",
    "run_baseline",
    "stand_in_reaction",
]

#: The paper's scripted baselines.
BASELINES = ("physics", "hybrid-gat", "diff-only", "react-only", "all-neural")
#: Baselines outside the paper's table (the out-of-catalog comparison's reference row).
EXTRA_BASELINES = ("catalog-best",)
#: Baselines built on the true reaction: on out-of-catalog data they use the stand-in.
NEEDS_TRUE_REACTION = ("physics", "hybrid-gat", "diff-only")


def baseline_candidates(
    method: str,
    true_reaction: str,
    seed: int = 0,
    true_parameters: dict[str, float] | None = None,
    has_fibers: bool = False,
) -> list[CandidateSpec]:
    """The candidate structures a baseline tries (one, or a catalog sweep).

    ``true_parameters`` (the data set's ``meta["reaction_parameters"]``) fix the physics
    oracle's reaction; without them it starts from the model's defaults, still fixed.
    ``has_fibers``: the data set's mesh carries a fibre field, so the diffusion sweep includes
    the operators that need one.
    """

    def spec(reaction: str, diffusion: str) -> CandidateSpec:
        return CandidateSpec(
            reaction=reaction, diffusion=diffusion, operation="baseline", seed=seed
        )

    if method == "physics":
        return [
            spec(true_reaction, "laplacian_nodewise").model_copy(
                update={
                    "reaction_parameters": dict(true_parameters or {}),
                    "reaction_learnable": False,
                }
            )
        ]
    if method == "hybrid-gat":
        return [spec(true_reaction, "gat")]
    if method == "diff-only":  # every template that runs on the data (fibres or not)
        return [
            spec(true_reaction, info.name)
            for info in list_templates()
            if has_fibers or not info.requires_fibers
        ]
    if method == "react-only":
        return [spec(name, "gat") for name in REACTION_MODELS]
    if method == "all-neural":
        return [spec("neural", "gat")]
    if method == "catalog-best":
        return [spec(name, "laplacian_nodewise") for name in REACTION_MODELS]
    known = ", ".join(BASELINES + EXTRA_BASELINES)
    raise ValueError(f"unknown baseline {method!r}; choose one of {known}")


@dataclass
class BaselineResult:
    """A baseline's screening, the chosen candidate's fine-tuning and its test scores."""

    method: str
    chosen: CandidateSpec
    screening: list[tuple[CandidateSpec, FitResult]]
    finetuned: FitResult
    evaluation: Evaluation
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly figures of the run (no weights)."""
        return {
            "method": self.method,
            "reaction": self.chosen.reaction,
            "diffusion": self.chosen.diffusion,
            "screening": [
                {
                    "reaction": s.reaction,
                    "diffusion": s.diffusion,
                    "status": r.status,
                    "val_loss": r.best_val_loss,
                    "seconds": round(r.wall_seconds, 2),
                }
                for s, r in self.screening
            ],
            "finetune_val_loss": self.finetuned.best_val_loss,
            "notes": self.extra,
            "test": self.evaluation.summary(),
            "wall_seconds": round(
                sum(r.wall_seconds for _, r in self.screening) + self.finetuned.wall_seconds, 2
            ),
        }


def run_baseline(
    method: str,
    dataset: EPDataset,
    epochs: int = 3,
    finetune_epochs: int = 10,
    config: TrainingConfig | None = None,
    progress: Callable[[str, TrainingProgress], None] | None = None,
    seed: int = 0,
    fitter: Callable[..., FitResult] = fit,
) -> BaselineResult:
    """Screen the baseline's candidates, fine-tune the best and evaluate it on the test split.

    ``fitter`` replaces :func:`fit` (same signature), e.g. a
    :class:`~leads_bench.fit_cache.FitCache` shared by several baselines.
    """
    config = config or TrainingConfig()
    true_reaction = str(dataset.meta["reaction"])
    true_parameters = dataset.meta.get("reaction_parameters")
    notes: dict[str, Any] = {}
    if method in NEEDS_TRUE_REACTION and not in_search_catalog(true_reaction):
        if method == "physics":
            raise ValueError(
                f"the physics oracle needs the true reaction, and {true_reaction} is not in the "
                "search catalog: use the generator's own simulation (leads_bench.beyond)"
            )
        true_reaction = stand_in_reaction(dataset, epochs, config, seed, fitter, progress)
        true_parameters = None
        notes["stand_in"] = (
            f"the true reaction {dataset.meta['reaction']} is not in the search catalog; "
            f"{true_reaction}, the catalog reaction fitting best with the FE Laplacian, stands in"
        )
    screening: list[tuple[CandidateSpec, FitResult]] = []
    for spec in baseline_candidates(
        method, true_reaction, seed, true_parameters, has_fibers=dataset.fibers is not None
    ):
        label = f"{spec.reaction} + {spec.diffusion}"
        callback = (lambda event, label=label: progress(label, event)) if progress else None
        result = fitter(spec, dataset, replace(config, epochs=epochs), progress=callback)
        screening.append((spec, result))
    trained = [(s, r) for s, r in screening if r.status == "ok" and r.best_val_loss is not None]
    if not trained:
        raise RuntimeError(f"every {method} candidate was unstable or failed")
    chosen, first = min(trained, key=lambda pair: pair[1].best_val_loss)
    callback = (lambda event: progress("fine-tune", event)) if progress else None
    finetuned = fitter(
        chosen.model_copy(update={"operation": "finetune"}),
        dataset,
        replace(config, epochs=finetune_epochs),
        progress=callback,
        initial_state=first.state_dict,
    )
    extra = dict(notes)
    if finetuned.status != "ok" or finetuned.state_dict is None:
        finetuned = first  # fine-tuning diverged: keep the screened weights, and say so
        extra["finetune"] = "diverged; evaluated the screened weights"
    evaluation = evaluate(chosen, dataset, finetuned.state_dict, "test", config)
    return BaselineResult(method, chosen, screening, finetuned, evaluation, extra)


def stand_in_reaction(
    dataset: EPDataset,
    epochs: int,
    config: TrainingConfig,
    seed: int = 0,
    fitter: Callable[..., FitResult] = fit,
    progress: Callable[[str, TrainingProgress], None] | None = None,
) -> str:
    """The catalog reaction with the lowest validation loss with the FE Laplacian (the
    catalog-best screening; shared with that baseline through ``fitter``'s cache)."""
    scores: list[tuple[float, str]] = []
    for spec in baseline_candidates("catalog-best", "", seed):
        label = f"stand-in {spec.reaction} + {spec.diffusion}"
        callback = (lambda event, label=label: progress(label, event)) if progress else None
        result = fitter(spec, dataset, replace(config, epochs=epochs), progress=callback)
        if result.status == "ok" and result.best_val_loss is not None:
            scores.append((result.best_val_loss, spec.reaction))
    if not scores:
        raise RuntimeError("no catalog reaction trained with the FE Laplacian")
    return min(scores)[1]
