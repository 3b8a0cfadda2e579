"""Batch proposals: several search steps whose candidates train at the same time.

Two runs of the offline policy's steps are decided without one another's results: the reaction
screening (every reaction under one fixed diffusion) and, once the best reaction is known, the
diffusion agenda (``laplacian_nodewise``, ``gcn``, ``gat`` with that reaction). The loop decides
such a run at once and trains its candidates concurrently on the server (one per free executor
slot; the server queues the rest). A batch is issued as, for each candidate: the set-up calls of
its decision, then ``train_candidate(wait=false)`` (the server snapshots the draft and answers
at once); then ``wait_candidate`` for all of them together. Each candidate is still one archived
step, recorded in decision order with its own thought, action and observation, so a step means
what it meant before.

Which decisions may join a batch: only consecutive plans of the
:class:`~leads_agent.offline.OfflinePolicy` made by one of its independent rules
(:data:`~leads_agent.offline.INDEPENDENT_RULES`), each planned on the archive plus placeholders
(status ``training``) for the candidates already in the batch. An LLM policy decides one step at
a time (it may batch itself with ``train_candidate(wait=false)``). The candidates start longest
first (the neural reaction; ``gat``, then ``gcn``), so that the short ones share the other slots
meanwhile. A set-up or training call the server refuses stops the starting there; the candidates
already started are the batch's steps, and the refused decision (and any not started) is taken
again by a later step, which knows how to revise it.

Same outcome as one step at a time: once the batch has trained, each step's thought is written
again by the rules on the archive as a step-by-step search would have seen it (the results of
the batch's earlier steps instead of placeholders: "so far ..." rankings, the best validation
loss), and its action is checked to be the one the rules choose there. It is, unless an earlier
agenda candidate ended ``unstable`` or ``failed`` and the rules would have handled that first:
then the step's thought says so, and the search goes on from the archive as it is.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

from .connection import ToolResult
from .offline import INDEPENDENT_RULES, OfflinePolicy, plan_step
from .state import Candidate, Decision, SearchState

if TYPE_CHECKING:
    from .agent import SearchRun

#: Seconds one ``wait_candidate`` call waits before the progress bar is updated.
POLL_SECONDS = 5.0
#: Status of the stand-in for a candidate decided in this batch but not trained yet.
PLACEHOLDER_STATUS = "training"


def _independent_rule(state: SearchState, policy: OfflinePolicy) -> str | None:
    """The rule of the offline policy's next plan on ``state`` when that rule's plans may be
    batched (:data:`~leads_agent.offline.INDEPENDENT_RULES`: a plain ``select``), else None."""
    plan = plan_step(state, frozenset(policy.refused))
    if (
        plan is None
        or plan.rule not in INDEPENDENT_RULES
        or plan.operation != "select"
        or plan.edit
        or plan.hyperparameters
        or plan.residual
    ):
        return None
    return plan.rule


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
    rule = _independent_rule(current, policy)
    while rule and len(decisions) < limit and _independent_rule(current, policy) == rule:
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


#: Relative training cost of a candidate by reaction: the neural reaction (an MLP at every node
#: and sub-step) trains about 5-8x longer than a catalog model under the same diffusion
#: (measured: 146 s against 17-52 s on the default set).
NEURAL_COST = 6.0
#: Relative training cost by diffusion template, against a physical operator with the same
#: reaction (README, "Training speed against the forward simulator": 2.7, 6.9 and 20.8 s per
#: epoch for laplacian_nodewise, gcn and gat); a template not listed counts as a gcn.
DIFFUSION_COST = {
    "mean_aggregation": 1.0,
    "laplacian_global": 1.0,
    "laplacian_nodewise": 1.0,
    "gcn": 2.5,
    "graphsage": 2.5,
    "gat": 7.5,
    "gatv2": 8.0,
    "graph_transformer": 8.0,
}


def _expected_cost(decision: Decision) -> float:
    """A batched candidate's expected training time, relative to a catalog reaction under a
    physical operator."""
    arguments: dict[str, Any] = {}
    for call in decision.calls:
        arguments |= call.arguments
    reaction = NEURAL_COST if arguments.get("reaction") == "neural" else 1.0
    return reaction * DIFFUSION_COST.get(str(arguments.get("template")), 2.5)


def epochs_for(run: SearchRun, state: SearchState, decision: Decision | None = None) -> int:
    """Epochs of the step decided on ``state``: ``config.screening_epochs`` for a screening
    candidate of the offline policy when set (a shorter screening), else ``config.epochs``;
    times the ``decision``'s own factor (:meth:`Decision.epochs_for`) when given."""
    epochs = int(run.config.epochs)
    short = getattr(run.config, "screening_epochs", None)
    policy = run.policy
    if short and isinstance(policy, OfflinePolicy):
        plan = plan_step(state, frozenset(policy.refused))
        if plan is not None and plan.rule == "screening":
            epochs = int(short)
    return epochs if decision is None else decision.epochs_for(epochs)


def train_arguments(
    run: SearchRun, state: SearchState, decision: Decision, wait: bool = True
) -> dict[str, Any]:
    """train_candidate's arguments for the step decided on ``state``: its epochs
    (:func:`epochs_for`), its warm start if any, and ``wait``."""
    arguments: dict[str, Any] = {
        "session_id": run.session_id,
        "epochs": epochs_for(run, state, decision),
    }
    if decision.warm_start:
        arguments["warm_start"] = list(decision.warm_start)
    if not wait:
        arguments["wait"] = False
    return arguments


async def _start(run: SearchRun, decision: Decision, arguments: dict[str, Any]) -> str | None:
    """Set up the decision's candidate and start its training (``arguments``:
    :func:`train_arguments`); its id, or None when the server refused a call (nothing was
    trained)."""
    if await run.execute(decision.calls) is not None:
        return None
    started = await run.conn.call("train_candidate", arguments)
    candidate_id = started.as_dict().get("candidate_id") if started.ok else None
    return str(candidate_id) if candidate_id else None


async def wait_training(
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
        step_state, decision = proposals[index]
        arguments = train_arguments(run, step_state, decision, wait=False)
        candidate_id = await _start(run, decision, arguments)
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
        *(wait_training(run, candidate_id, fractions, total) for _, _, candidate_id in started)
    )
    for (_, _, candidate_id), result in zip(started, results, strict=True):
        reaction = result.as_dict().get("reaction")
        if reaction:
            run.aliases[candidate_id] = str(reaction)
    archived = {c.candidate_id: c for c in await run.read_candidates()}
    earlier: list[Candidate] = []  # the batch's candidates before this step, as they trained
    for index, ((step_state, decision, candidate_id), result) in enumerate(
        zip(started, results, strict=True)
    ):
        seen = dataclasses.replace(
            state, step=number + index, candidates=[*state.candidates, *earlier]
        )
        decision = as_decided_on(seen, step_state, decision, run.policy)
        observation = run.describe_training(_step_by_step(result, len(started) - 1 - index))
        await run.finish_step(number + index, seen, decision, observation, candidate_id)
        if candidate_id in archived:
            earlier.append(archived[candidate_id])
    return len(started)


def _step_by_step(result: ToolResult, later: int) -> ToolResult:
    """A batched training's result with the budget left as a step-by-step search reads it: the
    server took the budget of the ``later`` steps of the batch before this one ended."""
    data = result.as_dict()
    left = data.get("budget_left")
    if not result.ok or not isinstance(left, int) or isinstance(left, bool):
        return result
    return ToolResult(ok=True, data={**data, "budget_left": left + later})


def as_decided_on(
    seen: SearchState, decided: SearchState, decision: Decision, policy: OfflinePolicy
) -> Decision:
    """The batched decision with the thought the rules write on ``seen`` (the archive with the
    results of the batch's earlier steps), which is what a step-by-step search would have
    written; the same action as decided on ``decided`` (placeholders for those steps) unless
    an earlier candidate's result changed the rules' choice, which the thought then says."""
    refused = frozenset(policy.refused)
    planned = plan_step(decided, refused)
    now = plan_step(seen, refused)
    if planned is None or now is None:
        return decision
    if now.identity() == planned.identity():
        return dataclasses.replace(decision, thought=now.thought)
    return dataclasses.replace(
        decision,
        thought=(
            f"{decision.thought} [Decided and trained together with the steps before it; on "
            f"their results the rules would have chosen instead: {now.thought}]"
        ),
    )
