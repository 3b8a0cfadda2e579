"""Trainings that do not hold a request open: ``train_candidate(wait=false)`` starts one and
answers with its candidate id at once; ``wait_candidate`` waits for it (at most a given time,
so a host's request timeout is never reached) and ``cancel_candidate`` stops it.

A background training runs as a task on the server's event loop, in the same worker process a
waited training uses; its progress (the last batch or epoch message) is kept for
``wait_candidate``. Cancelling it kills the worker, ends the candidate ``cancelled`` and gives
the unit of budget back. A training started by a server process that has since ended was
stopped with it (the archive marks it ``failed``, interrupted).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import anyio

from .errors import DiscoveryError
from .inputs import GetCandidate
from .models import CandidateProgress, TrainingResult
from .service import DiscoveryService
from .state import DiscoverySession


@dataclass
class Training:
    """One background training: its task and what it last reported."""

    candidate_id: str
    session_id: str
    task: asyncio.Task[TrainingResult] | None = None
    fraction: float = 0.0
    message: str = "starting the worker"
    done: asyncio.Event = field(default_factory=asyncio.Event)


class BackgroundTrainings:
    """The background trainings of one service."""

    def __init__(self, service: DiscoveryService) -> None:
        self.service = service
        self.trainings: dict[str, Training] = {}

    async def start(
        self,
        session: DiscoverySession,
        epochs: int,
        warm_start: list[str] | None = None,
        learning_rate_scale: float = 1.0,
    ) -> TrainingResult:
        """Take the session's draft (one unit of budget) and train it in the background, its
        shared parts started from the ``warm_start`` candidates'."""
        spec, start = self.service.take_draft(session, warm_start or [])
        begun = asyncio.Event()
        ids: list[str] = []

        def started(candidate_id: str) -> None:
            # registered at once: progress (e.g. "queued") may come before start() resumes
            ids.append(candidate_id)
            self.trainings[candidate_id] = Training(candidate_id, session.session_id)
            begun.set()

        async def report(value: float, total: float | None, message: str) -> None:
            if ids:
                training = self.trainings[ids[0]]
                training.fraction = value / total if total else 0.0
                training.message = message

        async def run() -> TrainingResult:
            try:
                return await self.service.runs.train(
                    session,
                    spec,
                    epochs,
                    report,
                    None,
                    started,
                    warm_start=start,
                    learning_rate_scale=learning_rate_scale,
                )
            finally:
                begun.set()
                if ids:
                    self.trainings[ids[0]].done.set()

        task = asyncio.get_running_loop().create_task(run())
        await begun.wait()
        if not ids:  # the candidate could not even be archived
            await task  # raises the cause
            raise DiscoveryError("the training could not start")
        training = self.trainings[ids[0]]
        training.task = task
        if task.done():
            training.done.set()
        return TrainingResult(
            candidate_id=ids[0],
            session_id=session.session_id,
            status="training",
            operation=spec.operation,
            parent_id=spec.parent_id,
            reaction=session.aliases.show(spec.reaction),
            diffusion=spec.diffusion,
            train_losses=[],
            val_losses=[],
            best_val_loss=None,
            best_epoch=None,
            diagnosis=f"training {epochs} epoch(s) in the background: call "
            f"wait_candidate(candidate_id={ids[0]!r}, timeout_s=45) until it is done",
            verdict="training",
            parameter_count=None,
            wall_seconds=0.0,
            budget_left=session.budget_left,
            steps_used=session.steps_used,
        )

    def _training(self, candidate_id: str) -> Training | None:
        return self.trainings.get(candidate_id)

    async def wait(self, candidate_id: str, timeout_s: float) -> CandidateProgress:
        """The candidate's result when it ends within ``timeout_s``, else where it stands."""
        training = self._training(candidate_id)
        if training is None:
            record = await self.service.get_candidate(GetCandidate(candidate_id=candidate_id))
            final = record.status not in ("pending", "running")
            return CandidateProgress(
                candidate_id=candidate_id,
                status=record.status,
                done=final,
                fraction=1.0 if final else 0.0,
                message="not trained by this server process; get_candidate has its record"
                if final
                else "trained by another server process",
                result=None,
            )
        with anyio.move_on_after(timeout_s):
            await training.done.wait()
        if training.task is not None and training.task.done():
            return self._finished(training)
        return CandidateProgress(
            candidate_id=candidate_id,
            status="training",
            done=False,
            fraction=round(training.fraction, 4),
            message=training.message,
            result=None,
        )

    def _finished(self, training: Training) -> CandidateProgress:
        task = training.task
        assert task is not None
        if task.cancelled():
            return CandidateProgress(
                candidate_id=training.candidate_id,
                status="cancelled",
                done=True,
                fraction=training.fraction,
                message="cancelled; the unit of budget was given back",
                result=None,
            )
        error = task.exception()
        if error is not None:
            return CandidateProgress(
                candidate_id=training.candidate_id,
                status="failed",
                done=True,
                fraction=training.fraction,
                message=str(error),
                result=None,
            )
        result = task.result()
        return CandidateProgress(
            candidate_id=training.candidate_id,
            status=result.status,
            done=True,
            fraction=1.0,
            message=result.diagnosis,
            result=result,
        )

    async def cancel(self, candidate_id: str) -> CandidateProgress:
        """Stop a background training (its worker is killed, its budget given back)."""
        training = self._training(candidate_id)
        if training is None or training.task is None:
            raise DiscoveryError(
                f"{candidate_id!r} is not training in the background on this server; "
                "wait_candidate or get_candidate tell its status"
            )
        if not training.task.done():
            training.task.cancel()
            with anyio.move_on_after(30):
                await training.done.wait()
        return (
            self._finished(training) if training.task.done() else await self.wait(candidate_id, 0)
        )

    def cancel_all(self) -> None:
        """Cancel every running background training (the server closes)."""
        for training in self.trainings.values():
            if training.task is not None and not training.task.done():
                training.task.cancel()
