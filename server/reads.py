"""Reads of the archive for the tools: candidates (and their specs), agent SQL queries, session
summaries and weights. An anonymised session's rows are already written under its aliases, so
reads return them as stored; only a spec about to be trained or evaluated is turned back to the
real reaction (:meth:`Reads.spec_of`), inside the server."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import anyio.to_thread

from leads_engine.spec import CandidateSpec

from .archive import Archive, ArchiveError, CandidateDetail, QueryRows
from .archive.query_scope import QueryScope
from .errors import DiscoveryError, checked_spec
from .inputs import GetCandidate, QueryArchive
from .models import CandidateRecord, QueryResult, SessionSummary
from .state import DiscoverySession, Sessions

SUMMARY_COLUMNS = (
    "candidate_id",
    "status",
    "operation",
    "parent_id",
    "reaction",
    "diffusion",
    "val_loss",
    "parameter_count",
)


@dataclass(frozen=True)
class Parent:
    """A trained candidate that a draft derives from."""

    candidate_id: str
    spec: CandidateSpec
    parameter_count: int | None


class Reads:
    """Archive reads for the tools; every unknown or foreign id is a DiscoveryError."""

    def __init__(self, archive: Archive, sessions: Sessions) -> None:
        self.archive = archive
        self.sessions = sessions

    def candidate(
        self, candidate_id: str, session: DiscoverySession | None = None
    ) -> CandidateDetail:
        """The archived candidate (of ``session`` when given)."""
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

    @staticmethod
    def spec_of(candidate: CandidateDetail, session: DiscoverySession) -> CandidateSpec:
        """The archived spec of a candidate of ``session`` with its real reaction, validated as
        it is loaded."""
        return checked_spec(session.aliases.real_fields(candidate.spec or {}))

    def trained_parent(self, candidate_id: str, session: DiscoverySession) -> Parent:
        """A candidate of ``session`` that finished training (a draft's parent)."""
        candidate = self.candidate(candidate_id, session)
        if candidate.status in ("refused", "pending"):
            raise DiscoveryError(
                f"candidate {candidate_id!r} is {candidate.status}: derive from a trained candidate"
            )
        return Parent(candidate_id, self.spec_of(candidate, session), candidate.parameter_count)

    def stored_weights(self, candidate_id: str) -> bytes | None:
        """The trained state dict (``torch.save`` bytes) of a candidate, if it has one."""
        return self.archive.get_weights(candidate_id)

    def weights(self, candidate_id: str) -> bytes:
        """The trained state dict of a candidate; a DiscoveryError when it has none."""
        self.candidate(candidate_id)
        data = self.stored_weights(candidate_id)
        if data is None:
            raise DiscoveryError(f"{candidate_id} has no weights (not trained successfully)")
        return data

    async def query_archive(self, request: QueryArchive) -> QueryResult:
        """One read-only SELECT within the archive's query limits (rows, bytes, time:
        :mod:`leads_server.archive.query_run`) over the rows of the given session, or without
        one of every non-anonymised session (:mod:`leads_server.archive.query_scope`)."""
        if request.session_id is not None and self.sessions.store.get(request.session_id) is None:
            try:
                self.sessions.row(request.session_id)
            except ArchiveError as exc:
                raise DiscoveryError(
                    f"unknown session {request.session_id!r}: pass a session_id that "
                    "start_session returned, or none to query the non-anonymised sessions"
                ) from exc
        scope = QueryScope(request.session_id)

        def run() -> QueryRows:
            return self.archive.query(request.sql, request.max_rows, scope=scope)

        try:
            result = await anyio.to_thread.run_sync(run)
        except ArchiveError as exc:
            raise DiscoveryError(str(exc)) from exc
        return QueryResult(
            columns=result.columns,
            rows=result.rows,
            row_count=result.row_count,
            truncated=result.truncated,
            truncated_reason=result.truncated_reason,
            notice=result.notice,
        )

    async def get_candidate(self, request: GetCandidate) -> CandidateRecord:
        """An archived candidate as its session wrote it (an anonymised one under its
        aliases)."""
        candidate = self.candidate(request.candidate_id)
        return CandidateRecord.model_validate(candidate.as_dict())

    async def session_summary(self, session_id: str) -> SessionSummary:
        """Configuration, budget, draft and candidates of a session."""
        session = await self.sessions.get(session_id)
        row = self.sessions.row(session_id)
        best = self.archive.best_candidate(session_id)
        candidates = [
            {key: getattr(c, key) for key in SUMMARY_COLUMNS}
            for c in self.archive.list_candidates(session_id)
        ]
        return SessionSummary(
            session_id=session_id,
            dataset=session.dataset_shown,
            dataset_path=None if session.anonymised else str(session.dataset_path),
            status=row.status,
            budget=session.budget,
            steps_used=session.steps_used,
            budget_left=session.budget_left,
            epochs_per_candidate=session.epochs,
            seed=session.seed,
            anonymised=session.aliases.enabled,
            draft=None if session.draft.empty else session.draft_view(None),
            best_candidate_id=None if best is None else best.candidate_id,
            candidates=candidates,
        )
