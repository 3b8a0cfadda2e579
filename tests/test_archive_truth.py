"""The truth files of anonymised sessions (server/archive/truth.py): written once, atomically
and owner-readable, read back whole, and refused with a message that says what to do."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from leads_server.archive import ArchiveError
from leads_server.archive.truth import SessionTruth, TruthStore, truth_folder


def sample(session_id: str = "s-0123456789ab") -> SessionTruth:
    return SessionTruth(
        session_id=session_id,
        dataset="ap",
        dataset_path="/data/ap.npz",
        dataset_summary={"reaction": "aliev_panfilov", "samples": 4},
        aliases={"aliev_panfilov": "reaction_B", "fenton_karma": "reaction_A"},
    )


def test_a_truth_round_trips_next_to_its_archive(tmp_path: Path) -> None:
    archive = tmp_path / "archive.duckdb"
    store = TruthStore(archive)
    assert store.folder == truth_folder(archive) == tmp_path / "archive.duckdb.truth"
    truth = sample()
    store.write(truth)
    assert store.read(truth.session_id) == truth
    assert truth.true_reaction == "aliev_panfilov"
    mode = (store.folder / f"{truth.session_id}.json").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600 and stat.S_IMODE(store.folder.stat().st_mode) == 0o700
    store.write(truth)  # the same truth again (a repeated migration) is accepted
    with pytest.raises(ArchiveError, match="already has other hidden truth"):
        store.write(SessionTruth(**{**truth.as_dict(), "dataset": "rm"}))
    assert store.read(truth.session_id).dataset == "ap"
    assert store.sessions() == [truth.session_id]
    assert not list(store.folder.glob("*.tmp*"))


def test_a_missing_or_damaged_truth_is_a_clear_error(tmp_path: Path) -> None:
    store = TruthStore(tmp_path / "archive.duckdb")
    with pytest.raises(ArchiveError, match="is missing") as raised:
        store.read("s-000000000000")
    assert "archive.duckdb.truth" in str(raised.value)
    store.write(sample())
    (store.folder / "s-0123456789ab.json").write_text("{not json")
    with pytest.raises(ArchiveError, match="cannot be read"):
        store.read("s-0123456789ab")
    for bad in ("../etc", "", "s-1.json"):
        with pytest.raises(ArchiveError, match="not a session id"):
            store.read(bad)
