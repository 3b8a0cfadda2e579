"""The offline policy's decision rules on hand-made archive states."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from leads_agent.connection import ToolResult
from leads_agent.edits import apply_edit
from leads_agent.offline import OfflinePolicy, detect_edits, plan_step
from leads_agent.state import NOT_TRAINED, Candidate, SearchState

from leads_engine.diffusion import load_diffusion_class, template_source

REACTIONS = ["reaction_A", "reaction_B", "reaction_C", "neural"]
RANGES = {
    "laplacian_global": {"conductivity": {"min": 0.001, "max": 100.0, "default": 1.0}},
    "laplacian_nodewise": {"conductivity": {"min": 0.001, "max": 100.0, "default": 1.0}},
    "gcn": {
        "hidden": {"min": 4, "max": 64, "default": 16},
        "layers": {"min": 1, "max": 4, "default": 2},
        "conductivity": {"min": 0.001, "max": 100.0, "default": 1.0},
    },
    "gat": {
        "hidden": {"min": 2, "max": 32, "default": 8},
        "heads": {"min": 1, "max": 8, "default": 2},
        "layers": {"min": 1, "max": 3, "default": 2},
        "conductivity": {"min": 0.001, "max": 100.0, "default": 1.0},
    },
}
FAMILIES = {
    "laplacian_global": "physical",
    "laplacian_nodewise": "physical",
    "gcn": "neural",
    "gat": "neural",
}


def cand(
    n: int,
    reaction: str,
    diffusion: str,
    val: float | None,
    *,
    status: str = "ok",
    operation: str = "select",
    train: float | None = None,
    verdict: str | None = None,
    hyper: dict[str, Any] | None = None,
    code: str | None = None,
) -> Candidate:
    return Candidate(
        candidate_id=f"c-{n}",
        operation=operation,
        reaction=reaction,
        diffusion=diffusion,
        status=status,
        val_loss=val,
        train_loss=train if train is not None else val,
        verdict=verdict,
        hyperparameters=hyper or {},
        code=code,
        edited=code is not None,
        diagnosis=f"{verdict}: ..." if verdict else None,
    )


def state(candidates: list[Candidate], budget: int = 15) -> SearchState:
    return SearchState(
        session_id="s-1",
        reactions=list(REACTIONS),
        templates=list(FAMILIES),
        budget=budget,
        step=len(candidates) + 1,
        candidates=candidates,
        template_families=dict(FAMILIES),
        hyperparameter_ranges=RANGES,
    )


def screened(losses: dict[str, float]) -> list[Candidate]:
    return [
        cand(i, r, "laplacian_global", v, verdict="good_fit")
        for i, (r, v) in enumerate(losses.items())
    ]


def test_screens_every_reaction_in_order_with_the_same_cheap_diffusion():
    chosen = []
    candidates: list[Candidate] = []
    for i in range(len(REACTIONS)):
        plan = plan_step(state(candidates))
        assert plan is not None and plan.operation == "select"
        assert plan.template == "laplacian_global"
        chosen.append(plan.reaction)
        candidates.append(cand(i, plan.reaction, plan.template, 0.1 + i))
    assert chosen == REACTIONS
    assert "Screening" in plan_step(state(candidates[:1])).thought


def test_small_budget_screens_fewer_reactions_to_leave_room_for_diffusion():
    plan = plan_step(state(screened({"reaction_A": 0.3, "reaction_B": 0.2}), budget=4))
    assert plan is not None and plan.template != "laplacian_global"


def test_keeps_the_reaction_with_the_lowest_validation_loss():
    candidates = screened(
        {"reaction_A": 0.3, "reaction_B": 0.01, "reaction_C": 0.2, "neural": 0.05}
    )
    plan = plan_step(state(candidates))
    assert plan is not None
    assert plan.reaction == "reaction_B"
    assert (plan.operation, plan.template) == ("select", "laplacian_nodewise")
    candidates.append(cand(10, "reaction_B", "laplacian_nodewise", 0.009, verdict="good_fit"))
    plan = plan_step(state(candidates))
    assert (plan.reaction, plan.template) == ("reaction_B", "gcn")


def explored(best: Candidate) -> list[Candidate]:
    base = screened({"reaction_A": 0.3, "reaction_B": 0.01, "reaction_C": 0.2, "neural": 0.05})
    return [
        *base,
        cand(10, "reaction_B", "laplacian_nodewise", 0.02, verdict="good_fit"),
        cand(11, "reaction_B", "gat", 0.03, verdict="good_fit"),
        best,
    ]


def test_refines_with_more_capacity_on_underfitting():
    best = cand(
        12, "reaction_B", "gcn", 0.005, verdict="underfitting", hyper={"hidden": 16, "layers": 2}
    )
    plan = plan_step(state(explored(best)))
    assert plan.operation == "refine" and plan.parent is best
    assert plan.hyperparameters["hidden"] == 32 and plan.hyperparameters["layers"] == 3
    assert "under-fits" in plan.thought


def test_simplifies_or_regularises_on_overfitting():
    best = cand(
        12,
        "reaction_B",
        "gcn",
        0.005,
        train=0.001,
        verdict="overfitting",
        hyper={"hidden": 16, "layers": 2},
    )
    plan = plan_step(state(explored(best)))
    assert plan.operation == "modify" and plan.edit == "gated_residual"
    gated = apply_edit("gated_residual", template_source("gcn"))
    best_gated = cand(
        13,
        "reaction_B",
        "gcn",
        0.004,
        train=0.001,
        verdict="overfitting",
        operation="modify",
        hyper={"hidden": 16, "layers": 2},
        code=gated,
    )
    plan = plan_step(state([*explored(best), best_gated]))
    assert plan.operation == "simplify" and plan.parent is best_gated
    assert plan.hyperparameters["hidden"] == 8 and plan.hyperparameters["layers"] == 1


def test_overfitting_detected_from_the_curves_without_a_verdict():
    best = cand(
        12,
        "reaction_B",
        "gcn",
        0.005,
        train=0.001,
        hyper={"hidden": 16, "layers": 2},
        code=apply_edit("gated_residual", template_source("gcn")),
        operation="modify",
    )
    assert best.gap() == pytest.approx(4.0)
    plan = plan_step(state(explored(best)))
    assert plan.operation == "simplify"


def test_unstable_candidate_gets_a_soft_gain_then_simplified():
    unstable = cand(
        12,
        "reaction_B",
        "gat",
        None,
        status="unstable",
        verdict="unstable",
        hyper={"hidden": 8, "heads": 2, "layers": 2, "conductivity": 1.0},
    )
    candidates = explored(cand(11, "reaction_B", "gcn", 0.004, verdict="good_fit")) + [unstable]
    plan = plan_step(state(candidates))
    assert plan.operation == "modify" and plan.edit == "soft_gain" and plan.parent is unstable
    soft = apply_edit("soft_gain", template_source("gat"))
    still = cand(
        13,
        "reaction_B",
        "gat",
        None,
        status="unstable",
        operation="modify",
        hyper=unstable.hyperparameters,
        code=soft,
    )
    plan = plan_step(state([*candidates, still]))
    assert plan.operation == "simplify" and plan.parent is still
    assert plan.hyperparameters["conductivity"] == 0.5
    assert plan.hyperparameters["hidden"] == 4


def test_never_repeats_a_structure():
    candidates = explored(cand(12, "reaction_B", "gcn", 0.005, verdict="good_fit"))
    seen = set()
    for i in range(7):
        plan = plan_step(state(candidates, budget=30))
        assert plan is not None
        edits = detect_edits(plan.parent.code) if plan.parent else []
        key = (
            plan.reaction,
            plan.template,
            str(sorted(plan.hyperparameters.items())),
            plan.edit,
            tuple(edits),
        )
        assert key not in seen
        seen.add(key)
        code = apply_edit(plan.edit, template_source(plan.template)) if plan.edit else None
        candidates.append(
            cand(
                20 + i,
                plan.reaction,
                plan.template,
                0.006 + i / 1000,
                verdict="good_fit",
                hyper=plan.hyperparameters,
                operation=plan.operation,
                code=code,
            )
        )


class FakeEnv:
    """Serves template sources like the server's catalog:// resource."""

    def __init__(self) -> None:
        self.reads: list[str] = []

    async def call(self, name: str, arguments: dict | None = None) -> ToolResult:
        return ToolResult(ok=False, text="not used")

    async def read_resource(self, uri: str) -> str:
        self.reads.append(uri)
        return template_source(uri.rsplit("/", 1)[-1])

    def has_tool(self, name: str) -> bool:
        return False


def test_modify_decision_sends_the_edited_template_source():
    best = cand(
        12,
        "reaction_B",
        "gcn",
        0.005,
        verdict="overfitting",
        train=0.001,
        hyper={"hidden": 16, "layers": 2},
    )
    env = FakeEnv()
    decision = asyncio.run(OfflinePolicy().next_action(state(explored(best)), env))
    assert [c.name for c in decision.calls] == ["select_reaction", "modify_diffusion"]
    modify = decision.calls[1].arguments
    assert env.reads == ["catalog://diffusion/gcn"]
    assert modify["candidate_id"] == "c-12" and "mix_logit" in modify["source"]
    assert "template" not in modify  # the server takes a candidate or a template, not both
    load_diffusion_class(modify["source"])(50)
    assert decision.thought


def test_a_refused_action_is_not_proposed_again():
    best = cand(
        12,
        "reaction_B",
        "gcn",
        0.005,
        verdict="overfitting",
        train=0.001,
        hyper={"hidden": 16, "layers": 2},
    )
    policy = OfflinePolicy()
    env = FakeEnv()
    search = state(explored(best))
    first = asyncio.run(policy.next_action(search, env))
    policy.record_outcome(search, first, f"modify_diffusion was refused: boom; {NOT_TRAINED}")
    second = asyncio.run(policy.next_action(search, env))
    assert [c.name for c in second.calls] != [c.name for c in first.calls] or (
        second.calls[1].arguments != first.calls[1].arguments
    )
    # an action that trained is not blocked by record_outcome
    policy = OfflinePolicy()
    again = asyncio.run(policy.next_action(search, env))
    policy.record_outcome(search, again, "candidate c-13 trained")
    assert policy.refused == set()
