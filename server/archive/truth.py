"""What an anonymised session hides from its agent, kept where the agent cannot reach it.

An anonymised session's rows in the archive (:mod:`.store`) are written with the session's
aliases (``reaction_A``, ...) and a neutral data-set handle, so the agent's SQL, whatever string
function it uses, finds no real reaction name and nothing about the data set's ground truth: they
are not in the file. They are here instead, one JSON file per session in a folder next to the
archive (``archive.duckdb`` -> ``archive.duckdb.truth/<session_id>.json``):

* ``dataset`` and ``dataset_path``: the data set's name and file as the session was started with;
* ``dataset_summary``: the data set's full summary (its reaction, generator seed and noise);
* ``aliases``: the session's alias of every catalog reaction (real name -> alias).

Only trusted code reads them: the server itself (to train the real reaction behind an alias, or
to reopen the data set of a resumed session), ``leads-server reveal`` (the user's report and the
bench call it) and the archive's migration. The agent's query connection cannot: it runs on a
DuckDB instance whose file access is off, behind a statement check that refuses every
file-reading function (:mod:`.query_run`, :mod:`.query_guard`), and no tool or resource serves
these files.

A file is written once, before the session's row (atomically: a temporary file renamed into
place, readable by its owner only), so a session row never exists without its truth; a truth
file without a row (a crash in between) is harmless.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ArchiveError

#: The suffix of the truth folder next to an archive file.
TRUTH_SUFFIX = ".truth"


@dataclass(frozen=True)
class SessionTruth:
    """The hidden side of one anonymised session."""

    session_id: str
    dataset: str
    dataset_path: str
    dataset_summary: dict[str, Any] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    @property
    def true_reaction(self) -> str | None:
        """The reaction that generated the data set, when its summary says."""
        reaction = self.dataset_summary.get("reaction")
        return reaction if isinstance(reaction, str) else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def truth_folder(archive_path: str | os.PathLike[str]) -> Path:
    """The truth folder of the archive at ``archive_path``."""
    path = Path(archive_path).expanduser().resolve()
    return path.with_name(path.name + TRUTH_SUFFIX)


class TruthStore:
    """The truth files of one archive (see the module docstring)."""

    def __init__(self, archive_path: str | os.PathLike[str]) -> None:
        self.folder = truth_folder(archive_path)

    def _file(self, session_id: str) -> Path:
        if not session_id or any(ch in session_id for ch in "/\\.\0"):
            raise ArchiveError(f"not a session id: {session_id!r}")
        return self.folder / f"{session_id}.json"

    def write(self, truth: SessionTruth) -> None:
        """Store ``truth`` (atomically, owner-readable only); refuses to replace another one."""
        path = self._file(truth.session_id)
        text = json.dumps(truth.as_dict(), indent=2, sort_keys=True, default=str)
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if path.exists() and self.read(truth.session_id) != truth:
                raise ArchiveError(f"session {truth.session_id!r} already has other hidden truth")
            temporary = path.with_suffix(f".tmp{os.getpid()}")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            raise ArchiveError(
                f"cannot write the hidden truth of session {truth.session_id!r} to {path}: {exc}"
            ) from exc

    def read(self, session_id: str) -> SessionTruth:
        """The truth of an anonymised session; :class:`ArchiveError` when it is missing or
        unreadable (the message names the file)."""
        path = self._file(session_id)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return SessionTruth(
                session_id=str(data["session_id"]),
                dataset=str(data["dataset"]),
                dataset_path=str(data["dataset_path"]),
                dataset_summary=dict(data.get("dataset_summary") or {}),
                aliases={str(k): str(v) for k, v in (data.get("aliases") or {}).items()},
            )
        except FileNotFoundError as exc:
            raise ArchiveError(
                f"the hidden truth of anonymised session {session_id!r} is missing ({path}); "
                "it was deleted or the archive was moved without its "
                f"'{self.folder.name}' folder: move that folder next to the archive again, or "
                "start a new session"
            ) from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArchiveError(
                f"the hidden truth of session {session_id!r} ({path}) cannot be read: {exc}"
            ) from exc

    def sessions(self) -> list[str]:
        """The ids of the sessions with a truth file."""
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("s-*.json"))
