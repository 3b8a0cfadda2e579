"""The diagnosis of a fit: what its curves and its error's structure say, in words the agent
can act on and in fields a policy can key on.

The verdict follows the explained variance (noise taken out); the validation error is split
into the wave's timing and the action potential's shape
(:func:`~leads_engine.metrics.error_structure`); a fit that plateaus far above the noise floor
says which part (reaction or diffusion) the catalog may lack (``catalog_may_lack``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .metrics import ErrorStructure

Status = Literal["ok", "unstable", "failed"]

#: Share of the (noise-corrected) variance a fit must explain to be a ``good_fit``.
GOOD_FIT_EXPLAINED = 0.95
#: A validation curve whose last epoch gains less than this on the best earlier one plateaued.
PLATEAU_GAIN = 0.1
#: "Far above the noise floor": the best validation error is this many times the floor.
FAR_ABOVE_FLOOR = 10.0
#: The noise floor of noise-free data: this share of the data's variance (float32 rollouts
#: of the true model reach about 1e-4 of it on the bundled sets).
FLOOR_SHARE = 1e-4
#: A fit must explain this much before its plateau says anything about the catalog: below, the
#: structure misses the wave altogether, and which part lacks is anyone's guess.
CAPTURES_THE_WAVE = 0.5
#: Share of the error at the wavefront from which the diagnosis blames the diffusion.
WAVEFRONT_BLAME = 0.5

CatalogGap = Literal["reaction", "diffusion"]


@dataclass
class Diagnosis:
    """What the curves say, in words the agent can act on, and the machine-readable figures.

    ``catalog_may_lack`` is ``"reaction"`` or ``"diffusion"`` when this fit plateaued far above
    the noise floor while explaining too little: if no other structure does better, the
    catalog may lack the right model of that part (the error's split says which: timing at the
    wavefront points to the diffusion, the action potential's shape to the reaction).
    ``error_split`` is :meth:`leads_engine.metrics.ErrorStructure.as_dict` of the best epoch's
    validation rollout (TMP data sets only).
    """

    verdict: Literal["good_fit", "overfitting", "underfitting", "unstable", "failed"]
    text: str
    generalisation_gap: float | None
    explained_variance: float | None
    parameter_count: int
    catalog_may_lack: CatalogGap | None = None
    error_split: dict[str, float | None] | None = None
    noise_floor: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly fields (what results and the archive carry)."""
        return {
            "verdict": self.verdict,
            "text": self.text,
            "generalisation_gap": self.generalisation_gap,
            "explained_variance": self.explained_variance,
            "catalog_may_lack": self.catalog_may_lack,
            "error_split": self.error_split,
            "noise_floor": self.noise_floor,
        }


def _plateaued(val_losses: list[float]) -> bool:
    """The last epoch gained less than :data:`PLATEAU_GAIN` on the best earlier epoch."""
    if len(val_losses) < 2:
        return False
    return val_losses[-1] > (1.0 - PLATEAU_GAIN) * min(val_losses[:-1])


def _blamed_part(structure: ErrorStructure | None) -> CatalogGap:
    """Which part the error points to: the diffusion when the wave arrives at the wrong time
    or not at all (most of the error at the wavefront, or beats missing it), else the
    reaction (the error sits in the plateau, repolarisation or rest: the shape). Without TMP
    (recordings) the error cannot be split and the reaction is the default suspect."""
    if structure is None:
        return "reaction"
    if structure.wavefront_share >= WAVEFRONT_BLAME or structure.at_missed_fraction > 0.05:
        return "diffusion"
    return "reaction"


def _catalog_advice(part: CatalogGap, structure: ErrorStructure | None, ratio: float) -> str:
    where = " (no TMP to split the error: the reaction is the default suspect)."
    if structure is not None:
        at = structure.at_mae_ms
        at_text = f", AT MAE {at:.2g} ms" if math.isfinite(at) else ""
        where = (
            f" {structure.wavefront_share:.0%} of the error is at the wavefront (activation "
            f"timing{at_text}), {structure.shape_share:.0%} in the action potential's shape "
            "(plateau, repolarisation, rest)."
        )
    fix = (
        "correct the reaction (a residual on its right-hand side or an edit of its code) "
        "rather than adding diffusion capacity"
        if part == "reaction"
        else "change the conduction (an anisotropic or edited diffusion operator) rather than "
        "the reaction"
    )
    return (
        f"the fit plateaued {ratio:.0f}x above the noise floor.{where} If no other structure "
        f"does better, the catalog may lack the right {part} model: {fix}"
    )


def diagnose(
    train_losses: list[float],
    val_losses: list[float],
    status: Status,
    parameter_count: int,
    data_variance: float,
    failure: dict[str, Any] | None = None,
    structure: ErrorStructure | None = None,
    noise_variance: float = 0.0,
) -> Diagnosis:
    """Name the fit's problem: instability, over-fitting (gap) or under-fitting (variance).

    The verdict follows the explained variance with the observation noise taken out,
    ``1 - (val - s^2) / (var - s^2)`` (``s^2`` = ``noise_variance``): ``good_fit`` needs
    :data:`GOOD_FIT_EXPLAINED`, below it the fit is ``underfitting`` (however fast its curve
    still falls). An under-fit that explains at least :data:`CAPTURES_THE_WAVE` and
    plateaued more than :data:`FAR_ABOVE_FLOOR` times above the noise floor
    (``max(s^2, FLOOR_SHARE * var)``) sets ``catalog_may_lack`` to the part ``structure`` (the
    best epoch's :func:`~leads_engine.metrics.error_structure`) points to.
    """
    if status != "ok" or not val_losses:
        where = f" at epoch {failure['epoch']}, step {failure['step']}" if failure else ""
        reason = failure.get("reason", "") if failure else ""
        return Diagnosis(
            "unstable" if status == "unstable" else "failed",
            f"integration diverged{where} ({reason}); reduce capacity, simplify the diffusion "
            "or choose a different reaction",
            None,
            None,
            parameter_count,
        )
    best = int(np.argmin(val_losses))
    gap = (val_losses[best] - train_losses[best]) / max(train_losses[best], 1e-12)
    explained = 1.0 - val_losses[best] / max(data_variance, 1e-12)
    signal = max(data_variance - noise_variance, 1e-12)
    explained_signal = 1.0 - max(val_losses[best] - noise_variance, 0.0) / signal
    floor = max(noise_variance, FLOOR_SHARE * data_variance, 1e-12)
    ratio = val_losses[best] / floor
    plateaued = _plateaued(val_losses)
    catalog_may_lack: CatalogGap | None = None
    if gap > 0.5:
        verdict, advice = "overfitting", "validation loss well above training loss: simplify"
    elif explained_signal < GOOD_FIT_EXPLAINED:
        verdict = "underfitting"
        if plateaued and ratio > FAR_ABOVE_FLOOR and explained_signal >= CAPTURES_THE_WAVE:
            catalog_may_lack = _blamed_part(structure)
            advice = _catalog_advice(catalog_may_lack, structure, ratio)
        else:
            advice = (
                f"the model explains too little of the data (under {GOOD_FIT_EXPLAINED:.0%}): "
                "train longer, refine (more capacity) or change the reaction model"
            )
    else:
        verdict, advice = "good_fit", "train and validation agree and the error is small"
    text = (
        f"{verdict}: val MSE {val_losses[best]:.3g} (best epoch {best + 1}), train MSE "
        f"{train_losses[best]:.3g}, gap {gap:+.0%}, explains {explained:.1%} of the variance, "
        f"{parameter_count} parameters; {advice}"
    )
    return Diagnosis(
        verdict,
        text,
        float(gap),
        float(explained),
        parameter_count,
        catalog_may_lack,
        None if structure is None else structure.as_dict(),
        float(floor),
    )
