"""Sealing a version-2 archive (server/archive/sealing.py): its anonymised sessions' truth moves
to truth files, their rows are rewritten under their aliases, the other sessions are untouched,
and nothing of the truth is left for the agent's SQL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
from leads_server.anonymise import dataset_handle
from leads_server.archive import Archive
from leads_server.archive.query_scope import QueryScope
from leads_server.archive.truth import TruthStore
from test_archive_schema import NOW, VERSION_1_DDL

from leads_engine.reactions import REACTION_MODELS

ANON, OPEN = "s-a11111111111", "s-b22222222222"
ALIASES = {
    name: f"reaction_{letter}" for name, letter in zip(REACTION_MODELS, "CEADB", strict=True)
}


def _flat(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


def write_version_2(path: Path) -> None:
    """A version-2 archive: one anonymised session that kept real names (as version 2 did) and
    one non-anonymised session."""
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {"name": "ap", "reaction": "aliev_panfilov", "samples": 4, "nodes": 30, "seed": 1}
    with duckdb.connect(str(path)) as con:
        con.execute(VERSION_1_DDL)
        con.execute("INSERT INTO schema_version VALUES (1, ?), (2, ?)", [NOW, NOW])
        config = {"epochs": 2, "aliases": ALIASES, "dataset_summary": summary}
        con.execute(
            "INSERT INTO sessions VALUES (?, ?, 'ap', '/data/ap.npz', 3, true, 1, ?, 'running')",
            [ANON, NOW, json.dumps(config)],
        )
        con.execute(
            "INSERT INTO sessions VALUES (?, ?, 'ms', '/data/ms.npz', 3, false, 1, ?, 'running')",
            [OPEN, NOW, json.dumps({"epochs": 2, "aliases": {}, "dataset_summary": summary})],
        )
        for candidate, session in (("c-anon", ANON), ("c-open", OPEN)):
            spec = {"reaction": "aliev_panfilov", "diffusion": "gcn", "operation": "select"}
            con.execute(
                "INSERT INTO candidates (candidate_id, session_id, created_at, operation, "
                "reaction, diffusion, spec, code, status, metrics, diagnosis, error) VALUES "
                "(?, ?, ?, 'select', 'aliev_panfilov', 'gcn', ?, ?, 'ok', ?, ?, ?)",
                [
                    candidate,
                    session,
                    NOW,
                    json.dumps(spec),
                    "# AlievPanfilov edit\n",
                    json.dumps({"note": "Aliev-Panfilov fits"}),
                    "aliev_panfilov: good fit",
                    None,
                ],
            )
            con.execute(
                "INSERT INTO evaluations VALUES (?, 'test', 0.1, 1.0, ?, ?)",
                [candidate, json.dumps({"reaction": "aliev_panfilov"}), NOW],
            )
            con.execute(
                "INSERT INTO steps VALUES (?, 1, 'try Aliev Panfilov', ?, 'aliev_panfilov ok', ?)",
                [session, json.dumps({"reaction": "aliev_panfilov"}), NOW],
            )


def test_a_version_2_archive_is_sealed(tmp_path: Path) -> None:
    path = tmp_path / "archive.duckdb"
    write_version_2(path)
    with Archive.open(path) as archive:
        anon = archive.get_session(ANON)
        assert anon.dataset == dataset_handle(ANON) and anon.dataset_path is None
        assert "aliases" not in anon.config
        assert anon.config["dataset_summary"] == {
            "name": dataset_handle(ANON),
            "samples": 4,
            "nodes": 30,
        }
        candidate = archive.get_candidate("c-anon")
        assert candidate.reaction == ALIASES["aliev_panfilov"]
        assert candidate.spec["reaction"] == ALIASES["aliev_panfilov"]
        assert candidate.code == "# AlievPanfilov edit\n"  # code is kept byte for byte
        seen = archive.query(
            "SELECT * EXCLUDE (code) FROM candidates UNION ALL BY NAME SELECT * FROM steps "
            "UNION ALL BY NAME SELECT * FROM evaluations UNION ALL BY NAME SELECT * FROM sessions",
            scope=QueryScope(ANON),
        )
        text = _flat(json.dumps(seen.rows))
        assert seen.row_count == 4 and "alievpanfilov" not in text
        assert "dataap" not in text and "apnpz" not in text
        assert ALIASES["aliev_panfilov"].lower().replace("_", "") in text
        # the non-anonymised session is as it was
        assert archive.get_session(OPEN).dataset == "ms"
        assert archive.get_candidate("c-open").reaction == "aliev_panfilov"
    truth = TruthStore(path).read(ANON)
    assert truth.dataset == "ap" and truth.dataset_path == "/data/ap.npz"
    assert truth.aliases == ALIASES and truth.true_reaction == "aliev_panfilov"
    assert TruthStore(path).sessions() == [ANON]
    with Archive.open(path) as archive:  # sealed once: reopening changes nothing
        assert archive.get_candidate("c-anon").reaction == ALIASES["aliev_panfilov"]
        assert archive.query("SELECT max(version) FROM schema_version").rows == [[3]]
