"""What the user is told when an archive file cannot be opened because it is damaged.

:meth:`~leads_server.archive.Archive.open` never deletes, truncates or recreates an existing
file: when DuckDB cannot read it (random bytes, a file cut short, a zero-length file, a file of
another format, a write-ahead log that fails its checksums), the open is refused with one
:class:`ArchiveError` line that names the file, says what is wrong and how to recover
(:func:`damaged_archive`). A write-ahead log left by a crash that is intact is replayed by
DuckDB (the crash recovery of :mod:`.store` then marks the candidates it left pending
``failed``); one whose last entry was cut short by the crash is replayed up to its last complete
entry, the way DuckDB treats a torn write.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from .errors import ArchiveError


def wal_path(path: Path) -> Path:
    """The write-ahead log DuckDB keeps next to an archive file."""
    return path.with_name(path.name + ".wal")


def recovery_advice(path: Path) -> str:
    """How to get going again without losing the damaged file."""
    wal = wal_path(path)
    move_wal = f" and mv {wal} {path}.broken.wal" if wal.exists() else ""
    return (
        f"nothing was changed: keep the file (a backup or DuckDB's own tools may still recover "
        f"it), move it aside (mv {path} {path}.broken{move_wal}) and start with a new archive "
        f"(leads-server --archive NEWPATH), or restore a backup to {path}"
    )


def _what_is_wrong(message: str, path: Path) -> str:
    lower = message.lower()
    if "wal" in lower:
        return f"has a damaged write-ahead log ({wal_path(path)})"
    if "not a valid duckdb database file" in lower:
        return "is not a DuckDB database (an empty file, random bytes or another format)"
    if "extension" in lower:
        return "is a database of another format, not a DuckDB file"
    if "could not read enough bytes" in lower or "truncat" in lower:
        return "is truncated (shorter than its own contents say)"
    return "is damaged or unreadable"


def damaged_archive(path: Path, exc: duckdb.Error) -> ArchiveError:
    """The one-line refusal to open a damaged archive file (see the module docstring)."""
    said = " ".join(str(exc).split()) or type(exc).__name__
    if len(said) > 300:
        said = said[:300] + "..."
    return ArchiveError(
        f"the archive {path} {_what_is_wrong(said, path)} (DuckDB said: {said}); "
        f"{recovery_advice(path)}"
    )
