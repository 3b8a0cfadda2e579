"""The one exception of the archive."""

from __future__ import annotations


class ArchiveError(RuntimeError):
    """A refused or failed archive operation (unknown id, append-only violation, locked file,
    unsupported schema version, refused query, ...), with a message that says what to do."""
