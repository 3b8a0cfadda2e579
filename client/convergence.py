"""When the offline policy's search has converged: ``patience`` steps in a row that did not beat
the best validation loss.

The reaction screening always runs to its end (its candidates are compared with one another,
not with a best so far), and the diffusion agenda and the beyond-the-catalog steps are planned
before this check; what patience cuts short is the open-ended part: the diagnosis's further
graph networks, code edits and refinements. On the default AP discovery those were steps 10-15,
159 s of its 382 s, and none of them beat the agenda's ``laplacian_nodewise``; with patience 3
the default discoveries on AP, RM and MS stop after step 10 with the same structures and test
MSEs as the whole budget gave (README, "Executors").

A step *improves* when its validation loss is below ``(1 - MIN_IMPROVEMENT)`` times the best
before it; a step that diverged, failed or is still training (a guess's placeholder) does not.
``patience`` 0 (``leads-agent discover --patience 0``) searches the whole budget.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from .state import Candidate, SearchState

#: the default ``--patience``: steps without a better validation loss before the search stops
PATIENCE = 3
#: a step must lower the best validation loss by this share to count as an improvement
MIN_IMPROVEMENT = 0.01


def steps_without_improvement(state: SearchState, screening: Collection[str]) -> list[Candidate]:
    """The trailing run of search candidates, the ``screening`` ones (ids) left out, that did
    not improve on the best validation loss before them (screening candidates included)."""
    best = math.inf
    since: list[Candidate] = []
    for candidate in state.trained():
        loss = candidate.val_loss if candidate.ok else None
        improved = loss is not None and loss < (1.0 - MIN_IMPROVEMENT) * best
        if loss is not None:
            best = min(best, loss)
        if candidate.candidate_id in screening:
            continue
        since = [] if improved else [*since, candidate]
    return since


def convergence_thought(state: SearchState, screening: Collection[str]) -> str | None:
    """Why the search stops here (``state.patience`` steps without improvement), else None."""
    if state.patience <= 0:
        return None
    since = steps_without_improvement(state, screening)
    if len(since) < state.patience:
        return None
    best = state.best()
    where = (
        f"the best, {best.candidate_id} ({best.reaction} + {best.diffusion}, val "
        f"{best.val_loss:.4g})"
        if best is not None and best.val_loss is not None
        else "the best"
    )
    return (
        f"The last {len(since)} steps ({', '.join(c.candidate_id for c in since)}) did not "
        f"improve on {where} by {MIN_IMPROVEMENT:.0%}: the search has converged (patience "
        f"{state.patience}). Stop and fine-tune the best; {state.steps_left} step(s) of the "
        "budget stay unused."
    )
