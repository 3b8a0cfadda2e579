"""The LEADS archive: one DuckDB file per project with every session, candidate, epoch, agent
step and evaluation (:mod:`.store`), its tables, statuses and schema version (:mod:`.schema`),
typed rows (:mod:`.rows`), the agent's read-only SQL behind two defences (the statement check,
:mod:`.query_guard`; the execution layer and the result's limits, :mod:`.query_run`) and the
refusal to open a damaged file (:mod:`.recovery`)."""

from .errors import ArchiveError
from .rows import (
    CandidateDetail,
    CandidateRow,
    EpochRow,
    EvaluationRow,
    QueryRows,
    SessionRow,
)
from .schema import (
    CANDIDATE_STATUSES,
    FINAL_STATUSES,
    INTERRUPTED_ERROR,
    SCHEMA_VERSION,
    SESSION_STATUSES,
    TABLES,
)
from .store import Archive, default_archive_path

__all__ = [
    "CANDIDATE_STATUSES",
    "FINAL_STATUSES",
    "INTERRUPTED_ERROR",
    "SCHEMA_VERSION",
    "SESSION_STATUSES",
    "TABLES",
    "Archive",
    "ArchiveError",
    "CandidateDetail",
    "CandidateRow",
    "EpochRow",
    "EvaluationRow",
    "QueryRows",
    "SessionRow",
    "default_archive_path",
]
