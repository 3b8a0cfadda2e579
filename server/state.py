"""Session state: the drafts, the in-memory session store (the server's only mutable state),
starting a session and restoring one from the archive after a restart.

A session holds its data set, search budget, epochs per candidate, seed, the reaction-name
aliases (anonymisation) and the *draft*: the candidate the agent is assembling and that
``train_candidate`` trains. Archive access here: sessions and agent steps.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

from leads_engine.dataset import (
    DatasetError,
    EPDataset,
    datasets_dir,
    load_dataset,
    resolve_dataset_path,
)
from leads_engine.reactions import ALIASES, REACTION_MODELS
from leads_engine.spec import SEARCH_OPERATIONS, Operation

from .anonymise import ReactionAliases
from .archive import Archive, ArchiveError, SessionRow
from .catalog_view import reaction_names
from .errors import DiscoveryError
from .inputs import StartSession
from .models import DraftView, SessionStarted

ProgressCallback = Callable[[float, float | None, str], Awaitable[None]]


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

    def draft_view(self, parameter_count: int | None) -> DraftView:
        """The draft as the agent sees it (reaction under the session's name)."""
        draft = self.draft
        return DraftView(
            reaction=None if draft.reaction is None else self.aliases.show(draft.reaction),
            reaction_hyperparameters=draft.reaction_hyperparameters,
            diffusion=draft.diffusion,
            diffusion_hyperparameters=draft.diffusion_hyperparameters,
            edited_source=draft.diffusion_source is not None,
            parent_id=draft.parent_id,
            operation=draft.operation,
            parameter_count=parameter_count,
        )


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


class Sessions:
    """The sessions of one archive: started here, or restored from the archive on first use."""

    def __init__(self, archive: Archive, store: SessionStore) -> None:
        self.archive = archive
        self.store = store

    async def get(self, session_id: str) -> DiscoverySession:
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
            epochs=int(config.get("epochs", StartSession().epochs)),  # the tool's default
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

    async def aliases(self, session_id: str | None) -> ReactionAliases:
        """The aliases of a session (restoring it), or none without a session."""
        return (await self.get(session_id)).aliases if session_id else ReactionAliases.disabled()

    def aliases_of_archived(self, session_id: str) -> ReactionAliases:
        """The aliases of a live or archived session without restoring it (none if unknown)."""
        session = self.store.get(session_id)
        if session is not None:
            return session.aliases
        try:
            config = self.archive.get_session(session_id).config or {}
        except ArchiveError:
            return ReactionAliases.disabled()
        return ReactionAliases(config.get("aliases") or {})

    def row(self, session_id: str) -> SessionRow:
        """The archived session row (status, configuration)."""
        return self.archive.get_session(session_id)

    def record_step(self, session: DiscoverySession, action: Mapping[str, Any], text: str) -> None:
        """Archive a server action (a draft change, a training) as a step, names masked."""
        self.archive.record_step(session.session_id, None, dict(action), session.aliases.mask(text))

    def record_agent_step(
        self, session: DiscoverySession, thought: str, action: Mapping[str, Any], observation: str
    ) -> int:
        """Archive an agent's reasoning step; its number within the session."""
        return self.archive.record_step(
            session.session_id,
            session.aliases.mask(thought),
            {"source": "agent", **dict(action)},
            session.aliases.mask(observation),
        )

    # ------------------------------------------------------------------ starting

    async def start(
        self, request: StartSession, progress: ProgressCallback | None = None
    ) -> SessionStarted:
        """Open a session on a data set (generating a missing benchmark set first)."""
        dataset = request.dataset
        path, generated = await self._resolve_dataset(dataset, progress)
        try:
            data = await anyio.to_thread.run_sync(self.store.dataset, path)
        except DatasetError as exc:
            raise DiscoveryError(f"cannot load data set {dataset!r}: {exc}") from exc
        aliases = (
            ReactionAliases.shuffled(request.seed)
            if request.anonymise
            else ReactionAliases.disabled()
        )
        summary = data.summary()
        session_id = self.archive.create_session(
            dataset=dataset,
            dataset_path=str(path.resolve()),
            budget=request.budget,
            anonymise=request.anonymise,
            seed=request.seed,
            config={
                "epochs": request.epochs,
                "batch_size": request.batch_size,
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
                budget=request.budget,
                epochs=request.epochs,
                seed=request.seed,
                aliases=aliases,
                batch_size=request.batch_size,
            )
        )
        if request.anonymise:
            summary["reaction"] = "hidden (anonymised session)"
        return SessionStarted(
            session_id=session_id,
            dataset=summary,
            dataset_generated=generated,
            budget=request.budget,
            budget_left=request.budget,
            epochs_per_candidate=request.epochs,
            seed=request.seed,
            anonymised=request.anonymise,
            reactions=reaction_names(aliases),
            next_step="call list_catalogs with this session_id, then select_reaction and "
            "select_diffusion, then train_candidate",
        )

    async def _resolve_dataset(
        self, dataset: str, progress: ProgressCallback | None
    ) -> tuple[Path, bool]:
        """The data set's path, and whether the benchmark set was generated now."""
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
