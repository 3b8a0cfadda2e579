"""Runs of candidate code: counting parameters, checking edited code, training, fine-tuning and
evaluating (with figures), and their archive writes.

Catalog code is counted in a thread; anything that executes edited code, and every training or
evaluation, runs in a worker process (:mod:`leads_server.jobs`). Archive access here: candidates
(begun, refused, finished), their epochs and evaluations.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from leads_engine.dataset import leads_home
from leads_engine.diffusion import DiffusionSpecError
from leads_engine.spec import CandidateSpec
from leads_engine.warm_start import WARMUP_EPOCHS

from .archive import INTERRUPTED_ERROR, Archive, ArchiveError
from .errors import SANDBOX_MISSING, DiscoveryError
from .executor import Executor
from .inputs import EvaluateCandidate, FinetuneCandidate
from .jobs import Job, JobKind, JobLimits, WorkerError, sandbox_available
from .models import EvaluationResult, TrainingResult
from .reads import Reads
from .state import DiscoverySession, ProgressCallback, Sessions

if TYPE_CHECKING:
    from leads_engine.diffusion_trial import ValidationReport

    from .warm_starts import WarmStart

FIGURES = ("activation_map.png", "training_curves.png")
CANCELLED_ERROR = "cancelled by the client before training finished"

log = logging.getLogger(__name__)


def _finite(values: list[Any]) -> list[float | None]:
    return [float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None for v in values]


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "n/a"


def _opt_finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _final_state(
    summary: dict[str, Any],
    weights: bytes | None,
    epochs: int,
    warm_start: dict[str, str] | None = None,
    learning_rate_scale: float = 1.0,
    warmup_epochs: float = 0.0,
) -> dict[str, Any]:
    """The archive's final state of a candidate whose fit returned ``summary`` (status ``ok``
    or ``unstable``; an unstable fit that diverged in its first epoch has no weights);
    ``warm_start`` (which candidate gave which part), a ``learning_rate_scale`` other than 1 and
    a warm-up are kept with its metrics."""
    train = summary["train_losses"]
    best = summary["best_epoch"]
    return {
        "status": summary["status"],
        "train_loss": train[best - 1] if best else (train[-1] if train else None),
        "val_loss": _opt_finite(summary["best_val_loss"]),
        "best_epoch": best,
        "parameter_count": summary["parameter_count"],
        "wall_seconds": summary["wall_seconds"],
        "metrics": {
            "diagnosis": summary["diagnosis"],
            "failure": summary["failure"],
            "reaction_parameters": summary["reaction_parameters"],
            "residual": summary.get("residual"),
            "epochs_requested": epochs,
            # how this fit started, when not as usual (from scratch, at the search's steps)
            **({"warm_start": warm_start} if warm_start else {}),
            **({"learning_rate_scale": learning_rate_scale} if learning_rate_scale != 1 else {}),
            **({"warmup_epochs": warmup_epochs} if warmup_epochs else {}),
        },
        "diagnosis": summary["diagnosis"]["text"],
        "error": None if summary["status"] == "ok" else json.dumps(summary["failure"]),
        "weights": weights,
    }


def require_sandbox() -> None:
    """Refuse to go on when edited code could not be confined (the sandbox is missing)."""
    if not sandbox_available():
        raise DiscoveryError(SANDBOX_MISSING)


def figure_dir(session_id: str, candidate_id: str) -> Path:
    """Where evaluate_candidate writes a candidate's figures."""
    return leads_home() / "runs" / session_id / candidate_id


class Runs:
    """Executes candidates for the sessions of one archive."""

    def __init__(
        self,
        archive: Archive,
        pool: Executor,
        sessions: Sessions,
        reads: Reads,
        compile_training: bool = True,
        limits: JobLimits | None = None,
    ) -> None:
        self.archive = archive
        self.pool = pool
        self.sessions = sessions
        self.reads = reads
        self.compile_training = compile_training
        self.limits = limits or JobLimits()
        #: set when the server stops: trainings still running end failed, "interrupted"
        self.stopping = False
        #: ids of the candidates training now (until their final state is archived)
        self.running: set[str] = set()

    def stop(self) -> int:
        """The server is stopping: kill every running worker; the trainings they ran end
        ``failed`` with :data:`INTERRUPTED_ERROR` (what reopening the archive does to candidates
        a dead server left pending). Safe from a signal handler. The number of workers killed."""
        self.stopping = True
        return self.pool.kill_all()

    # ------------------------------------------------------------------ before training

    async def parameter_count(self, spec: CandidateSpec, session: DiscoverySession) -> int:
        """Trainable parameters of ``spec`` on the session's mesh; edited code is counted in a
        sandboxed worker, catalog code in a thread."""
        if spec.has_edited_code:
            require_sandbox()
            try:
                job = Job(
                    "count",
                    spec.model_dump_json(),
                    str(session.dataset_path),
                    timeout_s=self.limits.floor_s,
                )
                result = await self.pool.run(job)
            except WorkerError as exc:
                raise DiscoveryError(f"the edited code cannot be built: {exc}") from exc
            return int(result["parameter_count"])

        def count() -> int:
            from leads_engine.hybrid import HybridModel

            return HybridModel.from_spec(spec, session.dataset.n_nodes).parameter_count()

        try:
            return await anyio.to_thread.run_sync(count)
        except (DiffusionSpecError, ValueError, TypeError) as exc:
            raise DiscoveryError(f"the candidate cannot be built: {exc}") from exc

    async def check_edit(self, source: str, hyperparameters: dict[str, Any]) -> ValidationReport:
        """The sandbox's report on edited code, tried with the hyper-parameters it will be
        trained with."""
        require_sandbox()
        from leads_engine.diffusion_trial import validate_diffusion_source

        def validate() -> ValidationReport:
            return validate_diffusion_source(source, hyperparameters=hyperparameters)

        return await anyio.to_thread.run_sync(validate)

    async def check_reaction_edit(self, source: str) -> ValidationReport:
        """The sandbox's report on edited reaction code."""
        require_sandbox()
        from leads_engine.reaction_trial import validate_reaction_source

        return await anyio.to_thread.run_sync(validate_reaction_source, source)

    def record_refusal(
        self, session: DiscoverySession, refused: dict[str, Any], message: str
    ) -> str:
        """Archive refused edited code as a 'refused' candidate (no budget used); its id.

        ``refused`` holds the spec's fields as drafted (real names). It is stored as the session
        shows it, without the spec's checks: code may be refused before any reaction was
        chosen."""
        spec = CandidateSpec.model_construct(**refused)
        return self.archive.record_refusal(
            session.session_id, session.aliases.shown_spec(spec), message
        )

    # ------------------------------------------------------------------ training

    def _job(
        self,
        kind: JobKind,
        spec: CandidateSpec,
        session: DiscoverySession,
        weights: bytes | None,
        **settings: Any,
    ) -> Job:
        """A worker job on the session's data set with its batch size and these weights."""
        return Job(
            kind,
            spec.model_dump_json(),
            str(session.dataset_path),
            batch_size=session.batch_size,
            initial_weights=weights,
            compile=self.compile_training,
            **settings,
        )

    async def finetune(
        self, request: FinetuneCandidate, progress: ProgressCallback | None = None
    ) -> TrainingResult:
        """Continue training a candidate from its stored weights (no budget used)."""
        session = await self.sessions.get(request.session_id)
        parent = self.reads.candidate(request.candidate_id, session)
        weights = self.reads.stored_weights(request.candidate_id)
        if weights is None:
            raise DiscoveryError(
                f"candidate {request.candidate_id!r} has no weights (status {parent.status}); "
                "fine-tune a candidate whose training finished"
            )
        spec = self.reads.spec_of(parent, session).model_copy(
            update={"parent_id": request.candidate_id, "operation": "finetune"}
        )
        return await self.train(
            session,
            spec,
            request.epochs,
            progress,
            weights,
            learning_rate_scale=request.learning_rate_scale,
            warmup_epochs=request.warmup_epochs,
        )

    async def train(
        self,
        session: DiscoverySession,
        spec: CandidateSpec,
        epochs: int,
        progress: ProgressCallback | None = None,
        weights: bytes | None = None,
        started: Callable[[str], None] | None = None,
        warm_start: WarmStart | None = None,
        learning_rate_scale: float = 1.0,
        warmup_epochs: float = 0.0,
    ) -> TrainingResult:
        """Train ``spec`` (from ``weights`` when given, else with the parts ``warm_start``
        names started from its parents', its learning rates then warming up over
        :data:`~leads_engine.warm_start.WARMUP_EPOCHS`) into a new archived candidate; ``started``
        learns the candidate's id as soon as it is archived. Progress comes after
        every batch (value: epochs done, fractional) and every epoch.

        The candidate always ends final: ``ok`` or ``unstable`` (a divergence at any epoch, with
        the best earlier weights if any), ``failed`` (the worker failed, ran past its wall-clock
        limit or died; the server stopped: :data:`INTERRUPTED_ERROR`) or ``cancelled`` (the
        client cancelled). The final state is archived before the result is built."""
        shown = session.aliases.shown_spec(spec)
        candidate_id = self.archive.begin_candidate(session.session_id, shown)
        session.last_candidate_id = candidate_id
        if started is not None:
            started(candidate_id)

        async def on_epoch(event: dict[str, Any]) -> None:
            if event.get("phase") == "queued":  # every executor slot is busy: wait in line
                if progress is not None:
                    await progress(
                        0.0,
                        float(epochs),
                        f"{candidate_id} queued: all {event['slots']} job slot(s) busy, "
                        f"{event['ahead']} candidate(s) ahead; it starts when one frees",
                    )
                return
            if event.get("phase") == "placed":  # a Ray task found its node
                if progress is not None:
                    await progress(0.0, float(epochs), f"{candidate_id} running on {event['node']}")
                return
            if event.get("phase") == "batch":
                if progress is not None:
                    await progress(
                        event["epoch"] - 1 + event["batch"] / event["batches"],
                        float(event["epochs"]),
                        f"{candidate_id} epoch {event['epoch']}/{event['epochs']}, batch "
                        f"{event['batch']}/{event['batches']}: train loss "
                        f"{_num(event['train_loss'])}",
                    )
                return
            self.archive.record_epoch(
                candidate_id,
                event["epoch"],
                _opt_finite(event["train_loss"]),
                _opt_finite(event["val_loss"]),
                event["epoch_seconds"],
            )
            if progress is not None:
                await progress(
                    float(event["epoch"]),
                    float(event["epochs"]),
                    f"{candidate_id} epoch {event['epoch']}/{event['epochs']}: train "
                    f"{event['train_loss']:.4g}, val {event['val_loss']:.4g}",
                )

        sources = warm_start.sources if warm_start is not None else None
        if warm_start is not None:
            warmup_epochs = WARMUP_EPOCHS
        job = self._job(
            "fit",
            spec,
            session,
            weights,
            epochs=epochs,
            timeout_s=self._timeout(session, epochs),
            warm_start=warm_start.parents if warm_start is not None else (),
            learning_rate_scale=learning_rate_scale,
            warmup_epochs=warmup_epochs,
        )
        self.running.add(candidate_id)
        try:
            summary, final = await self._fit(candidate_id, job, on_epoch, sources)
        except anyio.get_cancelled_exc_class():
            if spec.operation != "finetune" and not self.stopping:
                session.steps_used = max(0, session.steps_used - 1)  # a cancelled fit is free
            raise
        finally:
            self.running.discard(candidate_id)
        error = final.get("error") if summary is None else None
        result = self._training_result(session, candidate_id, spec, summary, error, sources)
        self.sessions.record_step(
            session,
            {"tool": spec.operation, "candidate_id": candidate_id, "spec": shown.model_dump()},
            f"{candidate_id}: {result.status}, {result.diagnosis}",
        )
        return result

    async def _fit(
        self,
        candidate_id: str,
        job: Job,
        on_epoch: Callable[[dict[str, Any]], Awaitable[None]],
        warm_start: dict[str, str] | None = None,
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Run the fit job and archive the candidate's final state: the fit's summary (None
        when the worker failed) and that state."""
        summary: dict[str, Any] | None = None
        try:
            payload = await self.pool.run(job, on_epoch)
            summary = payload["summary"]
            final = _final_state(
                summary,
                payload.get("weights"),
                job.epochs,
                warm_start,
                job.learning_rate_scale,
                job.warmup_epochs,
            )
        except WorkerError as exc:
            summary = None
            final = {"status": "failed", "error": INTERRUPTED_ERROR if self.stopping else str(exc)}
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                self._finish_abandoned(candidate_id, exc)
            raise
        self._finish(candidate_id, final)
        return summary, final

    def _timeout(self, session: DiscoverySession, epochs: int) -> float:
        """The wall-clock limit of a job of ``epochs`` epochs on the session's data set."""
        return self.limits.seconds(session.dataset, epochs)

    def _finish(self, candidate_id: str, final: dict[str, Any]) -> None:
        """Archive the final state; if that write fails (disk full, archive closed), try to mark
        the candidate failed with the cause (no weights), then refuse with the cause."""
        try:
            self.archive.finish_candidate(candidate_id, **final)
        except ArchiveError as exc:
            cause = f"the archive could not store the result of {candidate_id}: {exc}"
            try:
                self.archive.finish_candidate(candidate_id, "failed", error=cause)
            except ArchiveError:
                log.exception("candidate %s stays pending until the archive reopens", candidate_id)
            raise DiscoveryError(
                f"{cause}; free disk space or check {self.archive.path}, then train again"
            ) from exc

    def _finish_abandoned(self, candidate_id: str, exc: BaseException) -> None:
        """Finish a candidate whose training stopped with ``exc`` (cancellation, server stop,
        a server error), never raising over ``exc``."""
        if self.stopping:
            status, error = "failed", INTERRUPTED_ERROR
        elif isinstance(exc, anyio.get_cancelled_exc_class()):
            status, error = "cancelled", CANCELLED_ERROR
        else:
            status, error = "failed", f"server error: {type(exc).__name__}: {exc}"
        try:
            self.archive.finish_candidate(candidate_id, status, error=error)
        except ArchiveError:
            log.exception("candidate %s stays pending until the archive reopens", candidate_id)

    @staticmethod
    def _training_result(
        session: DiscoverySession,
        candidate_id: str,
        spec: CandidateSpec,
        summary: dict[str, Any] | None,
        error: str | None,
        warm_start: dict[str, str] | None = None,
    ) -> TrainingResult:
        summary = summary or {}
        diagnosis = summary.get("diagnosis") or {
            "text": f"training failed: {error}",
            "verdict": "failed",
        }
        return TrainingResult(
            candidate_id=candidate_id,
            session_id=session.session_id,
            status=summary.get("status", "failed"),
            operation=spec.operation,
            parent_id=spec.parent_id,
            reaction=session.aliases.show(spec.reaction),
            diffusion=spec.diffusion,
            train_losses=_finite(summary.get("train_losses", [])),
            val_losses=_finite(summary.get("val_losses", [])),
            best_val_loss=_opt_finite(summary.get("best_val_loss")),
            best_epoch=summary.get("best_epoch"),
            diagnosis=diagnosis["text"],
            verdict=diagnosis["verdict"],
            catalog_may_lack=diagnosis.get("catalog_may_lack"),
            error_split=diagnosis.get("error_split"),
            parameter_count=summary.get("parameter_count"),
            wall_seconds=float(summary.get("wall_seconds", 0.0)),
            reaction_parameters={
                k: _opt_finite(v) for k, v in summary.get("reaction_parameters", {}).items()
            },
            residual=summary.get("residual"),
            warm_start=warm_start,
            failure=summary.get("failure"),
            error=error,
            budget_left=session.budget_left,
            steps_used=session.steps_used,
        )

    # ------------------------------------------------------------------ evaluation

    async def evaluate(self, request: EvaluateCandidate) -> EvaluationResult:
        """Test MSE and AT MAE of a trained candidate, its figures, and an archived record."""
        session = await self.sessions.get(request.session_id)
        candidate_id, split = request.candidate_id, request.split
        candidate = self.reads.candidate(candidate_id, session)
        weights = self.reads.stored_weights(candidate_id)
        if weights is None:
            raise DiscoveryError(
                f"candidate {candidate_id!r} has no weights (status {candidate.status}); "
                "evaluate a candidate whose training finished"
            )
        if len(session.dataset.indices(split)) == 0:
            raise DiscoveryError(f"the data set has no {split!r} samples; choose another split")
        spec = self.reads.spec_of(candidate, session)
        if spec.has_edited_code:
            require_sandbox()
        job = self._job(
            "evaluate", spec, session, weights, split=split, timeout_s=self._timeout(session, 1)
        )
        try:
            payload = await self.pool.run(job)
        except WorkerError as exc:
            raise DiscoveryError(f"evaluation of {candidate_id} failed: {exc}") from exc
        summary = payload["summary"]
        self.archive.record_evaluation(
            candidate_id, split, summary["mse"], _opt_finite(summary["at_mae_ms"]), summary
        )
        folder = figure_dir(session.session_id, candidate_id)
        curves = {
            "train": [e.train_loss for e in candidate.epochs],
            "val": [e.val_loss for e in candidate.epochs],
        }

        def plot() -> list[Path]:
            import numpy as np

            from leads_engine.plots import plot_activation_comparison, plot_training_curves

            folder.mkdir(parents=True, exist_ok=True)
            data = session.dataset
            at_true = np.array(payload["at_true"], dtype=float)
            at_pred = np.array(payload["at_pred"], dtype=float)
            files = [
                plot_activation_comparison(
                    data.points, data.cells, at_true, at_pred, folder / FIGURES[0]
                )
            ]
            clean = {k: [np.nan if v is None else v for v in vs] for k, vs in curves.items()}
            if any(clean.values()):
                files.append(plot_training_curves(clean, folder / FIGURES[1]))
            return files

        try:
            files = await anyio.to_thread.run_sync(plot)
        except OSError as exc:
            raise DiscoveryError(
                f"the evaluation of {candidate_id} on {split!r} is archived (MSE "
                f"{float(summary['mse']):.4g}; see get_candidate), but its figures could not be "
                f"written to the run folder {folder}: {exc.strerror or exc}; free disk space or "
                "make the folder writable, then call evaluate_candidate again for the figures"
            ) from exc
        return EvaluationResult(
            candidate_id=candidate_id,
            split=split,
            mse=float(summary["mse"]),
            at_mae_ms=_opt_finite(summary["at_mae_ms"]),
            per_sample_mse=[float(v) for v in summary["per_sample_mse"]],
            at_compared=int(summary.get("at_n_compared", 0)),
            at_missing_pred=int(summary.get("at_n_missing_pred", 0)),
            at_missing_true=int(summary.get("at_n_missing_true", 0)),
            activation_map_uri=f"candidate://{candidate_id}/{FIGURES[0]}",
            training_curves_uri=f"candidate://{candidate_id}/{FIGURES[1]}",
            files=[str(path) for path in files],
        )

    def figure(self, candidate_id: str, name: str) -> bytes:
        """A PNG written by evaluate_candidate."""
        candidate = self.reads.candidate(candidate_id)
        path = figure_dir(candidate.session_id, candidate_id) / name
        if not path.exists():
            raise DiscoveryError(f"no {name} for {candidate_id} yet: call evaluate_candidate first")
        return path.read_bytes()
