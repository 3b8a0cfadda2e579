"""The LEADS action space over one archive: a thin facade that composes the concerns.

:class:`DiscoveryService` owns the :class:`~leads_server.archive.Archive`, a
:class:`~leads_server.executor.Executor` and the in-memory session store, and hands each tool to
the module that does it: session state (:mod:`.state`), the catalogs (:mod:`.catalog_view`), the
draft operations (:mod:`.drafts`), the runs (:mod:`.runs`) and the archive reads (:mod:`.reads`).
Each tool method takes the tool's input model (:mod:`.inputs`).

Concurrency: the methods are coroutines run on one event loop. Session state is read and changed
only on the loop (between awaits), so checks such as "budget left" and "take the draft" are
atomic; blocking work (data set generation and loading, archive queries, code validation,
parameter counting of catalog code, plotting) runs in threads, and training, evaluation and
anything that executes edited code runs in worker processes (:mod:`leads_server.jobs`).
"""

from __future__ import annotations

from pathlib import Path

from leads_engine.spec import CandidateSpec

from . import catalog_view
from .anonymise import ReactionAliases
from .archive import Archive, default_archive_path
from .drafts import Drafts
from .errors import DiscoveryError
from .executor import Executor, LocalExecutor
from .inputs import (
    EvaluateCandidate,
    FinetuneCandidate,
    GetCandidate,
    ListCatalogs,
    ModifyDiffusion,
    ModifyReaction,
    QueryArchive,
    RecordStep,
    RefineDiffusion,
    SelectDiffusion,
    SelectReaction,
    SimplifyDiffusion,
    StartSession,
    TrainCandidate,
)
from .jobs import JobLimits
from .models import (
    CandidateRecord,
    CatalogsResult,
    DraftResult,
    EvaluationResult,
    QueryResult,
    SessionStarted,
    SessionSummary,
    StepRecorded,
    TrainingResult,
)
from .reads import Reads
from .runs import FIGURES, Runs
from .state import DiscoverySession, ProgressCallback, Sessions, SessionStore
from .warm_starts import WarmStart, resolve_warm_start

__all__ = ["FIGURES", "DiscoveryError", "DiscoveryService", "ProgressCallback"]


class DiscoveryService:
    """The LEADS tools over one archive. Create it with :meth:`open`."""

    def __init__(
        self,
        archive: Archive,
        pool: Executor | None = None,
        compile_training: bool = True,
        job_limits: JobLimits | None = None,
    ) -> None:
        self.archive = archive
        self.pool = pool or LocalExecutor()
        self.store = SessionStore()
        self.sessions = Sessions(archive, self.store)
        self.reads = Reads(archive, self.sessions)
        self.runs = Runs(
            archive, self.pool, self.sessions, self.reads, compile_training, job_limits
        )
        self.drafts = Drafts(self.sessions, self.reads, self.runs)

    @classmethod
    def open(
        cls,
        archive_path: Path | None = None,
        start_method: str = "forkserver",
        compile_training: bool = True,
        job_limits: JobLimits | None = None,
        executor: Executor | None = None,
    ) -> DiscoveryService:
        """Open (or create) the archive; default ``$LEADS_HOME/archive.duckdb``.
        ``compile_training`` lets the trainer torch.compile the integrator step (catalog code
        only): seconds of compilation per worker process, then ~5x faster steps.
        ``job_limits`` sizes the wall-clock limit of every training and evaluation job;
        ``executor`` runs the jobs (default: local worker processes, one slot per core)."""
        archive = Archive.open(archive_path or default_archive_path())
        pool = executor or LocalExecutor(start_method)
        return cls(archive, pool, compile_training, job_limits)

    def stop(self) -> int:
        """The server is stopping: kill the running workers; their candidates end ``failed``
        as interrupted. Safe from a signal handler. The number of workers killed."""
        return self.runs.stop()

    @property
    def training(self) -> set[str]:
        """Ids of the candidates training now (until their final state is archived)."""
        return self.runs.running

    def close(self) -> None:
        """Stop the running workers and close the archive."""
        self.runs.stop()
        self.archive.close()

    # ------------------------------------------------------------------ tools

    async def list_catalogs(self, request: ListCatalogs) -> CatalogsResult:
        """Reaction models (under the session's names) and diffusion templates."""
        aliases = await self.sessions.aliases(request.session_id)
        return catalog_view.catalogs(request.session_id, aliases)

    async def start_session(
        self, request: StartSession, progress: ProgressCallback | None = None
    ) -> SessionStarted:
        """Open a session on a data set (generating a missing benchmark set first)."""
        return await self.sessions.start(request, progress)

    async def select_reaction(self, request: SelectReaction) -> DraftResult:
        """Set the draft's reaction model."""
        return await self.drafts.select_reaction(request)

    async def select_diffusion(self, request: SelectDiffusion) -> DraftResult:
        """Set the draft's diffusion to a catalog template."""
        return await self.drafts.select_diffusion(request)

    async def refine_diffusion(self, request: RefineDiffusion) -> DraftResult:
        """Draft = a trained candidate with changed diffusion hyper-parameters."""
        return await self.drafts.refine_diffusion(request)

    async def modify_diffusion(self, request: ModifyDiffusion) -> DraftResult:
        """Draft = edited diffusion code, once the sandbox accepted it."""
        return await self.drafts.modify_diffusion(request)

    async def modify_reaction(self, request: ModifyReaction) -> DraftResult:
        """Draft = edited reaction code, once the sandbox accepted it."""
        return await self.drafts.modify_reaction(request)

    async def simplify_diffusion(self, request: SimplifyDiffusion) -> DraftResult:
        """Draft = a variant of a trained candidate with fewer parameters."""
        return await self.drafts.simplify_diffusion(request)

    async def train_candidate(
        self, request: TrainCandidate, progress: ProgressCallback | None = None
    ) -> TrainingResult:
        """Train the draft (one unit of budget); the draft is cleared."""
        session = await self.sessions.get(request.session_id)
        spec, warm_start = self.take_draft(session, request.warm_start)
        epochs = request.epochs or session.epochs
        return await self.runs.train(
            session,
            spec,
            epochs,
            progress,
            warm_start=warm_start,
            learning_rate_scale=request.learning_rate_scale,
        )

    def take_draft(
        self, session: DiscoverySession, warm_start: list[str]
    ) -> tuple[CandidateSpec, WarmStart | None]:
        """Take the draft for training (one unit of budget) with its warm start, which is
        checked first: a refused warm start spends nothing and keeps the draft."""
        start = None
        if warm_start:  # the budget and the draft are checked first, as without a warm start
            self.drafts.check_budget(session)
            spec = self.drafts.complete(session)
            start = resolve_warm_start(self.reads, session, spec, warm_start)
        return self.drafts.take(session), start

    async def query_archive(self, request: QueryArchive) -> QueryResult:
        """One read-only SELECT, reaction names masked."""
        return await self.reads.query_archive(request)

    async def get_candidate(self, request: GetCandidate) -> CandidateRecord:
        """An archived candidate, reaction names masked."""
        return await self.reads.get_candidate(request)

    async def finetune_candidate(
        self, request: FinetuneCandidate, progress: ProgressCallback | None = None
    ) -> TrainingResult:
        """Continue training a candidate from its stored weights (no budget used)."""
        return await self.runs.finetune(request, progress)

    async def evaluate_candidate(self, request: EvaluateCandidate) -> EvaluationResult:
        """Score a trained candidate, write its figures and archive the scores."""
        return await self.runs.evaluate(request)

    async def record_step(self, request: RecordStep) -> StepRecorded:
        """Store an agent's reasoning step (thought, action, observation) in the archive."""
        session = await self.sessions.get(request.session_id)
        step = self.sessions.record_agent_step(
            session, request.thought, request.action, request.observation
        )
        return StepRecorded(session_id=session.session_id, step=step)

    # ------------------------------------------------------------------ resources

    def template_source(self, name: str) -> str:
        """The Python source of a diffusion template."""
        return catalog_view.template_source(name)

    def reaction_source(self, name: str) -> str:
        """The Python source of a catalog reaction model (catalog name or short alias)."""
        return catalog_view.reaction_source(name, ReactionAliases.disabled())

    async def session_reaction_source(self, session_id: str, name: str) -> str:
        """The source of a catalog reaction as the session names and shows it (anonymised: with
        nothing that names the model)."""
        aliases = await self.sessions.aliases(session_id)
        return catalog_view.reaction_source(name, aliases)

    def figure(self, candidate_id: str, name: str) -> bytes:
        """A PNG written by evaluate_candidate."""
        return self.runs.figure(candidate_id, name)

    def weights(self, candidate_id: str) -> bytes:
        """The trained state dict (``torch.save`` bytes) of a candidate."""
        return self.reads.weights(candidate_id)

    async def session_summary(self, session_id: str) -> SessionSummary:
        """Configuration, budget, draft and candidates of a session."""
        return await self.reads.session_summary(session_id)
