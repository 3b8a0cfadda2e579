"""Discovery sessions: the logic under the MCP tools (no MCP imports).

:class:`DiscoveryService` owns the :class:`~leads_server.archive.Archive`, a
:class:`~leads_server.jobs.WorkerPool` and the in-memory :class:`SessionStore` (the server's only
mutable state). A session holds its data set, search budget, epochs per candidate, seed, the
reaction-name aliases (anonymisation) and the *draft*: the candidate the agent is assembling with
``select_reaction`` / ``select_diffusion`` / ``refine_diffusion`` / ``modify_diffusion`` /
``simplify_diffusion`` and that ``train_candidate`` trains.

Every bad input raises :class:`DiscoveryError` with a message that says what to do instead; the
MCP layer turns it into an ``isError`` tool result.

Concurrency: the methods are coroutines run on one event loop. Session state is read and changed
only on the loop (between awaits), so checks such as "budget left" and "take the draft" are
atomic; blocking work (data set generation and loading, archive queries, code validation,
parameter counting of catalog code, plotting) runs in threads, and training, evaluation and
anything that executes edited code runs in worker processes (:mod:`leads_server.jobs`).
"""

from __future__ import annotations

import inspect
import json
import math
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from leads_engine import diffusion as diffusion_catalog
from leads_engine.dataset import (
    DatasetError,
    EPDataset,
    datasets_dir,
    leads_home,
    load_dataset,
    resolve_dataset_path,
)
from leads_engine.diffusion import DiffusionSpecError
from leads_engine.reactions import ALIASES, REACTION_MODELS, NeuralReaction, resolve_reaction_name
from leads_engine.spec import SEARCH_OPERATIONS, CandidateSpec, Operation

from .anonymise import ReactionAliases
from .archive import Archive, ArchiveError, CandidateDetail, default_archive_path
from .jobs import Job, WorkerError, WorkerPool, sandbox_available
from .models import (
    CandidateRecord,
    CatalogsResult,
    DiffusionEntry,
    DraftResult,
    DraftView,
    EvaluationResult,
    ParameterInfo,
    QueryResult,
    ReactionEntry,
    SessionStarted,
    SessionSummary,
    StepRecorded,
    TrainingResult,
)

NEURAL_HYPERPARAMETERS = {
    "hidden": "int 4-256 (default 32): width of the MLP",
    "layers": "int 1-4 (default 2): hidden layers",
    "n_recovery": "int 1-3 (default 1): learned recovery variables",
}
OPERATIONS_HELP = {
    "select": "select_reaction / select_diffusion: pick a catalog reaction and diffusion template",
    "refine": "refine_diffusion: change hyper-parameters of a trained candidate's diffusion",
    "modify": "modify_diffusion: edit the code of a template or of a trained candidate",
    "simplify": "simplify_diffusion: a variant of a trained candidate with fewer parameters",
    "train": "train_candidate: train the draft (one unit of the search budget)",
    "finetune": "finetune_candidate: continue training a candidate (no budget)",
}
FIGURES = ("activation_map.png", "training_curves.png")
QUERY_TIMEOUT_S = 5.0

ProgressCallback = Callable[[float, float | None, str], Awaitable[None]]


class DiscoveryError(Exception):
    """A refused action, with an actionable message for the agent."""


# ---------------------------------------------------------------------------- state


@dataclass
class Draft:
    """The candidate being assembled (real reaction names)."""

    reaction: str | None = None
    reaction_hyperparameters: dict[str, int] = field(default_factory=dict)
    diffusion: str | None = None
    diffusion_hyperparameters: dict[str, Any] = field(default_factory=dict)
    diffusion_source: str | None = None
    parent_id: str | None = None
    operation: Operation = "select"

    @property
    def empty(self) -> bool:
        return self.reaction is None and self.diffusion is None


@dataclass
class DiscoverySession:
    """One search over one data set."""

    session_id: str
    dataset_name: str
    dataset_path: Path
    dataset: EPDataset
    budget: int
    epochs: int
    seed: int
    aliases: ReactionAliases
    #: trajectories per optimizer step; None: each template's catalog ``batch_size``
    batch_size: int | None = None
    steps_used: int = 0
    draft: Draft = field(default_factory=Draft)
    last_candidate_id: str | None = None

    @property
    def budget_left(self) -> int:
        return max(0, self.budget - self.steps_used)


class SessionStore:
    """Sessions by id, and loaded data sets by path (shared between sessions)."""

    def __init__(self) -> None:
        self.sessions: dict[str, DiscoverySession] = {}
        self.datasets: dict[tuple[str, float], EPDataset] = {}
        self.generation_lock = threading.Lock()

    def add(self, session: DiscoverySession) -> None:
        self.sessions[session.session_id] = session

    def get(self, session_id: str) -> DiscoverySession | None:
        return self.sessions.get(session_id)

    def latest_anonymised(self) -> DiscoverySession | None:
        anonymised = [s for s in self.sessions.values() if s.aliases.enabled]
        return anonymised[-1] if anonymised else None

    def dataset(self, path: Path) -> EPDataset:
        """Load (once per file version) the data set at ``path``; call from a thread."""
        key = (str(path.resolve()), path.stat().st_mtime)
        if key not in self.datasets:
            self.datasets[key] = load_dataset(path)
        return self.datasets[key]


# ---------------------------------------------------------------------------- helpers


def _equations(doc: str) -> str:
    """The ``.. math::`` block of a reaction docstring (no names, no citation)."""
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    inside = False
    for line in lines:
        if line.strip().startswith(".. math::"):
            inside = True
            continue
        if inside:
            if line.strip() and not line.startswith((" ", "\t")):
                break
            out.append(line.strip())
    return "\n".join(part for part in out if part) or "(equations not documented)"


def _finite(values: list[Any]) -> list[float | None]:
    return [float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None for v in values]


def _opt_finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _hp_differs(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return {k: a[k] for k in sorted(a)} != {k: b[k] for k in sorted(b)}


class DiscoveryService:
    """The LEADS action space over one archive. Create it with :meth:`open`."""

    def __init__(
        self, archive: Archive, pool: WorkerPool | None = None, compile_training: bool = True
    ) -> None:
        self.archive = archive
        self.pool = pool or WorkerPool()
        self.compile_training = compile_training
        self.store = SessionStore()

    @classmethod
    def open(
        cls,
        archive_path: Path | None = None,
        start_method: str = "forkserver",
        compile_training: bool = True,
    ) -> DiscoveryService:
        """Open (or create) the archive; default ``$LEADS_HOME/archive.duckdb``.
        ``compile_training`` lets the trainer torch.compile the integrator step (catalog code
        only): seconds of compilation per worker process, then ~5x faster steps."""
        archive = Archive.open(archive_path or default_archive_path())
        return cls(archive, WorkerPool(start_method), compile_training)

    def close(self) -> None:
        self.archive.close()

    # ------------------------------------------------------------------ lookups

    async def session(self, session_id: str) -> DiscoverySession:
        """The live session, or one restored from the archive (after a server restart)."""
        session = self.store.get(session_id)
        if session is not None:
            return session
        try:
            row = self.archive.get_session(session_id)
        except ArchiveError as exc:
            raise DiscoveryError(
                f"unknown session {session_id!r}: call start_session and use the session_id "
                "it returns"
            ) from exc
        config = row.config or {}
        path = Path(row.dataset_path or row.dataset)
        try:
            dataset = await anyio.to_thread.run_sync(self.store.dataset, path)
        except (DatasetError, OSError) as exc:
            raise DiscoveryError(
                f"session {session_id!r} cannot be resumed: its data set {path} is unavailable "
                f"({exc}); start a new session"
            ) from exc
        candidates = self.archive.list_candidates(session_id)
        session = DiscoverySession(
            session_id=session_id,
            dataset_name=row.dataset,
            dataset_path=path,
            dataset=dataset,
            budget=int(row.budget or 0),
            epochs=int(config.get("epochs", 3)),
            seed=int(row.seed or 0),
            aliases=ReactionAliases(config.get("aliases") or {}),
            batch_size=config.get("batch_size"),
            steps_used=sum(
                c.operation in SEARCH_OPERATIONS and c.status != "refused" for c in candidates
            ),
            last_candidate_id=next(
                (c.candidate_id for c in reversed(candidates) if c.status != "refused"),
                None,
            ),
        )
        self.store.add(session)
        return session

    def _candidate(
        self, candidate_id: str, session: DiscoverySession | None = None
    ) -> CandidateDetail:
        try:
            candidate = self.archive.get_candidate(candidate_id)
        except ArchiveError as exc:
            hint = (
                "; list this session's candidates with query_archive (SELECT candidate_id, "
                f"status FROM candidates WHERE session_id = '{session.session_id}')"
                if session
                else ""
            )
            raise DiscoveryError(f"unknown candidate {candidate_id!r}{hint}") from exc
        if session is not None and candidate.session_id != session.session_id:
            raise DiscoveryError(
                f"candidate {candidate_id!r} belongs to session {candidate.session_id!r}, not "
                f"{session.session_id!r}; use a candidate of this session"
            )
        return candidate

    def _trained_parent(self, candidate_id: str, session: DiscoverySession) -> CandidateDetail:
        candidate = self._candidate(candidate_id, session)
        if candidate.status in ("refused", "pending"):
            raise DiscoveryError(
                f"candidate {candidate_id!r} is {candidate.status}: derive from a trained candidate"
            )
        return candidate

    @staticmethod
    def _spec_of(candidate: CandidateDetail) -> CandidateSpec:
        return CandidateSpec.model_validate(candidate.spec)

    def _aliases_for_session_id(self, session_id: str) -> ReactionAliases:
        session = self.store.get(session_id)
        if session is not None:
            return session.aliases
        try:
            config = self.archive.get_session(session_id).config or {}
        except ArchiveError:
            return ReactionAliases.disabled()
        return ReactionAliases(config.get("aliases") or {})

    # ------------------------------------------------------------------ catalogs

    async def list_catalogs(self, session_id: str | None = None) -> CatalogsResult:
        """Reaction models (under the session's names) and diffusion templates."""
        aliases = (
            (await self.session(session_id)).aliases if session_id else ReactionAliases.disabled()
        )
        reactions: list[ReactionEntry] = []
        for real, cls in REACTION_MODELS.items():
            doc = cls.__doc__ or ""
            reactions.append(
                ReactionEntry(
                    name=aliases.show(real),
                    description=_equations(doc) if aliases.enabled else inspect.cleandoc(doc),
                    state_names=list(cls.state_names),
                    parameters={
                        key: ParameterInfo(
                            default=r.default,
                            low=r.low,
                            high=r.high,
                            log_scale=r.log,
                            description=r.description,
                        )
                        for key, r in cls.all_parameter_ranges().items()
                    },
                )
            )
        reactions.sort(key=lambda entry: entry.name)
        reactions.append(
            ReactionEntry(
                name=NeuralReaction.name,
                description=inspect.cleandoc(NeuralReaction.__doc__ or ""),
                state_names=["w1 .. w<n_recovery>"],
                parameters={
                    key: ParameterInfo(
                        default=r.default,
                        low=r.low,
                        high=r.high,
                        log_scale=r.log,
                        description=r.description,
                    )
                    for key, r in NeuralReaction.all_parameter_ranges().items()
                },
                hyperparameters=NEURAL_HYPERPARAMETERS,
            )
        )
        templates = [
            DiffusionEntry(
                name=info.name,
                family=info.family,
                summary=info.summary,
                equation=info.equation,
                hyperparameters=info.hyperparameters,
                source_uri=f"catalog://diffusion/{info.name}",
                batch_size=info.batch_size,
            )
            for info in diffusion_catalog.list_templates()
        ]
        return CatalogsResult(
            session_id=session_id,
            anonymised=aliases.enabled,
            reactions=reactions,
            diffusion_templates=templates,
            operations=OPERATIONS_HELP,
        )

    @staticmethod
    def template_source(name: str) -> str:
        try:
            return diffusion_catalog.template_source(name)
        except DiffusionSpecError as exc:
            raise DiscoveryError(str(exc)) from exc

    # ------------------------------------------------------------------ sessions

    async def _resolve_dataset(
        self, dataset: str, progress: ProgressCallback | None
    ) -> tuple[Path, bool]:
        try:
            return resolve_dataset_path(dataset), False
        except DatasetError as exc:
            key = dataset.lower()
            if key not in ALIASES and key not in REACTION_MODELS:
                raise DiscoveryError(
                    f"{exc}; or pass a benchmark name ({', '.join(ALIASES)}) to generate it"
                ) from exc
        path = datasets_dir() / f"{dataset}.npz"

        def report(fraction: float) -> None:
            if progress is not None:
                anyio.from_thread.run(progress, fraction, 1.0, f"generating data set {dataset}")

        def generate() -> bool:
            from leads_engine.generator import BenchmarkConfig, generate_benchmark

            with self.store.generation_lock:  # two sessions asking for it: generate once
                if path.exists():
                    return False
                data = generate_benchmark(
                    BenchmarkConfig(reaction=key), progress=report, name=dataset
                )
                data.save(path)
                return True

        generated = await anyio.to_thread.run_sync(generate)
        return path, generated

    async def start_session(
        self,
        dataset: str = "ap",
        budget: int = 15,
        anonymise: bool = True,
        seed: int = 0,
        epochs: int = 3,
        progress: ProgressCallback | None = None,
        batch_size: int | None = None,
    ) -> SessionStarted:
        """Open a session on a data set (generating a missing benchmark set first)."""
        path, generated = await self._resolve_dataset(dataset, progress)
        try:
            data = await anyio.to_thread.run_sync(self.store.dataset, path)
        except DatasetError as exc:
            raise DiscoveryError(f"cannot load data set {dataset!r}: {exc}") from exc
        aliases = ReactionAliases.shuffled(seed) if anonymise else ReactionAliases.disabled()
        summary = data.summary()
        session_id = self.archive.create_session(
            dataset=dataset,
            dataset_path=str(path.resolve()),
            budget=budget,
            anonymise=anonymise,
            seed=seed,
            config={
                "epochs": epochs,
                "batch_size": batch_size,
                "aliases": aliases.mapping,
                "dataset_summary": summary,
            },
        )
        self.store.add(
            DiscoverySession(
                session_id=session_id,
                dataset_name=dataset,
                dataset_path=path.resolve(),
                dataset=data,
                budget=budget,
                epochs=epochs,
                seed=seed,
                aliases=aliases,
                batch_size=batch_size,
            )
        )
        if anonymise:
            summary["reaction"] = "hidden (anonymised session)"
        names = sorted(aliases.show(name) for name in REACTION_MODELS) + [NeuralReaction.name]
        return SessionStarted(
            session_id=session_id,
            dataset=summary,
            dataset_generated=generated,
            budget=budget,
            budget_left=budget,
            epochs_per_candidate=epochs,
            seed=seed,
            anonymised=anonymise,
            reactions=names,
            next_step="call list_catalogs with this session_id, then select_reaction and "
            "select_diffusion, then train_candidate",
        )

    # ------------------------------------------------------------------ draft actions

    def _resolve_reaction(self, session: DiscoverySession, reaction: str) -> str:
        if reaction == NeuralReaction.name:
            return reaction
        try:
            return resolve_reaction_name(session.aliases.real(reaction))
        except ValueError as exc:
            names = ", ".join(
                sorted(session.aliases.show(n) for n in REACTION_MODELS) + [NeuralReaction.name]
            )
            raise DiscoveryError(
                f"unknown reaction {reaction!r}; this session's reactions: {names}"
            ) from exc

    @staticmethod
    def _resolve_diffusion(template: str, hyperparameters: Mapping[str, Any] | None) -> dict:
        try:
            return diffusion_catalog.resolve_hyperparameters(template, dict(hyperparameters or {}))
        except DiffusionSpecError as exc:
            raise DiscoveryError(f"{exc} (see list_catalogs for the ranges)") from exc

    def _reference(self, session: DiscoverySession, draft: Draft) -> CandidateSpec | None:
        """The spec missing draft parts come from: the parent, else the latest candidate."""
        reference_id = draft.parent_id or session.last_candidate_id
        if reference_id is None:
            return None
        return self._spec_of(self._candidate(reference_id))

    def _complete_spec(self, session: DiscoverySession, draft: Draft) -> CandidateSpec:
        """The draft as a full spec (missing parts from the reference); raises if incomplete."""
        if draft.empty:
            raise DiscoveryError(
                "nothing to train: build a candidate first with select_reaction and "
                "select_diffusion (or refine_diffusion / modify_diffusion / simplify_diffusion)"
            )
        reference = self._reference(session, draft)
        parent_id = draft.parent_id
        if reference is None and (draft.reaction is None or draft.diffusion is None):
            missing = "select_reaction" if draft.reaction is None else "select_diffusion"
            raise DiscoveryError(
                f"the draft is incomplete and the session has no earlier candidate to take the "
                f"missing part from: call {missing} first"
            )
        if (
            reference is not None
            and parent_id is None
            and (draft.reaction is None or draft.diffusion is None)
        ):
            parent_id = session.last_candidate_id
        if draft.reaction is not None:
            reaction = draft.reaction
            reaction_hp = dict(draft.reaction_hyperparameters)
            reaction_parameters: dict[str, float] = {}
        else:
            assert reference is not None
            reaction, reaction_hp = reference.reaction, dict(reference.reaction_hyperparameters)
            reaction_parameters = dict(reference.reaction_parameters)
        if draft.diffusion is not None:
            template, diffusion_hp = draft.diffusion, dict(draft.diffusion_hyperparameters)
            source = draft.diffusion_source
        else:
            assert reference is not None
            template = reference.diffusion
            diffusion_hp = dict(reference.diffusion_hyperparameters)
            source = reference.diffusion_source
        return CandidateSpec(
            reaction=reaction,
            reaction_parameters=reaction_parameters,
            reaction_hyperparameters=reaction_hp,
            diffusion=template,
            diffusion_hyperparameters=diffusion_hp,
            diffusion_source=source,
            parent_id=parent_id,
            operation=draft.operation,
            seed=session.seed,
        )

    async def _parameter_count(self, spec: CandidateSpec, session: DiscoverySession) -> int:
        """Trainable parameters of ``spec`` on the session's mesh; edited code is counted in a
        sandboxed worker, catalog code in a thread."""
        if spec.diffusion_source is not None:
            if not sandbox_available():
                raise DiscoveryError(_SANDBOX_MISSING)
            try:
                result = await self.pool.run(
                    Job("count", spec.model_dump_json(), str(session.dataset_path))
                )
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

    async def _draft_result(self, session: DiscoverySession, message: str) -> DraftResult:
        draft = session.draft
        count: int | None = None
        if draft.diffusion_source is None:
            try:
                spec = self._complete_spec(session, draft)
                if spec.diffusion_source is None:
                    count = await self._parameter_count(spec, session)
            except DiscoveryError:
                count = None
        return DraftResult(
            session_id=session.session_id,
            draft=self._draft_view(session, draft, count),
            budget_left=session.budget_left,
            message=message,
        )

    @staticmethod
    def _draft_view(session: DiscoverySession, draft: Draft, count: int | None) -> DraftView:
        return DraftView(
            reaction=None if draft.reaction is None else session.aliases.show(draft.reaction),
            reaction_hyperparameters=draft.reaction_hyperparameters,
            diffusion=draft.diffusion,
            diffusion_hyperparameters=draft.diffusion_hyperparameters,
            edited_source=draft.diffusion_source is not None,
            parent_id=draft.parent_id,
            operation=draft.operation,
            parameter_count=count,
        )

    def _record_step(self, session: DiscoverySession, action: dict[str, Any], text: str) -> None:
        self.archive.record_step(session.session_id, None, action, session.aliases.mask(text))

    async def record_step(
        self, session_id: str, thought: str, action: Mapping[str, Any], observation: str
    ) -> StepRecorded:
        """Store an agent's reasoning step (thought, action, observation) in the archive."""
        session = await self.session(session_id)
        step = self.archive.record_step(
            session.session_id,
            session.aliases.mask(thought),
            {"source": "agent", **dict(action)},
            session.aliases.mask(observation),
        )
        return StepRecorded(session_id=session.session_id, step=step)

    def weights(self, candidate_id: str) -> bytes:
        """The trained state dict (``torch.save`` bytes) of a candidate."""
        self._candidate(candidate_id)
        data = self.archive.get_weights(candidate_id)
        if data is None:
            raise DiscoveryError(f"{candidate_id} has no weights (not trained successfully)")
        return data

    def _draft_diffusion(
        self,
        session: DiscoverySession,
        action: dict[str, Any],
        note: str,
        *,
        diffusion: str,
        hyperparameters: dict[str, Any],
        source: str | None,
        parent_id: str | None,
        operation: str,
    ) -> None:
        """Set the draft's diffusion part and archive the action as a step."""
        session.draft = replace(
            session.draft,
            diffusion=diffusion,
            diffusion_hyperparameters=hyperparameters,
            diffusion_source=source,
            parent_id=parent_id,
            operation=operation,
        )
        self._record_step(session, action, note)

    async def select_reaction(
        self, session_id: str, reaction: str, hyperparameters: Mapping[str, int] | None = None
    ) -> DraftResult:
        """Set the draft's reaction model."""
        session = await self.session(session_id)
        real = self._resolve_reaction(session, reaction)
        hp = dict(hyperparameters or {})
        if hp and real != NeuralReaction.name:
            raise DiscoveryError(
                f"reaction {reaction!r} takes no hyper-parameters (only 'neural' does: "
                f"{', '.join(NEURAL_HYPERPARAMETERS)}); pass hyperparameters={{}}"
            )
        if real == NeuralReaction.name:
            unknown = sorted(set(hp) - set(NEURAL_HYPERPARAMETERS))
            if unknown:
                raise DiscoveryError(
                    f"unknown hyper-parameter(s) {unknown} for 'neural'; allowed: "
                    f"{', '.join(NEURAL_HYPERPARAMETERS)}"
                )
            try:
                NeuralReaction(**hp)
            except (ValueError, TypeError) as exc:
                raise DiscoveryError(f"invalid hyper-parameters for 'neural': {exc}") from exc
        session.draft = replace(session.draft, reaction=real, reaction_hyperparameters=hp)
        self._record_step(
            session,
            {"tool": "select_reaction", "reaction": real, "hyperparameters": hp},
            f"draft reaction {real}",
        )
        return await self._draft_result(
            session,
            f"reaction {session.aliases.show(real)} selected; "
            + (
                "select a diffusion next"
                if session.draft.diffusion is None
                else "call train_candidate to train the draft"
            ),
        )

    async def select_diffusion(
        self, session_id: str, template: str, hyperparameters: Mapping[str, Any] | None = None
    ) -> DraftResult:
        """Set the draft's diffusion to a catalog template (operation ``select``)."""
        session = await self.session(session_id)
        resolved = self._resolve_diffusion(template, hyperparameters)
        self._draft_diffusion(
            session,
            {"tool": "select_diffusion", "template": template, "hyperparameters": resolved},
            f"draft diffusion {template} {resolved}",
            diffusion=template,
            hyperparameters=resolved,
            source=None,
            parent_id=None,
            operation="select",
        )
        return await self._draft_result(
            session,
            f"diffusion {template} selected; "
            + (
                "call train_candidate"
                if session.draft.reaction is not None or session.last_candidate_id
                else "select a reaction next"
            ),
        )

    async def refine_diffusion(
        self, session_id: str, candidate_id: str, hyperparameters: Mapping[str, Any]
    ) -> DraftResult:
        """Draft = the candidate with changed diffusion hyper-parameters (operation ``refine``)."""
        session = await self.session(session_id)
        parent = self._trained_parent(candidate_id, session)
        spec = self._spec_of(parent)
        if not hyperparameters:
            raise DiscoveryError(
                "refine_diffusion needs at least one hyper-parameter to change; the candidate "
                f"has {spec.diffusion_hyperparameters}"
            )
        merged = {**spec.diffusion_hyperparameters, **dict(hyperparameters)}
        resolved = self._resolve_diffusion(spec.diffusion, merged)
        current = self._resolve_diffusion(spec.diffusion, spec.diffusion_hyperparameters)
        if not _hp_differs(resolved, current):
            raise DiscoveryError(
                f"refine_diffusion changes nothing: {candidate_id} already has {resolved}; "
                "pass a different value"
            )
        self._draft_diffusion(
            session,
            {"tool": "refine_diffusion", "candidate_id": candidate_id, "hyperparameters": resolved},
            f"draft refines {candidate_id}: {spec.diffusion} {resolved}",
            diffusion=spec.diffusion,
            hyperparameters=resolved,
            source=spec.diffusion_source,
            parent_id=candidate_id,
            operation="refine",
        )
        return await self._draft_result(
            session, f"refined {spec.diffusion} of {candidate_id}; call train_candidate"
        )

    async def modify_diffusion(
        self,
        session_id: str,
        source: str,
        candidate_id: str | None = None,
        template: str | None = None,
    ) -> DraftResult:
        """Draft = edited code of a candidate's or a template's diffusion (operation
        ``modify``), after the sandbox accepted it; a refusal is archived as ``refused``."""
        session = await self.session(session_id)
        if (candidate_id is None) == (template is None):
            raise DiscoveryError(
                "modify_diffusion edits one thing: pass either candidate_id (edit that "
                "candidate's diffusion code) or template (edit a catalog template), not both"
            )
        if candidate_id is not None:
            parent_spec = self._spec_of(self._trained_parent(candidate_id, session))
            base, hp = parent_spec.diffusion, dict(parent_spec.diffusion_hyperparameters)
            reaction = session.draft.reaction or parent_spec.reaction
        else:
            assert template is not None
            hp = self._resolve_diffusion(template, None)
            base = template
            reaction = session.draft.reaction
        if not sandbox_available():
            raise DiscoveryError(_SANDBOX_MISSING)
        from leads_engine.diffusion_trial import validate_diffusion_source

        report = await anyio.to_thread.run_sync(validate_diffusion_source, source)
        if not report.accepted:
            # not validated: a refused edit of a template may have no reaction drafted yet
            spec = CandidateSpec.model_construct(
                reaction=reaction,
                diffusion=base,
                diffusion_hyperparameters=hp,
                diffusion_source=source,
                parent_id=candidate_id,
                operation="modify",
                seed=session.seed,
            )
            refused_id = self.archive.record_refusal(session.session_id, spec, report.message)
            self._record_step(
                session,
                {"tool": "modify_diffusion", "candidate_id": candidate_id, "template": template},
                f"refused ({refused_id}): {report.message}",
            )
            raise DiscoveryError(
                f"the edited code was refused (archived as {refused_id}, no budget used): "
                f"{report.message}\nFix the code and call modify_diffusion again."
            )
        self._draft_diffusion(
            session,
            {"tool": "modify_diffusion", "candidate_id": candidate_id, "template": template},
            f"draft modifies {candidate_id or template}: accepted",
            diffusion=base,
            hyperparameters=hp,
            source=source,
            parent_id=candidate_id,
            operation="modify",
        )
        return await self._draft_result(
            session, "the edited code passed the sandbox checks; call train_candidate"
        )

    async def simplify_diffusion(
        self,
        session_id: str,
        candidate_id: str,
        template: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
    ) -> DraftResult:
        """Draft = a variant of the candidate with strictly fewer trainable parameters
        (another template, or the same template with smaller hyper-parameters)."""
        session = await self.session(session_id)
        parent = self._trained_parent(candidate_id, session)
        parent_spec = self._spec_of(parent)
        if template is None and not hyperparameters:
            raise DiscoveryError(
                "simplify_diffusion needs a simpler template or smaller hyper-parameters"
            )
        if template is None or template == parent_spec.diffusion:
            base = parent_spec.diffusion
            merged = {**parent_spec.diffusion_hyperparameters, **dict(hyperparameters or {})}
            source = parent_spec.diffusion_source
        else:
            base, merged, source = template, dict(hyperparameters or {}), None
        resolved = self._resolve_diffusion(base, merged)
        reaction = session.draft.reaction or parent_spec.reaction
        reaction_hp = (
            session.draft.reaction_hyperparameters
            if session.draft.reaction
            else parent_spec.reaction_hyperparameters
        )
        candidate = CandidateSpec(
            reaction=reaction,
            reaction_hyperparameters=reaction_hp,
            diffusion=base,
            diffusion_hyperparameters=resolved,
            diffusion_source=source,
            parent_id=candidate_id,
            operation="simplify",
            seed=session.seed,
        )
        count = await self._parameter_count(candidate, session)
        parent_count = parent.parameter_count
        if parent_count is None:
            parent_count = await self._parameter_count(parent_spec, session)
        if count >= parent_count:
            raise DiscoveryError(
                f"not a simplification: {base} {resolved} has {count} trainable parameters, "
                f"the parent {candidate_id} has {parent_count}; choose a template or "
                "hyper-parameters with fewer parameters"
            )
        self._draft_diffusion(
            session,
            {
                "tool": "simplify_diffusion",
                "candidate_id": candidate_id,
                "template": base,
                "hyperparameters": resolved,
            },
            f"draft simplifies {candidate_id}: {count} < {parent_count} parameters",
            diffusion=base,
            hyperparameters=resolved,
            source=source,
            parent_id=candidate_id,
            operation="simplify",
        )
        return DraftResult(
            session_id=session.session_id,
            draft=self._draft_view(session, session.draft, count),
            budget_left=session.budget_left,
            message=f"{count} parameters instead of {parent_count}; call train_candidate",
        )

    # ------------------------------------------------------------------ training

    async def train_candidate(
        self,
        session_id: str,
        epochs: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> TrainingResult:
        """Train the draft (one unit of budget); the draft is cleared."""
        session = await self.session(session_id)
        if session.steps_used >= session.budget:
            raise DiscoveryError(
                f"search budget exhausted ({session.steps_used} of {session.budget} candidates "
                "trained); finetune_candidate and evaluate_candidate remain available"
            )
        spec = self._complete_spec(session, session.draft)
        if spec.diffusion_source is not None and not sandbox_available():
            raise DiscoveryError(_SANDBOX_MISSING)
        session.draft = Draft()
        session.steps_used += 1
        return await self._train(session, spec, epochs or session.epochs, None, progress)

    async def finetune_candidate(
        self,
        session_id: str,
        candidate_id: str,
        epochs: int = 10,
        progress: ProgressCallback | None = None,
    ) -> TrainingResult:
        """Continue training a candidate from its stored weights (no budget used)."""
        session = await self.session(session_id)
        parent = self._candidate(candidate_id, session)
        weights = self.archive.get_weights(candidate_id)
        if weights is None:
            raise DiscoveryError(
                f"candidate {candidate_id!r} has no weights (status {parent.status}); "
                "fine-tune a candidate whose training finished"
            )
        spec = self._spec_of(parent).model_copy(
            update={"parent_id": candidate_id, "operation": "finetune"}
        )
        return await self._train(session, spec, epochs, weights, progress)

    async def _train(
        self,
        session: DiscoverySession,
        spec: CandidateSpec,
        epochs: int,
        weights: bytes | None,
        progress: ProgressCallback | None,
    ) -> TrainingResult:
        candidate_id = self.archive.begin_candidate(session.session_id, spec)
        session.last_candidate_id = candidate_id

        async def on_epoch(event: dict[str, Any]) -> None:
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

        job = Job(
            "fit",
            spec.model_dump_json(),
            str(session.dataset_path),
            epochs=epochs,
            batch_size=session.batch_size,
            initial_weights=weights,
            compile=self.compile_training,
        )
        try:
            payload = await self.pool.run(job, on_epoch)
        except WorkerError as exc:
            error = str(exc)
            self.archive.finish_candidate(candidate_id, "failed", error=error)
            return self._training_result(session, candidate_id, spec, None, error)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                self.archive.finish_candidate(
                    candidate_id, "cancelled", error="cancelled by the client or the server"
                )
            raise
        except Exception as exc:
            self.archive.finish_candidate(
                candidate_id, "failed", error=f"server error: {type(exc).__name__}: {exc}"
            )
            raise
        summary = payload["summary"]
        train = summary["train_losses"]
        best = summary["best_epoch"]
        self.archive.finish_candidate(
            candidate_id,
            summary["status"],
            train_loss=train[best - 1] if best else (train[-1] if train else None),
            val_loss=_opt_finite(summary["best_val_loss"]),
            best_epoch=best,
            parameter_count=summary["parameter_count"],
            wall_seconds=summary["wall_seconds"],
            metrics={
                "diagnosis": summary["diagnosis"],
                "failure": summary["failure"],
                "reaction_parameters": summary["reaction_parameters"],
                "epochs_requested": epochs,
            },
            diagnosis=summary["diagnosis"]["text"],
            error=None if summary["status"] == "ok" else json.dumps(summary["failure"]),
            weights=payload["weights"],
        )
        result = self._training_result(session, candidate_id, spec, summary, None)
        self._record_step(
            session,
            {"tool": spec.operation, "candidate_id": candidate_id, "spec": spec.model_dump()},
            f"{candidate_id}: {result.status}, {result.diagnosis}",
        )
        return result

    def _training_result(
        self,
        session: DiscoverySession,
        candidate_id: str,
        spec: CandidateSpec,
        summary: dict[str, Any] | None,
        error: str | None,
    ) -> TrainingResult:
        aliases = session.aliases
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
            reaction=aliases.show(spec.reaction),
            diffusion=spec.diffusion,
            train_losses=_finite(summary.get("train_losses", [])),
            val_losses=_finite(summary.get("val_losses", [])),
            best_val_loss=_opt_finite(summary.get("best_val_loss")),
            best_epoch=summary.get("best_epoch"),
            diagnosis=aliases.mask_text(diagnosis["text"]),
            verdict=diagnosis["verdict"],
            parameter_count=summary.get("parameter_count"),
            wall_seconds=float(summary.get("wall_seconds", 0.0)),
            reaction_parameters={
                k: _opt_finite(v) for k, v in summary.get("reaction_parameters", {}).items()
            },
            failure=summary.get("failure"),
            error=None if error is None else aliases.mask_text(error),
            budget_left=session.budget_left,
            steps_used=session.steps_used,
        )

    # ------------------------------------------------------------------ evaluation

    def figure_dir(self, session_id: str, candidate_id: str) -> Path:
        return leads_home() / "runs" / session_id / candidate_id

    async def evaluate_candidate(
        self, session_id: str, candidate_id: str, split: str = "test"
    ) -> EvaluationResult:
        """Test MSE and AT MAE of a trained candidate, its figures, and an archived record."""
        session = await self.session(session_id)
        candidate = self._candidate(candidate_id, session)
        weights = self.archive.get_weights(candidate_id)
        if weights is None:
            raise DiscoveryError(
                f"candidate {candidate_id!r} has no weights (status {candidate.status}); "
                "evaluate a candidate whose training finished"
            )
        if len(session.dataset.indices(split)) == 0:
            raise DiscoveryError(f"the data set has no {split!r} samples; choose another split")
        spec = self._spec_of(candidate)
        if spec.diffusion_source is not None and not sandbox_available():
            raise DiscoveryError(_SANDBOX_MISSING)
        job = Job(
            "evaluate",
            spec.model_dump_json(),
            str(session.dataset_path),
            split=split,
            batch_size=session.batch_size,
            initial_weights=weights,
            compile=self.compile_training,
        )
        try:
            payload = await self.pool.run(job)
        except WorkerError as exc:
            raise DiscoveryError(f"evaluation of {candidate_id} failed: {exc}") from exc
        summary = payload["summary"]
        folder = self.figure_dir(session.session_id, candidate_id)
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

        files = await anyio.to_thread.run_sync(plot)
        self.archive.record_evaluation(
            candidate_id, split, summary["mse"], _opt_finite(summary["at_mae_ms"]), summary
        )
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
        candidate = self._candidate(candidate_id)
        path = self.figure_dir(candidate.session_id, candidate_id) / name
        if not path.exists():
            raise DiscoveryError(f"no {name} for {candidate_id} yet: call evaluate_candidate first")
        return path.read_bytes()

    # ------------------------------------------------------------------ archive reads

    async def query_archive(
        self, sql: str, max_rows: int = 200, session_id: str | None = None
    ) -> QueryResult:
        """One read-only SELECT; reaction names masked with the session's aliases (the given
        session, else the most recent anonymised one of this server)."""
        if session_id is not None:
            aliases = (await self.session(session_id)).aliases
        else:
            latest = self.store.latest_anonymised()
            aliases = latest.aliases if latest else ReactionAliases.disabled()
        try:
            result = await anyio.to_thread.run_sync(
                self.archive.query, aliases.unmask_sql(sql), max_rows, QUERY_TIMEOUT_S
            )
        except ArchiveError as exc:
            raise DiscoveryError(aliases.mask_text(str(exc))) from exc
        return QueryResult(
            columns=aliases.mask(result.columns),
            rows=aliases.mask(result.rows),
            row_count=result.row_count,
            truncated=result.truncated,
        )

    async def get_candidate(self, candidate_id: str) -> CandidateRecord:
        """An archived candidate, names masked with its session's aliases."""
        candidate = self._candidate(candidate_id)
        aliases = self._aliases_for_session_id(candidate.session_id)
        return CandidateRecord.model_validate(aliases.mask(candidate.as_dict()))

    async def session_summary(self, session_id: str) -> SessionSummary:
        """Configuration, budget, draft and candidates of a session."""
        session = await self.session(session_id)
        row = self.archive.get_session(session_id)
        best = self.archive.best_candidate(session_id)
        candidates = [
            {
                key: getattr(c, key)
                for key in (
                    "candidate_id",
                    "status",
                    "operation",
                    "parent_id",
                    "reaction",
                    "diffusion",
                    "val_loss",
                    "parameter_count",
                )
            }
            for c in self.archive.list_candidates(session_id)
        ]
        return SessionSummary(
            session_id=session_id,
            dataset=session.dataset_name,
            dataset_path=str(session.dataset_path),
            status=row.status,
            budget=session.budget,
            steps_used=session.steps_used,
            budget_left=session.budget_left,
            epochs_per_candidate=session.epochs,
            seed=session.seed,
            anonymised=session.aliases.enabled,
            draft=None if session.draft.empty else self._draft_view(session, session.draft, None),
            best_candidate_id=None if best is None else best.candidate_id,
            candidates=session.aliases.mask(candidates),
        )


_SANDBOX_MISSING = (
    "sandbox unavailable: edited diffusion code needs leads_engine.sandbox, which this "
    "installation lacks, so it is never executed; use select_diffusion, refine_diffusion or "
    "simplify_diffusion instead"
)
