"""The ReAct loop over MCP: observe the archive, think, act (one candidate), train; then
fine-tune the best candidate and evaluate it on the test split.

Everything goes through the server's tools: the loop never touches the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Protocol

from .archive_reads import query_rows, read_candidates, read_steps
from .batch import run_batch, train_arguments
from .connection import ServerConnection, ToolResult
from .errors import AgentError
from .home import leads_home
from .llm import is_duplicate_refusal
from .policy import Policy
from .run_result import RunConfig, RunResult, StepRecord
from .speculation import run_pipeline
from .state import NOT_TRAINED, Candidate, Decision, SearchState, ToolCall

__all__ = [
    "RunConfig",
    "RunResult",
    "RunView",
    "StepRecord",
    "find_true_reaction",
    "run_search",
]


class RunView(Protocol):
    """What the loop tells the user (the rich UI, or nothing)."""

    def session(self, session_id: str, info: dict[str, Any]) -> None: ...

    def thought(self, step: int, text: str) -> None: ...

    def candidates(self, rows: list[Candidate]) -> None: ...

    async def progress(self, progress: float, total: float | None, message: str | None) -> None: ...

    def training(self, label: str, total: int) -> None: ...

    def message(self, text: str) -> None: ...


def find_true_reaction(info: Any) -> str | None:
    """The data set's true reaction from a ``start_session`` answer (``dataset.meta.reaction``
    or any nested ``reaction`` key)."""
    if isinstance(info, dict):
        for key in ("true_reaction", "reaction"):
            if isinstance(info.get(key), str):
                return info[key]
        for key in ("dataset", "meta", "metadata", "summary"):
            value = info.get(key)
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    continue
            found = find_true_reaction(value)
            if found:
                return found
    return None


class SearchRun:
    """One session: start or resume, step loop, fine-tuning and evaluation."""

    def __init__(
        self, conn: ServerConnection, policy: Policy, config: RunConfig, view: RunView
    ) -> None:
        self.conn = conn
        self.policy = policy
        self.config = config
        self.view = view
        self.session_id = ""
        self.session_info: dict[str, Any] = {}
        self.catalogs: dict[str, Any] = {}
        self.steps: list[StepRecord] = []
        self.aliases: dict[str, str] = {}  # candidate id -> reaction as the session shows it
        self.notes: list[str] = []
        self.record_on_server = conn.has_tool("record_step")
        self.refusals = 0  # steps whose action the server refused (no candidate trained)
        self.duplicates = 0  # trainings refused as duplicates of an earlier candidate
        #: guesses of the next step trained ahead and cancelled (.speculation): not candidates
        #: of the search (the server gave their budget back)
        self.discarded: set[str] = set()
        #: a fine-tuning started while the last step trained (.speculation): the candidate it
        #: fine-tunes and the call; used when that candidate is still the best at the end
        self.finetune_ahead: tuple[str, asyncio.Future[ToolResult]] | None = None

    # ------------------------------------------------------------------ archive reading

    async def query(self, sql: str, page_rows: int = 200) -> list[dict[str, Any]]:
        """Every row of a read-only archive query, read page by page
        (:func:`~leads_agent.archive_reads.query_rows`)."""
        return await query_rows(self.conn, self.session_id, sql, page_rows)

    async def read_candidates(self) -> list[Candidate]:
        """Every candidate of the search with its per-epoch curves and step numbers (cancelled
        guesses left out, reactions as the session showed them)."""
        return await read_candidates(
            self.conn, self.session_id, self.steps, self.discarded, self.aliases
        )

    async def read_steps(self) -> list[StepRecord]:
        """The session's recorded steps (for a resumed run)."""
        return await read_steps(self.conn, self.session_id)

    # ------------------------------------------------------------------ session

    async def summary_of(self, session_id: str) -> dict[str, Any]:
        """A session's configuration and budget: the ``session_summary`` tool or the
        ``session://{id}/summary`` resource."""
        if self.conn.has_tool("session_summary"):
            result = await self.conn.call("session_summary", {"session_id": session_id})
            if not result.ok:
                raise AgentError(f"cannot resume session {session_id}: {result.text}")
            return result.as_dict()
        try:
            text = await self.conn.read_resource(f"session://{session_id}/summary")
            data = json.loads(text)
        except AgentError:
            raise
        except Exception as exc:  # the server's refusal (unknown session) or bad JSON
            raise AgentError(f"cannot resume session {session_id}: {exc}") from exc
        if not isinstance(data, dict):
            raise AgentError(f"cannot resume session {session_id}: unexpected summary {data!r}")
        return data

    async def open_session(self) -> None:
        """Start a new session or resume ``config.resume``."""
        if self.config.resume:
            self.session_info = await self.summary_of(self.config.resume)
            self.session_id = str(self.session_info.get("session_id") or self.config.resume)
            budget = self.session_info.get("budget")
            if isinstance(budget, int):
                self.config.budget = budget
            epochs = self.session_info.get("epochs_per_candidate")
            if isinstance(epochs, int):
                self.config.epochs = epochs
            self.steps = await self.read_steps()
        else:
            arguments = {
                "dataset": self.config.dataset,
                "budget": self.config.budget,
                "anonymise": self.config.anonymise,
                "seed": self.config.seed,
                "epochs": self.config.epochs,
                "batch_size": self.config.batch_size,
            }
            result = await self.conn.call("start_session", arguments)
            if not result.ok:
                raise AgentError(f"start_session failed: {result.text}")
            self.session_info = result.as_dict()
            self.session_id = str(self.session_info["session_id"])
        catalogs = await self.conn.call("list_catalogs", {"session_id": self.session_id})
        if not catalogs.ok:
            catalogs = await self.conn.call("list_catalogs", {})
        self.catalogs = catalogs.as_dict()
        self.view.session(self.session_id, self.session_info)

    def base_state(self, step: int, candidates: list[Candidate]) -> SearchState:
        """The policy's view: names, ranges, candidates."""
        reactions = (
            self.config.reactions
            or [str(r.get("name")) for r in self.catalogs.get("reactions", []) if r.get("name")]
            or [str(r) for r in self.session_info.get("reactions", [])]
        )
        templates = self.catalogs.get("diffusion_templates") or self.catalogs.get("templates") or []
        return SearchState(
            session_id=self.session_id,
            reactions=reactions,
            templates=[str(t.get("name")) for t in templates],
            budget=self.config.budget,
            step=step,
            candidates=candidates,
            template_families={str(t.get("name")): str(t.get("family")) for t in templates},
            hyperparameter_ranges={
                str(t.get("name")): dict(t.get("hyperparameters") or {}) for t in templates
            },
            fixed_reaction=self.config.fixed_reaction,
            fixed_diffusion=self.config.fixed_diffusion,
            dataset_fibers=self._dataset_fibers(),
            patience=self.config.patience,
        )

    def _dataset_fibers(self) -> bool | None:
        """Whether start_session's data set summary names a fibre field (None: no summary)."""
        summary = self.session_info.get("dataset")
        if not isinstance(summary, dict) or "nodes" not in summary:
            return None
        return "fibers" in summary

    def steps_done(self, candidates: list[Candidate]) -> int:
        """Steps already spent: the server's count when it gives one, else the archive's."""
        counted = sum(1 for c in candidates if c.operation != "finetune" and c.status != "refused")
        return max(counted + self.refusals, len(self.steps))

    # ------------------------------------------------------------------ steps

    async def execute(self, calls: list[ToolCall]) -> str | None:
        """Run the decision's pending calls; the first refusal's message, if any."""
        for call in calls:
            if call.ok is None:
                result = await self.conn.call(call.name, call.arguments)
                call.ok = result.ok
                call.result = result.for_model(800)
                if not result.ok:
                    return f"{call.name} was refused: {result.text or result.data}"
        return None

    async def train(self, label: str, name: str, arguments: dict[str, Any]) -> ToolResult:
        """Train (search step or fine-tuning) with the progress bar."""
        self.view.training(label, int(arguments.get("epochs") or self.config.epochs))
        return await self.conn.call(name, arguments, progress=self.view.progress)

    @staticmethod
    def describe_training(result: ToolResult) -> str:
        """The observation an agent reads after training."""
        if not result.ok:
            return f"training failed: {result.text or result.data}"
        data = result.as_dict()
        curves = ", ".join(
            f"{t:.3g}/{v:.3g}" if t is not None and v is not None else "nan"
            for t, v in zip(
                data.get("train_losses") or [], data.get("val_losses") or [], strict=False
            )
        )
        return (
            f"candidate {data.get('candidate_id')} ({data.get('reaction')} + "
            f"{data.get('diffusion')}): status {data.get('status')}, best val loss "
            f"{data.get('best_val_loss')}, train/val per epoch [{curves}], "
            f"{data.get('parameter_count')} parameters; diagnosis: {data.get('diagnosis')}"
            f"{'; error: ' + str(data['error']) if data.get('error') else ''}; "
            f"budget left {data.get('budget_left')}"
        )

    async def record(self, record: StepRecord) -> None:
        """Store the step (thought, action, observation) in the archive."""
        self.steps.append(record)
        if not self.record_on_server:
            return
        result = await self.conn.call(
            "record_step",
            {
                "session_id": self.session_id,
                "thought": record.thought,
                "action": {"calls": record.action, "candidate_id": record.candidate_id},
                "observation": record.observation,
            },
        )
        if not result.ok:
            self.notes.append(f"record_step refused step {record.step}: {result.text}")

    async def step(self, number: int) -> bool:
        """One Observe-Think-Act step; False when the policy stops the search."""
        candidates = await self.read_candidates()
        self.view.candidates(candidates)
        state = self.base_state(number, candidates)
        decision: Decision = await self.policy.next_action(state, self.conn)
        self.view.thought(number, decision.thought)
        if decision.stop:
            self.notes.append(f"step {number}: the policy stopped the search")
            return False
        decision, observation, candidate_id = await self.act(number, state, decision)
        await self.finish_step(number, state, decision, observation, candidate_id)
        return True

    async def finish_step(
        self,
        number: int,
        state: SearchState,
        decision: Decision,
        observation: str,
        candidate_id: str | None,
    ) -> None:
        """Record step ``number`` (its thought, actions and observation), tell the policy its
        outcome and show it."""
        record = StepRecord(
            number,
            decision.thought,
            [c.as_action() for c in decision.calls],
            observation,
            candidate_id,
        )
        await self.record(record)
        self.policy.record_outcome(state, decision, observation)
        self.view.message(f"step {number}: {observation}")

    async def act(
        self, number: int, state: SearchState, decision: Decision, revisions: int = 2
    ) -> tuple[Decision, str, str | None]:
        """Run the decision's calls and train; a training the server refuses as a duplicate of
        an earlier candidate goes back to a policy that can ``revise`` (at most ``revisions``
        times), else the step is lost like any refused action. Returns the (merged) decision,
        the observation and the trained candidate's id."""
        for attempt in range(revisions + 1):
            refusal = await self.execute(decision.calls)
            if refusal:
                self.refusals += 1
                return decision, f"{refusal}; {NOT_TRAINED}", None
            if not any(call.ok for call in decision.calls):
                self.refusals += 1
                return decision, f"no candidate was set up; {NOT_TRAINED}", None
            result = await self.train(
                f"step {number}", "train_candidate", train_arguments(self, state, decision)
            )
            text = result.text or str(result.data)
            if not result.ok and is_duplicate_refusal(text):
                self.duplicates += 1
                revise = getattr(self.policy, "revise", None)
                if revise is not None and attempt < revisions:
                    self.view.message(f"step {number}: {text}; asking for another structure")
                    again: Decision = await revise(state, self.conn, text)
                    decision = Decision(
                        thought=f"{decision.thought}\n{again.thought}",
                        calls=[*decision.calls, *again.calls],
                        stop=again.stop,
                    )
                    continue
                self.refusals += 1
                return decision, f"train_candidate was refused: {text}; {NOT_TRAINED}", None
            data = result.as_dict()
            candidate_id = data.get("candidate_id")
            if candidate_id and data.get("reaction"):
                self.aliases[str(candidate_id)] = str(data["reaction"])
            return decision, self.describe_training(result), candidate_id
        raise AssertionError("unreachable")

    def repairs(self) -> dict[str, int]:
        """What the loop repaired or refused (the policy's counts and refused duplicates)."""
        counts = getattr(self.policy, "counts", None)
        repairs = dict(counts.as_dict()) if counts is not None else {}
        repairs["duplicates_refused"] = max(repairs.get("duplicates_refused", 0), self.duplicates)
        repairs["steps_lost"] = self.refusals
        return repairs

    # ------------------------------------------------------------------ end game

    async def finetune(self, best: Candidate) -> ToolResult:
        """Fine-tune the best candidate: the fine-tuning started with the last step when it is
        of this candidate, else a new one (a fine-tuning of another candidate is cancelled, and
        its copy is left out of the search like a cancelled guess)."""
        candidate_id = best.candidate_id
        ahead, self.finetune_ahead = self.finetune_ahead, None
        if ahead is not None:
            started_for, call = ahead
            if started_for == candidate_id:
                self.view.training("fine-tuning (started with the last step)", 1)
                return await call
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await call
            for copy in await self.read_candidates():
                if copy.operation == "finetune" and copy.parent_id == started_for:
                    self.discarded.add(copy.candidate_id)
        return await self.train(
            "fine-tuning",
            "finetune_candidate",
            {
                "session_id": self.session_id,
                "candidate_id": candidate_id,
                **best.finetune_arguments(self.config.finetune),
            },
        )

    async def finish(
        self, candidates: list[Candidate]
    ) -> tuple[Candidate | None, dict[str, Any] | None, dict[str, Any] | None]:
        """Fine-tune the best candidate and evaluate the result on the test split."""
        state = self.base_state(self.config.budget, candidates)
        best = state.best()
        if best is None:
            self.notes.append("no candidate trained successfully: nothing to fine-tune")
            return None, None, None
        final_id = best.candidate_id
        finetuned: dict[str, Any] | None = None
        if self.config.finetune > 0:
            result = await self.finetune(best)
            if result.ok:
                finetuned = result.as_dict()
                loss = finetuned.get("best_val_loss")
                if finetuned.get("status") == "ok" and loss is not None and math.isfinite(loss):
                    final_id = str(finetuned.get("candidate_id") or final_id)
                else:
                    self.notes.append("fine-tuning did not finish cleanly; evaluating the parent")
            else:
                self.notes.append(f"fine-tuning refused: {result.text}")
        evaluation = await self.conn.call(
            "evaluate_candidate",
            {"session_id": self.session_id, "candidate_id": final_id, "split": "test"},
        )
        if not evaluation.ok:
            self.notes.append(f"evaluation refused: {evaluation.text}")
            return best, finetuned, None
        data = evaluation.as_dict()
        data.setdefault("candidate_id", final_id)
        return best, finetuned, data


async def take_steps(run: SearchRun, first: int) -> bool:
    """The search's steps from step ``first`` to the budget (or ``config.max_steps`` new ones);
    True when the policy stopped the search."""
    config = run.config
    new_steps = 0
    number = first
    while number <= config.budget:
        left = config.budget - number + 1
        if config.max_steps is not None:
            left = min(left, config.max_steps - new_steps)
        if left <= 0:
            break
        # independent candidates (the reaction screening, the diffusion agenda) train together,
        # one step each; after them each next step is guessed and trained meanwhile
        taken = await run_batch(run, number, min(left, config.parallel))
        if not taken:
            taken = await run_pipeline(run, number, left)
        if not taken:
            if not await run.step(number):
                return True
            taken = 1
        number += taken
        new_steps += taken
    return False


async def run_search(
    conn: ServerConnection, policy: Policy, config: RunConfig, view: RunView
) -> RunResult:
    """Run (or resume) a search session to its end, or to ``config.max_steps`` new steps."""
    started = time.perf_counter()
    run = SearchRun(conn, policy, config, view)
    await run.open_session()
    if config.use_true_reaction:
        true = find_true_reaction(run.session_info)
        known = run.base_state(1, []).reactions
        if not true:
            raise AgentError(
                "the data set does not name its true reaction (no 'reaction' in its metadata); "
                "the physics, hybrid-gat and diff-only baselines need it"
            )
        if true not in known:
            raise AgentError(
                f"the data set's true reaction {true!r} is not in the reaction catalog "
                f"({', '.join(known)}): the physics, hybrid-gat and diff-only baselines fix "
                "the true reaction, so they cannot run on this data set; use "
                "'leads-agent discover' (or the react-only and all-neural baselines) instead"
            )
        config.fixed_reaction = true
        config.reactions = [true]
    candidates = await run.read_candidates()
    done = run.steps_done(candidates)
    if done and config.resume:
        view.message(f"resuming {run.session_id}: {done} of {config.budget} steps done")
    stopped = await take_steps(run, done + 1)
    candidates = await run.read_candidates()
    view.candidates(candidates)
    completed = stopped or run.steps_done(candidates) >= config.budget
    best = finetuned = evaluation = None
    best_record = None
    if completed:
        best, finetuned, evaluation = await run.finish(candidates)
        candidates = await run.read_candidates()
        view.candidates(candidates)
        if best is not None and conn.has_tool("get_candidate"):
            final_id = (finetuned or {}).get("candidate_id") or best.candidate_id
            record = await conn.call("get_candidate", {"candidate_id": final_id})
            best_record = record.as_dict() if record.ok else None
    if not run.record_on_server:
        run.notes.append(
            "the server has no record_step tool: thoughts and actions are kept in the report only"
        )
    return RunResult(
        session_id=run.session_id,
        dataset=_dataset_info(run.session_info.get("dataset")),
        anonymised=bool(run.session_info.get("anonymised", config.anonymise)),
        steps=run.steps,
        candidates=[c for c in candidates],
        best=best,
        finetuned=finetuned,
        evaluation=evaluation,
        catalogs=run.catalogs,
        usage=policy.usage,
        wall_seconds=time.perf_counter() - started,
        completed=completed,
        label=config.label,
        steps_recorded_on_server=run.record_on_server,
        notes=run.notes,
        best_record=best_record,
        repairs=run.repairs(),
    )


def _dataset_info(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    return {"name": value} if value else {}


def report_folder(base: str | None, session_id: str) -> Path:
    """``--report DIR`` or ``$LEADS_HOME/reports/<session_id>``."""
    if base:
        return Path(base)
    return leads_home() / "reports" / session_id
