"""A damaged archive file on open: a one-line refusal that names the file, says what is wrong and
how to recover, and leaves every byte of it (and of its write-ahead log) as it was."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from conftest import run_python
from leads_server.archive import INTERRUPTED_ERROR, Archive, ArchiveError


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file of the folder and a hash of its bytes."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
    }


def a_good_archive(path: Path) -> bytes:
    """A closed archive with one session; its bytes."""
    with Archive.open(path) as archive:
        archive.create_session("tiny", None, 3, False, 0, {})
    return path.read_bytes()


def another_duckdb(path: Path) -> None:
    with duckdb.connect(str(path)) as connection:
        connection.execute("CREATE TABLE invoices AS SELECT range AS id FROM range(3)")


FAULTS: dict[str, tuple[Callable[[Path, bytes], None], str]] = {
    "random bytes": (
        lambda path, good: path.write_bytes(os.urandom(len(good))),
        "is not a DuckDB database",
    ),
    "cut in half": (
        lambda path, good: path.write_bytes(good[: len(good) // 2]),
        "is truncated",
    ),
    "header only": (lambda path, good: path.write_bytes(good[:4096]), "is truncated"),
    "zero length": (lambda path, good: path.write_bytes(b""), "is not a DuckDB database"),
    "text file": (
        lambda path, good: path.write_text("session,candidate\n" * 100),
        "is not a DuckDB database",
    ),
    "sqlite file": (
        lambda path, good: path.write_bytes(b"SQLite format 3\x00" + bytes(4080)),
        "is a database of another format",
    ),
    "another DuckDB database": (
        lambda path, good: (path.unlink(), another_duckdb(path)),
        "is a DuckDB database of something else",
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_damaged_file_is_refused_and_kept(tmp_path: Path, fault: str):
    path = tmp_path / "archive.duckdb"
    good = a_good_archive(path)
    damage, what = FAULTS[fault]
    damage(path, good)
    before = fingerprint(tmp_path)
    for _ in range(2):  # refused again, the same way
        with pytest.raises(ArchiveError) as raised:
            Archive.open(path)
        message = str(raised.value)
        assert "\n" not in message and str(path) in message and what in message, message
        assert fingerprint(tmp_path) == before
    if "DuckDB database of something else" not in what:
        assert "DuckDB said:" in message
        assert f"mv {path} {path}.broken" in message and "--archive NEWPATH" in message
    # Moved aside as told, the damaged file stays as it was and a new archive starts.
    path.rename(tmp_path / "archive.duckdb.broken")
    with Archive.open(path) as archive:
        assert archive.list_sessions() == []
    assert fingerprint(tmp_path)["archive.duckdb.broken"] == before["archive.duckdb"]


def killed_mid_training(path: Path) -> list[str]:
    """An archive whose process was killed (SIGKILL) while a candidate trained, leaving its
    write-ahead log; the ids of the session, the finished and the interrupted candidate."""
    result = run_python(f"""
        import os, signal
        from leads_engine.spec import CandidateSpec
        from leads_server.archive import Archive
        archive = Archive.open({str(path)!r})
        session = archive.create_session("tiny", None, 5, False, 0, {{}})
        spec = CandidateSpec(reaction="fitzhugh_nagumo", diffusion="gcn", operation="baseline")
        done = archive.begin_candidate(session, spec)
        archive.record_epoch(done, 0, 1.0, 1.0, 0.1)
        archive.finish_candidate(done, "ok", val_loss=1.0, weights=b"w")
        flight = archive.begin_candidate(session, spec.model_copy(update={{"seed": 1}}))
        print(session, done, flight, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert (path.parent / (path.name + ".wal")).exists()
    return result.stdout.split()


def test_a_crash_log_is_replayed(tmp_path: Path):
    path = tmp_path / "archive.duckdb"
    session, done, flight = killed_mid_training(path)
    with Archive.open(path) as archive:
        assert archive.recovered_candidates == [flight]
        assert archive.get_candidate(done).status == "ok"
        assert archive.get_weights(done) == b"w"
        interrupted = archive.get_candidate(flight)
        assert interrupted.status == "failed" and interrupted.error == INTERRUPTED_ERROR
        assert archive.get_session(session).status == "stopped"


@pytest.mark.parametrize("loss", ["deleted", "torn"])
def test_finished_results_do_not_depend_on_the_crash_log(tmp_path: Path, loss: str):
    """A finished candidate is checkpointed into the database file, so a crash log that is lost
    or cut short (a torn write) takes only work in flight with it."""
    path = tmp_path / "archive.duckdb"
    session, done, flight = killed_mid_training(path)
    wal = tmp_path / "archive.duckdb.wal"
    if loss == "deleted":
        wal.unlink()
    else:
        data = wal.read_bytes()
        wal.write_bytes(data[: len(data) // 2])
    with Archive.open(path) as archive:
        finished = archive.get_candidate(done)
        assert finished.status == "ok" and finished.val_loss == 1.0
        assert archive.get_weights(done) == b"w" and len(finished.epochs) == 1
        assert archive.get_session(session).budget == 5
        assert [c.status for c in archive.list_candidates(session) if c.candidate_id != done] in (
            [],
            ["failed"],
        )


def test_a_damaged_crash_log_is_refused_and_kept(tmp_path: Path):
    path = tmp_path / "archive.duckdb"
    killed_mid_training(path)
    wal = tmp_path / "archive.duckdb.wal"
    data = bytearray(wal.read_bytes())
    middle = len(data) // 3
    data[middle : middle + 64] = bytes(byte ^ 0xFF for byte in data[middle : middle + 64])
    wal.write_bytes(bytes(data))
    before = fingerprint(tmp_path)
    with pytest.raises(ArchiveError) as raised:
        Archive.open(path)
    message = str(raised.value)
    assert "\n" not in message and str(path) in message
    assert f"has a damaged write-ahead log ({wal})" in message
    assert f"mv {path} {path}.broken and mv {wal} {path}.broken.wal" in message
    assert fingerprint(tmp_path) == before


def test_the_server_start_up_says_it_in_one_line(tmp_path: Path):
    path = tmp_path / "archive.duckdb"
    path.write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "-m", "leads_server.cli", "--archive", str(path), "--no-compile"],
        capture_output=True,
        text=True,
        env={**os.environ, "LEADS_HOME": str(tmp_path / "home")},
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"leads-server: the archive {path} is not a")
    assert f"mv {path} {path}.broken" in lines[0]
    assert path.read_bytes() == b"" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
