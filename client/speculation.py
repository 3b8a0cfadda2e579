"""Speculative steps: the offline policy's next step trains while the current one does.

After the reaction screening and the diffusion agenda (:mod:`.batch`), each step of the offline
policy acts on the results so far (the best candidate's diagnosis), so it cannot be decided
together with the step before it. It can be guessed: the rules' plan on the archive with a
placeholder (status ``training``) for the candidate still training is the plan they make once
that candidate has trained, unless its result changes what the rules read (it becomes the best
candidate, or it diverges). The loop trains that guess on a second executor slot while the
current step trains, and checks it as soon as the current step's result is in:

* the rules, on the archive with that result, choose the same action: the guess is the next
  step, with the thought the rules write there (the same as a step-by-step search), and the step
  after it is guessed in turn while it trains;
* they choose another one: the guess is cancelled (``cancel_candidate``: its worker stops, the
  server gives its unit of budget back, the archive keeps it ``cancelled``, the search never
  sees it again) and the next step is decided as usual. Only a guess that finished before it
  could be cancelled stays a step, with a thought that says the rules would have chosen
  otherwise.

While the search's last step trains, the best candidate so far is fine-tuned on the other slot:
it is the one the search fine-tunes unless the last step beats it, and then that fine-tuning is
cancelled (its copy left out of the search) and the new best is fine-tuned as before
(:meth:`~leads_agent.agent.SearchRun.finetune`).

Only plain plans are guessed or pipelined: ``select``, ``refine`` and ``simplify`` without a code
edit (a code edit is reviewed by the server and may be archived as ``refused``, which a guess must
not leave behind). Each step's observation carries the budget left as the server gave it when the
step's training started, which is what a step-by-step search reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import TYPE_CHECKING

from .batch import as_decided_on, train_arguments, wait_training
from .connection import ToolResult
from .offline import OfflinePolicy, Plan, plan_step
from .state import Candidate, Decision, SearchState

if TYPE_CHECKING:
    from .agent import SearchRun

__all__ = ["Flight", "eligible", "placeholder", "plain", "run_pipeline"]

#: Operations whose plans may be pipelined (no code edit, nothing the server archives on refusal).
PLAIN_OPERATIONS = ("select", "refine", "simplify")
#: Status of the stand-in for a candidate that is still training.
PLACEHOLDER_STATUS = "training"


@dataclasses.dataclass
class Flight:
    """A step whose candidate is training: what was decided, on which archive, and its job."""

    number: int
    decided_on: SearchState
    decision: Decision
    plan: Plan
    candidate_id: str
    #: the budget left as the server gave it when this training started
    budget_left: int | None
    result: asyncio.Task[ToolResult]


def plain(plan: Plan | None) -> bool:
    """Whether a plan may be pipelined: a ``select``/``refine``/``simplify``, no code edit."""
    return plan is not None and plan.operation in PLAIN_OPERATIONS and not plan.edit


def placeholder(plan: Plan, number: int) -> Candidate:
    """A stand-in for a planned candidate still training: the rules see it as tried."""
    return Candidate(
        candidate_id=f"(training {number})",
        operation=plan.operation,
        reaction=plan.reaction,
        diffusion=plan.template,
        status=PLACEHOLDER_STATUS,
        parent_id=plan.parent.candidate_id if plan.parent else None,
        hyperparameters=dict(plan.hyperparameters),
        residual=plan.reaction_residual(),
    )


def eligible(run: SearchRun, limit: int) -> bool:
    """Whether this run may pipeline steps: the offline policy, a server that trains in the
    background and cancels, room for two steps and ``--parallel`` of at least 2."""
    return (
        limit >= 2
        and run.config.parallel >= 2
        and isinstance(run.policy, OfflinePolicy)
        and run.conn.has_tool("wait_candidate")
        and run.conn.has_tool("cancel_candidate")
    )


async def _launch(run: SearchRun, number: int, state: SearchState) -> Flight | None:
    """Decide step ``number`` on ``state`` and start its training; None when the plan is not
    plain or the server refused a call (the ordinary step then takes the decision again)."""
    policy = run.policy
    assert isinstance(policy, OfflinePolicy)
    plan = plan_step(state, frozenset(policy.refused))
    if plan is None or not plain(plan):
        return None
    decision = await policy.next_action(state, run.conn)
    if decision.stop or not decision.calls or await run.execute(decision.calls) is not None:
        return None
    arguments = train_arguments(run, state, decision, wait=False)
    epochs = int(arguments["epochs"])
    started = await run.conn.call("train_candidate", arguments)
    data = started.as_dict()
    candidate_id = data.get("candidate_id") if started.ok else None
    if not candidate_id:
        return None
    left = data.get("budget_left")
    fractions: dict[str, float] = {str(candidate_id): 0.0}
    waiting = asyncio.ensure_future(wait_training(run, str(candidate_id), fractions, epochs))
    return Flight(
        number,
        state,
        decision,
        plan,
        str(candidate_id),
        left if isinstance(left, int) else None,
        waiting,
    )


def _observation(run: SearchRun, flight: Flight, result: ToolResult) -> str:
    """The step's observation with the budget left as at its training's start."""
    data = result.as_dict()
    if result.ok and flight.budget_left is not None and "budget_left" in data:
        result = ToolResult(ok=True, data={**data, "budget_left": flight.budget_left})
    if data.get("reaction"):
        run.aliases[flight.candidate_id] = str(data["reaction"])
    return run.describe_training(result)


async def _record(run: SearchRun, flight: Flight, seen: SearchState) -> None:
    """Wait for the flight's training and record it as step ``flight.number``."""
    result = await flight.result
    observation = _observation(run, flight, result)
    assert isinstance(run.policy, OfflinePolicy)
    decision = as_decided_on(seen, flight.decided_on, flight.decision, run.policy)
    run.view.thought(flight.number, decision.thought)
    await run.finish_step(flight.number, seen, decision, observation, flight.candidate_id)


async def _cancelled(run: SearchRun, flight: Flight) -> bool:
    """Cancel a wrong guess; True when it was stopped (False: it had already finished)."""
    answer = await run.conn.call("cancel_candidate", {"candidate_id": flight.candidate_id})
    status = answer.as_dict().get("status") if answer.ok else None
    if status != "cancelled":
        return False
    run.discarded.add(flight.candidate_id)
    flight.result.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flight.result
    return True


async def _archive_without(run: SearchRun, number: int, flight: Flight | None) -> SearchState:
    """The archive as a step-by-step search sees it at step ``number``: without the candidate
    of ``flight`` (a guess still training)."""
    candidates = await run.read_candidates()
    if flight is not None:
        candidates = [c for c in candidates if c.candidate_id != flight.candidate_id]
    return run.base_state(number, candidates)


def _finetune_ahead(run: SearchRun, before_last: SearchState) -> None:
    """While the search's last step trains, start fine-tuning the best candidate so far: it is
    the one the search fine-tunes unless the last step beats it (then
    :meth:`~leads_agent.agent.SearchRun.finetune` cancels this one)."""
    best = before_last.best()
    if best is None or run.config.finetune <= 0 or run.finetune_ahead is not None:
        return
    call = asyncio.ensure_future(
        run.conn.call(
            "finetune_candidate",
            {
                "session_id": run.session_id,
                "candidate_id": best.candidate_id,
                **best.finetune_arguments(run.config.finetune),
            },
        )
    )
    run.finetune_ahead = (best.candidate_id, call)


async def run_pipeline(run: SearchRun, number: int, limit: int) -> int:
    """Take up to ``limit`` steps from step ``number``, each next one guessed and trained while
    the current one trains; how many steps it took (0: none, take an ordinary step)."""
    if not eligible(run, limit):
        return 0
    state = await _archive_without(run, number, None)
    current = await _launch(run, number, state)
    if current is None:
        return 0
    run.view.candidates(state.candidates)
    taken = 0
    while True:
        run.view.training(f"step {current.number}", run.config.epochs)
        guess: Flight | None = None
        if current.number + 1 < number + limit:
            ahead = dataclasses.replace(
                current.decided_on,
                step=current.number + 1,
                candidates=[
                    *current.decided_on.candidates,
                    placeholder(current.plan, current.number),
                ],
            )
            guess = await _launch(run, current.number + 1, ahead)
        elif current.number == run.config.budget:
            _finetune_ahead(run, current.decided_on)
        await _record(run, current, current.decided_on)
        taken += 1
        if guess is None:
            return taken
        seen = await _archive_without(run, guess.number, guess)
        now = plan_step(seen, frozenset(getattr(run.policy, "refused", ())))
        if now is not None and now.identity() == guess.plan.identity():
            current = dataclasses.replace(guess, decided_on=seen)
            continue
        if await _cancelled(run, guess):
            run.view.message(
                f"step {guess.number}: the guess trained ahead ({guess.plan.reaction} + "
                f"{guess.plan.template}) was cancelled: the last result changed the rules' choice"
            )
            return taken
        await _record(run, guess, seen)  # finished before it could be stopped: it stays a step
        return taken + 1
