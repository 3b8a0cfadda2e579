"""Session state: the drafts, the in-memory session store (the server's only mutable state),
starting a session and restoring one from the archive after a restart.

A session holds its data set, search budget, epochs per candidate, seed, the reaction-name
aliases (anonymisation) and the *draft*: the candidate the agent is assembling and that
``train_candidate`` trains. Archive access here: sessions, agent steps, and the truth files of
anonymised sessions (:mod:`leads_server.archive.truth`): an anonymised session's row holds its
data set's neutral handle and public summary, its truth file the data set's name, path, full
summary and the alias map.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
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

from .anonymise import ReactionAliases, dataset_handle, public_summary
from .archive import Archive, ArchiveError, SessionRow
from .archive.store import new_session_id
from .archive.truth import SessionTruth, TruthStore
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
    #: the hybrid reaction's residual (ResidualSpec fields), None: the catalog model alone
    reaction_residual: dict[str, Any] | None = None
    #: edited reaction code (modify_reaction) replacing the catalog model ``reaction``
    reaction_source: str | None = None
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
    """One search over one data set. ``dataset_name`` and ``dataset_path`` are the real ones
    (trusted code only); ``dataset_shown`` is what the agent sees (an anonymised session's neutral
    handle)."""

    session_id: str
    dataset_name: str
    dataset_shown: str
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

    @property
    def anonymised(self) -> bool:
        return self.aliases.enabled

    def draft_view(self, parameter_count: int | None) -> DraftView:
        """The draft as the agent sees it (reaction under the session's name)."""
        draft = self.draft
        return DraftView(
            reaction=None if draft.reaction is None else self.aliases.show(draft.reaction),
            reaction_hyperparameters=draft.reaction_hyperparameters,
            reaction_residual=draft.reaction_residual,
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
        self.truth = TruthStore(archive.path)

    def truth_of(self, row: SessionRow) -> SessionTruth:
        """The hidden truth of an anonymised session (a DiscoveryError when it is lost)."""
        try:
            return self.truth.read(row.session_id)
        except ArchiveError as exc:
            raise DiscoveryError(f"session {row.session_id!r} cannot be resumed: {exc}") from exc

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
        if row.anonymise:
            truth = self.truth_of(row)
            name, path, aliases = truth.dataset, Path(truth.dataset_path), truth.aliases
        else:
            name, path, aliases = row.dataset, Path(row.dataset_path or row.dataset), {}
        try:
            dataset = await anyio.to_thread.run_sync(self.store.dataset, path)
        except (DatasetError, OSError) as exc:
            shown = f"{row.dataset!r}" if row.anonymise else f"{path} ({exc})"
            raise DiscoveryError(
                f"session {session_id!r} cannot be resumed: its data set {shown} is "
                "unavailable; start a new session"
            ) from exc
        candidates = self.archive.list_candidates(session_id)
        shown_aliases = ReactionAliases(aliases)
        session = DiscoverySession(
            session_id=session_id,
            dataset_name=name,
            dataset_shown=row.dataset,
            dataset_path=path,
            dataset=dataset,
            budget=int(row.budget or 0),
            epochs=int(config.get("epochs", StartSession().epochs)),  # the tool's default
            seed=int(row.seed or 0),
            aliases=shown_aliases,
            batch_size=config.get("batch_size"),
            draft=self.load_draft(session_id, shown_aliases),
            steps_used=sum(
                c.operation in SEARCH_OPERATIONS and c.status not in ("refused", "cancelled")
                for c in candidates
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

    def save_draft(self, session: DiscoverySession) -> None:
        """Keep the session's draft in the archive (reaction under the session's name), so a
        new server process continues from it; an empty draft is forgotten."""
        draft = session.draft
        shown = None
        if not draft.empty or draft.diffusion_source is not None:
            shown = asdict(draft)
            if draft.reaction is not None:
                shown["reaction"] = session.aliases.show(draft.reaction)
        try:
            self.archive.save_draft(session.session_id, shown)
        except ArchiveError as exc:
            raise DiscoveryError(f"the draft could not be kept in the archive: {exc}") from exc

    def load_draft(self, session_id: str, aliases: ReactionAliases) -> Draft:
        """The draft a session kept in the archive (an empty one if none)."""
        shown = self.archive.load_draft(session_id)
        if not shown:
            return Draft()
        fields = {k: v for k, v in shown.items() if k in Draft.__dataclass_fields__}
        if fields.get("reaction") is not None:
            fields["reaction"] = aliases.real(fields["reaction"])
        return Draft(**fields)

    def row(self, session_id: str) -> SessionRow:
        """The archived session row (status, configuration)."""
        return self.archive.get_session(session_id)

    def record_step(self, session: DiscoverySession, action: Mapping[str, Any], text: str) -> None:
        """Archive a server action (a draft change, a training) as a step; the caller passes it
        as the session shows it (reaction aliases)."""
        self.archive.record_step(session.session_id, None, dict(action), text)

    def record_agent_step(
        self, session: DiscoverySession, thought: str, action: Mapping[str, Any], observation: str
    ) -> int:
        """Archive an agent's reasoning step as the agent wrote it (never rewritten with the
        aliases: a rewrite would tell which alias a real name has); its number."""
        return self.archive.record_step(
            session.session_id, thought, {"source": "agent", **dict(action)}, observation
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
        summary = data.summary()
        session_id = new_session_id()
        if request.anonymise:
            aliases = ReactionAliases.shuffled()
            shown = dataset_handle(session_id)
            truth = SessionTruth(
                session_id=session_id,
                dataset=dataset,
                dataset_path=str(path.resolve()),
                dataset_summary=summary,
                aliases=aliases.mapping,
            )
            try:
                self.truth.write(truth)
            except ArchiveError as exc:
                raise DiscoveryError(f"cannot start an anonymised session: {exc}") from exc
            summary = public_summary(summary, shown)
        else:
            aliases, shown = ReactionAliases.disabled(), dataset
        self.archive.create_session(
            dataset=shown,
            dataset_path=None if request.anonymise else str(path.resolve()),
            budget=request.budget,
            anonymise=request.anonymise,
            seed=request.seed,
            config={
                "epochs": request.epochs,
                "batch_size": request.batch_size,
                "dataset_summary": summary,
            },
            session_id=session_id,
        )
        self.store.add(
            DiscoverySession(
                session_id=session_id,
                dataset_name=dataset,
                dataset_shown=shown,
                dataset_path=path.resolve(),
                dataset=data,
                budget=request.budget,
                epochs=request.epochs,
                seed=request.seed,
                aliases=aliases,
                batch_size=request.batch_size,
            )
        )
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
