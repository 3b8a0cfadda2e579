"""The offline policy stops once its search has converged (client/convergence.py): ``patience``
steps after the screening without a better validation loss; the screening, the agenda and the
beyond-the-catalog steps are never cut short."""

from __future__ import annotations

import asyncio
import dataclasses

from leads_agent.cli import build_parser
from leads_agent.convergence import PATIENCE, steps_without_improvement
from leads_agent.offline import OfflinePolicy, plan_step
from leads_agent.state import SearchState
from test_offline import FakeEnv, cand, screened, state
from test_residual_policy import explored as explained_explored

SCREENING = {"reaction_A": 0.3, "reaction_B": 0.01, "reaction_C": 0.2, "neural": 0.05}


def _state(candidates, patience: int = 3) -> SearchState:
    return dataclasses.replace(state(candidates), patience=patience)


def _explored():
    """Screening, then the agenda: nodewise beats the screening, gcn and gat do not."""
    return [
        *screened(SCREENING),
        cand(10, "reaction_B", "laplacian_nodewise", 0.002, verdict="good_fit"),
        cand(11, "reaction_B", "gcn", 0.009, verdict="good_fit", hyper={"hidden": 16}),
        cand(12, "reaction_B", "gat", 0.004, verdict="good_fit"),
    ]


def test_only_steps_after_the_screening_that_did_not_improve_count():
    trained = _explored()
    screening = {c.candidate_id for c in trained[:4]}
    since = steps_without_improvement(_state(trained), screening)
    assert [c.candidate_id for c in since] == ["c-11", "c-12"]
    # a step that improves by less than 1% does not reset the count; a clear improvement does
    barely = cand(13, "reaction_B", "laplacian_nodewise", 0.00199, operation="refine")
    assert len(steps_without_improvement(_state([*trained, barely]), screening)) == 3
    better = cand(13, "reaction_B", "laplacian_nodewise", 0.0015, operation="refine")
    assert steps_without_improvement(_state([*trained, better]), screening) == []
    # an unstable step, or a guess still training, is no improvement
    unstable = cand(13, "reaction_B", "gcn", None, status="unstable", hyper={"hidden": 32})
    assert len(steps_without_improvement(_state([*trained, unstable]), screening)) == 3


def test_the_search_stops_after_patience_steps_without_improvement():
    trained = _explored()
    # two steps without improvement: the open-ended rules still plan the next one
    plan = plan_step(_state(trained))
    assert plan is not None and plan.rule in ("diagnosis", "fallback")
    third = cand(13, "reaction_B", "laplacian_nodewise", 0.003, operation="refine")
    assert plan_step(_state([*trained, third])) is None
    decision = asyncio.run(OfflinePolicy().next_action(_state([*trained, third]), FakeEnv()))
    assert decision.stop and not decision.calls
    assert "converged" in decision.thought and "c-11, c-12, c-13" in decision.thought
    assert "c-10" in decision.thought  # the best, which the run fine-tunes
    # patience 0 (and a larger patience) search on
    for patience in (0, 4):
        assert plan_step(_state([*trained, third], patience=patience)) is not None


def test_a_long_screening_without_improvement_does_not_stop_the_search():
    """The best reaction came first and five worse ones followed: the agenda still runs."""
    losses = {"reaction_B": 0.01, "reaction_A": 0.3, "reaction_C": 0.2, "neural": 0.05}
    plan = plan_step(_state(screened(losses), patience=1))
    assert plan is not None and plan.rule == "agenda"


def test_the_agenda_and_the_beyond_steps_run_before_the_check():
    """Neither the agenda nor a residual for a plateau below 97% explained is cut short."""
    trained = [
        *screened(SCREENING),
        cand(10, "reaction_B", "laplacian_nodewise", 0.02, verdict="good_fit"),
    ]
    plan = plan_step(_state(trained, patience=1))
    assert plan is not None and plan.rule == "agenda"
    plateau = explained_explored(0.85)  # nodewise improved, gcn and gat did not
    plan = plan_step(_state(plateau, patience=2))
    assert plan is not None and plan.rule == "beyond" and plan.residual is not None


def test_discover_and_cohort_take_the_patience():
    parser = build_parser()
    assert parser.parse_args(["discover"]).patience == PATIENCE
    assert parser.parse_args(["discover", "--patience", "0"]).patience == 0
    assert parser.parse_args(["cohort", "--datasets", "ap", "--patience", "5"]).patience == 5
