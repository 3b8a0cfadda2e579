"""The archive store: round trips with typed rows, append-only results, crash recovery, and one
writer per file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_python
from leads_server.archive import (
    INTERRUPTED_ERROR,
    TABLES,
    Archive,
    ArchiveError,
    CandidateDetail,
    CandidateRow,
    SessionRow,
    default_archive_path,
)

from leads_engine.spec import CandidateSpec


@pytest.fixture
def archive_path(tmp_path: Path) -> Path:
    return tmp_path / "project" / "archive.duckdb"


@pytest.fixture
def archive(archive_path: Path):
    with Archive.open(archive_path) as opened:
        yield opened


def new_session(archive: Archive, dataset: str = "lv-small") -> str:
    return archive.create_session(dataset, "/data/lv.npz", 20, False, 7, {"epochs": 5})


def make_spec(
    operation: str = "baseline",
    parent: str | None = None,
    source: str | None = None,
    seed: int = 0,
    reaction: str = "aliev_panfilov",
) -> CandidateSpec:
    return CandidateSpec(
        reaction=reaction,
        diffusion="gcn",
        diffusion_source=source,
        parent_id=parent,
        operation=operation,
        seed=seed,
    )


def table_counts(archive: Archive) -> dict[str, int]:
    sql = " UNION ALL ".join(f"SELECT '{table}', count(*) FROM {table}" for table in TABLES)
    return {name: count for name, count in archive.query(sql).rows}


def test_default_path_follows_leads_home(monkeypatch, tmp_path):
    monkeypatch.setenv("LEADS_HOME", str(tmp_path))
    assert default_archive_path() == tmp_path / "archive.duckdb"


def test_round_trip(archive: Archive, archive_path: Path):
    assert archive_path.exists()
    session = new_session(archive)
    assert session.startswith("s-") and len(session) == 14
    other = new_session(archive, "atrium")

    stored = archive.get_session(session)
    assert isinstance(stored, SessionRow)
    assert stored.dataset == "lv-small" and stored.budget == 20 and not stored.anonymise
    assert stored.config == {"epochs": 5} and stored.status == "running"
    assert [s.session_id for s in archive.list_sessions()] == [session, other]
    with pytest.raises(ArchiveError, match="unknown session"):
        archive.get_session("s-000000000000")

    spec = make_spec()
    base = archive.begin_candidate(session, spec)
    assert base.startswith("c-") and len(base) == 14
    for epoch, (train, val) in enumerate([(1.0, 1.2), (0.5, 0.6)]):
        archive.record_epoch(base, epoch, train, val, 0.1)
    archive.finish_candidate(
        base,
        "ok",
        train_loss=0.5,
        val_loss=0.6,
        best_epoch=1,
        parameter_count=1234,
        wall_seconds=0.2,
        metrics={"at_mae": 3.5, "bad": float("nan")},
        diagnosis="fits",
        weights=b"\x00weights",
    )
    code = "def forward(x):\n    return x\n"
    child_spec = make_spec("modify", base, code)
    child = archive.begin_candidate(session, child_spec)
    archive.finish_candidate(child, "unstable", train_loss=float("inf"), error="NaN at epoch 0")
    better = archive.begin_candidate(session, make_spec("refine", base))
    archive.finish_candidate(better, "ok", val_loss=0.3)
    refused = archive.record_refusal(session, make_spec("modify", base, "import os"), "imports os")

    got = archive.get_candidate(base)
    assert isinstance(got, CandidateDetail)
    assert got.status == "ok" and got.spec == spec.model_dump() and got.val_loss == 0.6
    assert CandidateSpec.model_validate(got.spec) == spec
    assert (got.operation, got.parent_id, got.reaction, got.diffusion) == (
        "baseline",
        None,
        "aliev_panfilov",
        "gcn",
    )
    assert got.code is None and got.code_hash is None
    assert got.metrics == {"at_mae": 3.5, "bad": None}  # NaN is not JSON: stored as null
    assert got.has_weights and "weights" not in got.as_dict()
    assert [e.epoch for e in got.epochs] == [0, 1] and got.epochs[1].val_loss == 0.6
    assert archive.get_weights(base) == b"\x00weights"
    assert archive.get_weights(child) is None

    got_child = archive.get_candidate(child)
    assert got_child.parent_id == base and got_child.code == code
    assert got_child.code_hash == child_spec.code_hash() and len(got_child.code_hash) == 64
    assert got_child.operation == "modify" and got_child.train_loss == float("inf")
    assert archive.get_candidate(refused).status == "refused"
    assert archive.get_candidate(refused).error == "imports os"
    assert archive.get_candidate(refused).code == "import os"

    candidates = archive.list_candidates(session)
    assert all(isinstance(c, CandidateRow) for c in candidates)
    assert [c.candidate_id for c in candidates] == [base, child, better, refused]
    assert [c.candidate_id for c in archive.list_candidates(session, order_by="val_loss")][:2] == [
        better,
        base,
    ]
    assert [c.candidate_id for c in archive.list_candidates(session, status="ok")] == [
        base,
        better,
    ]
    assert len(archive.list_candidates(session, limit=2)) == 2
    assert archive.list_candidates(other) == []
    assert archive.best_candidate(session).candidate_id == better
    assert archive.best_candidate(other) is None
    operations = [c.operation for c in candidates]
    assert len(operations) == 4 and operations.count("modify") == 2
    assert sum(op in ("modify", "refine") for op in operations) == 3
    with pytest.raises(ArchiveError, match="operation"):  # a spec built without validation
        archive.begin_candidate(
            session, CandidateSpec.model_construct(reaction="x", diffusion="y", operation="mutate")
        )
    with pytest.raises(ValueError, match="operation"):
        make_spec("mutate")

    assert archive.record_step(session, "try gcn", {"tool": "train", "k": 1}, "ok") == 1
    assert archive.record_step(session, "refine", {"tool": "refine"}, "better") == 2
    steps = archive.query(f"SELECT step, action FROM steps WHERE session_id = '{session}'").rows
    assert [s[0] for s in steps] == [1, 2] and json.loads(steps[0][1]) == {"tool": "train", "k": 1}
    assert archive.record_step(other, None, None, None) == 1

    archive.record_evaluation(base, "test", 0.7, 2.5, {"per_node": [1, 2]})
    archive.record_evaluation(base, "val", 0.6, 2.0, None)
    evaluations = archive.get_candidate(base).evaluations
    assert [(e.split, e.mse) for e in evaluations] == [("test", 0.7), ("val", 0.6)]
    assert evaluations[0].metrics == {"per_node": [1, 2]}
    plain = archive.get_candidate(base).as_dict()
    assert plain["evaluations"][0]["metrics"] == {"per_node": [1, 2]}
    assert plain["epochs"] == [
        {"epoch": 0, "train_loss": 1.0, "val_loss": 1.2, "wall_seconds": 0.1},
        {"epoch": 1, "train_loss": 0.5, "val_loss": 0.6, "wall_seconds": 0.1},
    ]
    assert table_counts(archive) == {
        "schema_version": 1,
        "sessions": 2,
        "candidates": 4,
        "epochs": 2,
        "steps": 3,
        "evaluations": 2,
    }

    archive.close()
    with Archive.open(archive_path) as reopened:  # everything was committed
        assert reopened.get_candidate(base).epochs == got.epochs
        assert len(reopened.list_candidates(session)) == 4
        assert reopened.query(
            f"SELECT count(*) FROM steps WHERE session_id = '{session}'"
        ).rows == [[2]]
        assert reopened.recovered_candidates == []
    with pytest.raises(ArchiveError, match="closed"):
        archive.list_sessions()


def test_results_are_append_only(archive: Archive):
    session = new_session(archive)
    candidate = archive.begin_candidate(session, make_spec())
    archive.record_epoch(candidate, 0, 1.0, 1.0, 0.1)
    with pytest.raises(ArchiveError, match="epoch 0"):
        archive.record_epoch(candidate, 0, 2.0, 2.0, 0.1)
    with pytest.raises(ArchiveError, match="final status"):
        archive.finish_candidate(candidate, "pending")
    archive.finish_candidate(candidate, "ok", val_loss=1.0)

    with pytest.raises(ArchiveError, match="already finished"):
        archive.finish_candidate(candidate, "failed", error="again")
    with pytest.raises(ArchiveError, match="not pending"):
        archive.record_epoch(candidate, 1, 0.5, 0.5, 0.1)
    refused = archive.record_refusal(session, make_spec("modify", candidate, "x"), "no")
    with pytest.raises(ArchiveError, match="already finished"):
        archive.finish_candidate(refused, "ok")
    with pytest.raises(ArchiveError, match="unknown candidate"):
        archive.finish_candidate("c-000000000000", "ok")
    got = archive.get_candidate(candidate)
    assert got.status == "ok" and got.val_loss == 1.0 and len(got.epochs) == 1
    # The API has no way to change or remove results (nor a session's status: see the schema).
    mutators = [n for n in dir(Archive) if n.startswith(("delete", "update", "remove", "set_"))]
    assert mutators == []


def test_parent_must_be_in_the_same_session(archive: Archive):
    first, second = new_session(archive), new_session(archive)
    parent = archive.begin_candidate(first, make_spec())
    with pytest.raises(ArchiveError, match="belongs to session"):
        archive.begin_candidate(second, make_spec("refine", parent))
    with pytest.raises(ArchiveError, match="belongs to session"):
        archive.record_refusal(second, make_spec("modify", parent, "x"), "refused")
    with pytest.raises(ArchiveError, match="unknown parent"):
        archive.begin_candidate(first, make_spec("refine", "c-000000000000"))
    with pytest.raises(ArchiveError, match="unknown session"):
        archive.begin_candidate("s-000000000000", make_spec())
    assert archive.list_candidates(second) == []
    archive.begin_candidate(first, make_spec("refine", parent))


def test_open_fails_candidates_left_pending(archive_path: Path):
    with Archive.open(archive_path) as archive:
        session = new_session(archive)
        left = archive.begin_candidate(session, make_spec())
        archive.record_epoch(left, 0, 1.0, 1.0, 0.1)
    with Archive.open(archive_path) as archive:
        assert archive.recovered_candidates == [left]
        got = archive.get_candidate(left)
        assert got.status == "failed" and got.error == INTERRUPTED_ERROR
        assert len(got.epochs) == 1
        assert archive.get_session(session).status == "stopped"


def test_a_killed_process_loses_only_the_candidate_in_flight(archive_path: Path):
    result = run_python(
        timeout=60,
        script=f"""
        import os, signal
        from leads_engine.spec import CandidateSpec
        from leads_server.archive import Archive
        archive = Archive.open({str(archive_path)!r})
        session = archive.create_session("lv", None, 5, False, 0, {{}})
        spec = CandidateSpec(reaction="fitzhugh_nagumo", diffusion="gcn", operation="baseline")
        done = archive.begin_candidate(session, spec)
        for epoch in range(3):
            archive.record_epoch(done, epoch, 1.0 / (epoch + 1), 2.0 / (epoch + 1), 0.1)
        archive.finish_candidate(done, "ok", 0.33, 0.66, 2, 100, 0.3, {{"x": 1}}, weights=b"w")
        refine = spec.model_copy(update={{"operation": "refine", "parent_id": done, "seed": 2}})
        flight = archive.begin_candidate(session, refine)
        archive.record_epoch(flight, 0, 5.0, 5.0, 0.1)
        print(session, done, flight, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """,
    )
    assert result.returncode == -9, result.stderr
    session, done, flight = result.stdout.split()

    with Archive.open(archive_path) as archive:
        assert archive.recovered_candidates == [flight]
        finished = archive.get_candidate(done)
        assert finished.status == "ok" and finished.val_loss == 0.66
        assert [e.epoch for e in finished.epochs] == [0, 1, 2]
        assert archive.get_weights(done) == b"w"
        interrupted = archive.get_candidate(flight)
        assert interrupted.status == "failed" and interrupted.error == INTERRUPTED_ERROR
        assert [e.train_loss for e in interrupted.epochs] == [5.0]
        assert archive.get_session(session).status == "stopped"
        again = archive.begin_candidate(session, make_spec("refine", done, seed=3))
        archive.finish_candidate(again, "ok", val_loss=0.5)
        assert archive.best_candidate(session).candidate_id == again
        assert archive.get_session(session).status == "running"  # resumed, budget left


def test_the_file_is_held_by_one_process(archive: Archive, archive_path: Path):
    result = run_python(
        timeout=60,
        script=f"""
        from leads_server.archive import Archive, ArchiveError
        try:
            Archive.open({str(archive_path)!r})
        except ArchiveError as exc:
            print("refused:", exc)
    """,
    )
    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout and "in use by another process" in result.stdout
    assert str(archive_path) in result.stdout
    with pytest.raises(ArchiveError, match="already open in this process"):
        Archive.open(archive_path)
    new_session(archive)  # the first Archive is unaffected
