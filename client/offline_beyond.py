"""The offline policy's step beyond the catalog: hybrid reactions and the anisotropic template.

When the best *catalog* structure (a catalog reaction, no residual) explains less of the
validation variance than a well-identified set does (``PLATEAU_EXPLAINED``: 97%, read from the
server's diagnosis text), the catalog probably lacks the right reaction or diffusion. Then,
once the reaction screening and the diffusion agenda are done, the policy tries, each once:

1. the best reaction with a **neural residual** (``select_reaction(reaction, residual=...)``:
   ``R + r_phi``, the residual kept small by a norm penalty) on the best physical operator;
2. the **anisotropic** physical template (``laplacian_anisotropic``: conductivities along and
   across fibres) with the best reaction, when the catalog has it;
3. the anisotropic template with the residual, when the residual beat the plain reaction,
   warm-started (``train_candidate(warm_start=[...])``) from the residual's reaction and network
   and the anisotropic candidate's conductivities.

A hybrid candidate trains :data:`~leads_agent.state.RESIDUAL_EPOCHS_FACTOR` times longer than
the run's epochs, and is fine-tuned :data:`~leads_agent.state.RESIDUAL_FINETUNE_FACTOR` times
longer than the run's fine-tuning.

The anisotropic template needs the data set's fibre field: the policy skips it when the data set's
summary (``start_session``'s ``dataset``) names none. When the policy was not told (a resumed
session), a try on a set without fibres fails with the template's message, and the policy then
drops it (:func:`anisotropy_available`) instead of simplifying it like an unstable candidate.

The order follows the diagnosis when it names the part the error points to ("may lack ... the
diffusion"): anisotropy first then. On sets the catalog explains (the AP/RM/MS benchmarks reach
more than 99%), none of this fires and the search is unchanged.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from .state import RESIDUAL_EPOCHS_FACTOR, Candidate, SearchState

if TYPE_CHECKING:
    from .plan import Plan

#: below this explained variance the best catalog structure counts as a plateau above the noise
PLATEAU_EXPLAINED = 0.97
#: the residual the policy tries: two latent state variables (a catalog model misses memory,
#: e.g. the slow current of a spike-and-dome plateau, which a residual on its own state cannot
#: add) and a light penalty (0.01: the plateau says the catalog model is wrong, so the residual
#: must be free to carry a real share of the rate), with an Adam step of 1e-2 (the engine's 3e-3
#: keeps a latent residual from learning within a search's epochs). Measured on the quick
#: Beeler-Reuter set (Mitchell-Schaeffer + laplacian_nodewise, 30 epochs): val MSE 7.3e-3
#: without a residual, 3.9e-3 with one on (u, h) alone, 1.3e-3 with two latent variables (22
#: epochs: 4.8e-3 with an Adam step of 3e-3).
DEFAULT_RESIDUAL: dict[str, Any] = {
    "hidden": 16,
    "layers": 2,
    "penalty": 0.01,
    "latent": 2,
    "learning_rate": 0.01,
}
ANISOTROPIC = "laplacian_anisotropic"
PHYSICAL_BASES = ("laplacian_nodewise", "laplacian_global")

_EXPLAINS = re.compile(r"explains\s+(-?[\d.]+)%\s+of the variance")
_LACKS_DIFFUSION = re.compile(r"lack[^.;]*diffusion", re.IGNORECASE)


def explained_variance(candidate: Candidate) -> float | None:
    """The share of the validation variance a candidate explains, from its diagnosis text."""
    match = _EXPLAINS.search(candidate.diagnosis or "")
    return float(match.group(1)) / 100.0 if match else None


def catalog_plateau(state: SearchState) -> tuple[Candidate, float] | None:
    """The best catalog candidate and its explained variance when it is below
    :data:`PLATEAU_EXPLAINED`; ``None`` when the catalog explains the data (or nothing says)."""
    catalog = [c for c in state.trained() if c.ok and not c.residual and c.reaction != "neural"]
    best = min(catalog, key=lambda c: c.val_loss or math.inf, default=None)
    if best is None:
        return None
    explained = explained_variance(best)
    if explained is None or explained >= PLATEAU_EXPLAINED:
        return None
    return best, explained


def beyond_plan(state: SearchState, reaction: str, plan_type: type[Plan]) -> list[Plan]:
    """The plans beyond the catalog, in order (empty unless the catalog plateaus); the caller
    takes the first that is new."""
    plateau = catalog_plateau(state)
    if plateau is None or state.fixed_reaction == "neural":
        return []
    best, explained = plateau
    trained = [c for c in state.trained() if c.ok and c.reaction == reaction]
    base = _physical_base(state, trained) or best
    head = (
        f"The best catalog structure ({best.candidate_id}: {best.reaction} + {best.diffusion}) "
        f"explains only {explained:.1%} of the validation variance, well short of a set the "
        "catalog describes; the catalog may lack the right model."
    )
    residual_plan = plan_type(
        reaction,
        "select",
        base.diffusion,
        dict(base.hyperparameters),
        f"{head} Add a small neural residual to {reaction}'s right-hand side (R + r_phi, kept "
        f"small by a norm penalty, with two latent state variables for the memory the model "
        f"lacks) on {base.diffusion}: physics first, the network only where the reaction model "
        f"is wrong. Its network starts from zero: train it {RESIDUAL_EPOCHS_FACTOR}x longer.",
        residual=dict(DEFAULT_RESIDUAL),
        epochs_factor=RESIDUAL_EPOCHS_FACTOR,
    )
    plans = [residual_plan]
    # the plans carry the template's defaults as {}, which the archive resolves: a tried
    # anisotropic structure is recognised by its template and residual, not by that key
    plain_anisotropic = _tried(trained, ANISOTROPIC, residual=False)
    if anisotropy_available(state) and not plain_anisotropic:
        plans.append(
            plan_type(
                reaction,
                "select",
                ANISOTROPIC,
                {},
                f"{head} Try anisotropic conduction ({ANISOTROPIC}: learnable conductivities "
                "along and across the fibres).",
            )
        )
    if anisotropy_available(state) and not _tried(trained, ANISOTROPIC, residual=True):
        hybrid = [c for c in trained if c.residual]
        best_hybrid = min(hybrid, key=lambda c: c.val_loss or math.inf, default=None)
        if best_hybrid is not None and (best_hybrid.val_loss or math.inf) < (
            best.val_loss or math.inf
        ):
            # both structures trained: the combination starts from the residual (reaction and
            # network) and from the anisotropic operator, not from zero
            anisotropic = _best_plain(trained, ANISOTROPIC)
            parents = [best_hybrid] + ([anisotropic] if anisotropic is not None else [])
            plans.append(
                plan_type(
                    reaction,
                    "select",
                    ANISOTROPIC,
                    {},
                    f"{head} The residual helped ({best_hybrid.candidate_id}, val "
                    f"{best_hybrid.val_loss:.4g} < {best.val_loss:.4g}): combine it with "
                    f"anisotropic conduction ({ANISOTROPIC}), starting from "
                    f"{' and '.join(c.candidate_id for c in parents)}'s trained parameters.",
                    residual=dict(best_hybrid.residual or DEFAULT_RESIDUAL),
                    epochs_factor=RESIDUAL_EPOCHS_FACTOR,
                    warm_start=tuple(c.candidate_id for c in parents),
                )
            )
    if len(plans) > 1 and _LACKS_DIFFUSION.search(best.diagnosis or ""):
        plans.insert(0, plans.pop(1))  # the error points to the diffusion: anisotropy first
    return plans


def _tried(trained: list[Candidate], template: str, residual: bool) -> bool:
    """Whether one of ``trained`` (one reaction's candidates) already uses ``template`` with
    (or without) a residual and the template's own code."""
    return any(
        c.diffusion == template and bool(c.residual) == residual and not c.edited for c in trained
    )


def _best_plain(trained: list[Candidate], template: str) -> Candidate | None:
    """The best successful candidate of ``template`` without a residual or edited code."""
    plain = [
        c for c in trained if c.ok and c.diffusion == template and not c.residual and not c.edited
    ]
    return min(plain, key=lambda c: c.val_loss or math.inf, default=None)


def anisotropy_available(state: SearchState) -> bool:
    """Whether the anisotropic template may be tried: the catalog has it, the diffusion is not
    fixed, the data set is not known to lack fibres, and no earlier try of it *failed* (the
    template refuses a data set without a fibre field: one failed try tells the policy so)."""
    if ANISOTROPIC not in state.templates or state.fixed_diffusion:
        return False
    if state.dataset_fibers is False:  # the data set's summary names no fibre field
        return False
    return not any(c.diffusion == ANISOTROPIC and c.status == "failed" for c in state.trained())


def is_refused_anisotropy(candidate: Candidate) -> bool:
    """A failed anisotropic candidate: a set without fibres, not an instability to soften."""
    return candidate.diffusion == ANISOTROPIC and candidate.status == "failed"


def _physical_base(state: SearchState, trained: list[Candidate]) -> Candidate | None:
    """The best unedited physical-template candidate of the reaction (no residual)."""
    physical = [
        c
        for c in trained
        if not c.residual
        and not c.edited
        and c.diffusion in PHYSICAL_BASES
        and state.template_families.get(c.diffusion, "physical") == "physical"
    ]
    return min(physical, key=lambda c: c.val_loss or math.inf, default=None)
