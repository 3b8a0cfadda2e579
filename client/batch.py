"""Batch proposals: several search steps whose candidates train at the same time.

The offline policy's reaction screening tries every reaction under one fixed diffusion; each of
those candidates is decided without the others' results, so the loop can decide them all at once
and train them concurrently on the server (one per free executor slot; the server queues the
rest). A batch is issued as, for each candidate in order: the set-up calls of its decision, then
``train_candidate(wait=false)`` (the server snapshots the draft and answers at once); then
``wait_candidate`` for all of them together. Each candidate is still one archived step, recorded
in order with its own thought, action and observation, so a step means what it meant before.

Which decisions may join a batch: only those of the :class:`~leads_agent.offline.OfflinePolicy`
that are screening plans (a ``select`` of the screening diffusion with a reaction it has not yet
tried), planned on the archive plus placeholders for the candidates already in the batch. An LLM
policy decides one step at a time (it may batch itself with ``train_candidate(wait=false)``).
The candidates start longest first (the neural reaction), so that the short ones share the other
slots meanwhile. A set-up or training call the server refuses stops the starting there; the
candidates already started are the batch's steps, and the refused decision (and any not
started) is taken again by a later step, which knows how to revise it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

from .connection import ToolResult
from .offline import SCREEN_DIFFUSION, OfflinePolicy, plan_step
from .state import Candidate, Decision, SearchState

if TYPE_CHECKING:
    from .agent import SearchRun

#: Seconds one ``wait_candidate`` call waits before the progress bar is updated.
POLL_SECONDS = 5.0
#: Status of the stand-in for a candidate decided in this batch but not trained yet.
PLACEHOLDER_STATUS = "training"


def _screening(state: SearchState, policy: OfflinePolicy) -> bool:
    """Whether the offline policy's next plan on ``state`` is a screening candidate."""
    plan = plan_step(state, frozenset(policy.refused))
    if plan is None or plan.operation != "select" or plan.edit or plan.hyperparameters:
        return False
    diffusion = state.fixed_diffusion or SCREEN_DIFFUSION
    tried = {
        c.reaction
        for c in state.trained()
        if c.diffusion == diffusion and c.operation == "select" and not c.edited
    }
    return plan.template == diffusion and plan.reaction not in tried


def _placeholder(index: int, decision: Decision) -> Candidate:
    """A stand-in for a batched candidate, so that the next plan sees its reaction as tried."""
    arguments: dict[str, Any] = {}
    for call in decision.calls:
        arguments |= call.arguments
    return Candidate(
        candidate_id=f"(batch {index})",
        operation="select",
        reaction=str(arguments.get("reaction", "?")),
        diffusion=str(arguments.get("template", "?")),
        status=PLACEHOLDER_STATUS,
    )


async def propose_batch(
    run: SearchRun, state: SearchState, limit: int
) -> list[tuple[SearchState, Decision]]:
    """Up to ``limit`` decisions that can train together, each with the state it was made on
    (an empty list: take one ordinary step)."""
    policy = run.policy
    if (
        limit < 2
        or not isinstance(policy, OfflinePolicy)
        or not run.conn.has_tool("wait_candidate")
    ):
        return []
    decisions: list[tuple[SearchState, Decision]] = []
    current = state
    while len(decisions) < limit and _screening(current, policy):
        decision = await policy.next_action(current, run.conn)
        if decision.stop or not decision.calls:
            break
        decisions.append((current, decision))
        current = dataclasses.replace(
            current,
            step=current.step + 1,
            candidates=[*current.candidates, _placeholder(len(decisions), decision)],
        )
    return decisions if len(decisions) >= 2 else []


#: Relative training cost of a screening candidate by reaction: the neural reaction (an MLP at
#: every node and sub-step) trains about 5-8x longer than a catalog model under the same
#: diffusion (measured: 146 s against 17-52 s on the default set).
NEURAL_COST = 6.0


def _expected_cost(decision: Decision) -> float:
    """A screening candidate's expected training time, relative to a catalog reaction's."""
    reactions = {call.arguments.get("reaction") for call in decision.calls}
    return NEURAL_COST if "neural" in reactions else 1.0


async def _start(run: SearchRun, decision: Decision) -> str | None:
    """Set up the decision's candidate and start its training; its id, or None when the
    server refused a call (nothing was trained)."""
    if await run.execute(decision.calls) is not None:
        return None
    started = await run.conn.call(
        "train_candidate",
        {
            "session_id": run.session_id,
            "epochs": decision.epochs_for(run.config.epochs),
            "wait": False,
        },
    )
    candidate_id = started.as_dict().get("candidate_id") if started.ok else None
    return str(candidate_id) if candidate_id else None


async def _wait(
    run: SearchRun, candidate_id: str, fractions: dict[str, float], total: float
) -> ToolResult:
    """Poll ``wait_candidate`` until the training ends; its result as train_candidate gives it."""
    while True:
        answer = await run.conn.call(
            "wait_candidate", {"candidate_id": candidate_id, "timeout_s": POLL_SECONDS}
        )
        if not answer.ok:
            return answer
        data = answer.as_dict()
        fractions[candidate_id] = float(data.get("fraction") or 0.0)
        done = sum(fractions.values()) * run.config.epochs
        await run.view.progress(done, total, f"{candidate_id}: {data.get('message', '')}")
        if data.get("done"):
            result = data.get("result")
            if isinstance(result, dict):
                return ToolResult(ok=True, data=result)
            return ToolResult(ok=False, text=str(data.get("message") or data.get("status")))


async def run_batch(run: SearchRun, number: int, limit: int) -> int:
    """Decide and train up to ``limit`` steps from step ``number`` at once; how many steps it
    took (0: no batch here, take one ordinary step)."""
    candidates = await run.read_candidates()
    state = run.base_state(number, candidates)
    proposals = await propose_batch(run, state, limit)
    if not proposals:
        return 0
    run.view.candidates(candidates)
    # The longest training starts first, so that the short ones fill the other slots meanwhile
    # instead of leaving it to run alone at the end.
    order = sorted(range(len(proposals)), key=lambda i: -_expected_cost(proposals[i][1]))
    ids: dict[int, str] = {}
    for index in order:
        candidate_id = await _start(run, proposals[index][1])
        if candidate_id is None:  # refused: a later step takes this decision again
            break
        ids[index] = candidate_id
    # every started candidate is a step, numbered in the order the decisions were made
    started = [
        (step_state, decision, ids[index])
        for index, (step_state, decision) in enumerate(proposals)
        if index in ids
    ]
    if not started:
        return 0
    for index, (_, decision, _) in enumerate(started):
        run.view.thought(number + index, decision.thought)
    total = float(run.config.epochs * len(started))
    last = number + len(started) - 1
    run.view.training(f"steps {number}-{last} (batch of {len(started)})", int(total))
    fractions = {candidate_id: 0.0 for _, _, candidate_id in started}
    results = await asyncio.gather(
        *(_wait(run, candidate_id, fractions, total) for _, _, candidate_id in started)
    )
    for index, ((step_state, decision, candidate_id), result) in enumerate(
        zip(started, results, strict=True)
    ):
        data = result.as_dict()
        if data.get("reaction"):
            run.aliases[candidate_id] = str(data["reaction"])
        observation = run.describe_training(result)
        await run.finish_step(number + index, step_state, decision, observation, candidate_id)
    return len(started)
