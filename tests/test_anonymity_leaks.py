"""The leak battery: an anonymised session probed the way a curious LLM would, through the tools
alone, against a real ``leads-server`` process over stdio.

The data set is the Aliev-Panfilov benchmark under its telling name ``ap``. Every tool result,
every resource, and SQL over every table (string-function bypasses included, with and without
``session_id``, and from a fresh server process) is collected as the client receives it, and
none may hold a real reaction name (checked case-insensitively with non-letters removed), the
data set's name (as a word) or any part of its path, or tie an alias to the ground truth. Real
and unknown reaction names are refused with the session's aliases; and the user can still learn
the truth with ``leads-server reveal``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from leads_agent.connection import ServerConnection, connect
from leads_server.archive.truth import TruthStore
from server_calls import save_tiny

from leads_engine.reactions import REACTION_MODELS

pytestmark = pytest.mark.anyio

#: Every real reaction name, class name and catalog short name, letters only.
REAL = sorted(
    {re.sub(r"[^a-z]", "", name) for name in REACTION_MODELS}
    | {re.sub(r"[^a-z]", "", cls.__name__.lower()) for cls in REACTION_MODELS.values()}
)
SQL_PROBES = (
    "SELECT * FROM sessions",
    "SELECT * EXCLUDE (weights) FROM candidates",
    "SELECT * FROM steps",
    "SELECT * FROM epochs",
    "SELECT * FROM evaluations",
    "SELECT * FROM schema_version",
    "SELECT json_extract_string(config, '$.dataset_summary.reaction') || 'x' FROM sessions",
    "SELECT replace(config, '_', '+') FROM sessions",
    "SELECT substr(reaction, 1, 5), reverse(reaction), upper(spec) FROM candidates",
    "SELECT replace('reaction_A', '_', '+'), 'reaction_B' || ''",
    "SELECT string_agg(CAST(s AS VARCHAR), '|') FROM (SELECT * FROM steps) s",
    "SELECT dataset, dataset_path, config FROM sessions",
    "SELECT sql FROM duckdb_tables()",
    "SELECT * FROM duckdb_views()",
    "SELECT table_name, column_name FROM information_schema.columns",
)
REFUSED_PROBES = (
    "SELECT * FROM archive.main.sessions",
    "SELECT * FROM archive.sessions",
    "SELECT * FROM read_text('{truth}')",
    "SELECT * FROM read_json_auto('{truth}')",
    "SELECT * FROM pragma_storage_info('candidates')",
)


def leaks(text: str, dataset_path: Path) -> list[str]:
    """What of the truth ``text`` shows: real names, the data set's name or path."""
    letters = re.sub(r"[^a-z]", "", text.lower())
    found = [name for name in REAL if name in letters]
    words = set(re.findall(r"[a-z0-9]+", text.lower()))
    if "ap" in words:
        found.append("data set name 'ap'")
    for part in (str(dataset_path), dataset_path.name, str(dataset_path.parent)):
        if part in text:
            found.append(part)
    return found


class Probe:
    """Calls tools and reads resources, keeping every answer exactly as it arrived."""

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.seen: list[tuple[str, str]] = []

    async def tool(self, name: str, **arguments: Any) -> dict[str, Any]:
        result = await self.conn.client.call_tool(name, arguments)
        # images are checked as text minus their base64 pixels (random letters could spell "ap")
        shown = result.model_dump_json(exclude={"content": {"__all__": {"data"}}})
        self.seen.append((f"{name}({arguments})", shown))
        assert not result.is_error, f"{name}: {result.content[0].text}"
        return result.structured_content or {}

    async def refused(self, name: str, **arguments: Any) -> str:
        result = await self.conn.client.call_tool(name, arguments)
        assert result.is_error, f"{name}({arguments}) was not refused"
        return result.content[0].text

    async def resources(self) -> None:
        listing = await self.conn.client.list_resources()
        templates = await self.conn.client.list_resource_templates()
        self.seen.append(("resources/list", listing.model_dump_json()))
        self.seen.append(("resources/templates/list", templates.model_dump_json()))

    async def resource(self, uri: str) -> None:
        result = await self.conn.client.read_resource(uri)
        for content in result.contents:
            text = getattr(content, "text", None)
            if text is not None:
                self.seen.append((uri, text))

    def check(self, dataset_path: Path) -> None:
        found = {what: leaks(text, dataset_path) for what, text in self.seen}
        assert not {what: names for what, names in found.items() if names}


async def _discover(probe: Probe, archive: Path) -> tuple[str, str, str]:
    """A short discovery through every tool: the session, its trained candidate and the alias
    of the true reaction (read from the truth file, as only trusted code can)."""
    await probe.tool("list_catalogs")
    probe.seen.pop()  # the public catalog (no session) is the repository's documentation
    started = await probe.tool(
        "start_session", dataset="ap", budget=3, epochs=1, anonymise=True, seed=0
    )
    session_id = started["session_id"]
    alias = TruthStore(archive).read(session_id).aliases["aliev_panfilov"]
    assert alias in started["reactions"] and "reaction_" not in json.dumps(started["dataset"])
    await probe.tool("list_catalogs", session_id=session_id)
    await probe.tool("select_reaction", session_id=session_id, reaction=alias)
    await probe.tool("select_diffusion", session_id=session_id, template="laplacian_global")
    trained = await probe.tool("train_candidate", session_id=session_id)
    candidate_id = trained["candidate_id"]
    assert trained["reaction"] == alias
    await probe.tool(
        "refine_diffusion",
        session_id=session_id,
        candidate_id=candidate_id,
        hyperparameters={"conductivity": 2.0},
    )
    await probe.tool(
        "record_step",
        session_id=session_id,
        thought="the wave looks slow",
        action={"tool": "refine_diffusion"},
        observation="val loss fell",
    )
    await probe.tool("train_candidate", session_id=session_id)
    await probe.tool("get_candidate", candidate_id=candidate_id)
    await probe.tool("evaluate_candidate", session_id=session_id, candidate_id=candidate_id)
    await probe.tool(
        "finetune_candidate", session_id=session_id, candidate_id=candidate_id, epochs=1
    )
    await probe.resources()
    await probe.resource(f"session://{session_id}/summary")
    return session_id, candidate_id, alias


async def _query_everything(probe: Probe, session_id: str | None, truth_file: Path) -> None:
    scope = {} if session_id is None else {"session_id": session_id}
    for sql in SQL_PROBES:
        await probe.tool("query_archive", sql=sql, **scope)
    for sql in REFUSED_PROBES:
        await probe.refused("query_archive", sql=sql.format(truth=truth_file), **scope)


async def test_an_anonymised_session_leaks_nothing_of_its_truth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("LEADS_HOME", str(home))
    dataset_path = save_tiny(home, name="ap")
    archive = home / "archive.duckdb"
    async with connect(archive=str(archive), compile_training=False) as conn:
        probe = Probe(conn)
        session_id, candidate_id, alias = await _discover(probe, archive)
        aliases = sorted(TruthStore(archive).read(session_id).aliases.values())
        truth_file = TruthStore(archive).folder / f"{session_id}.json"
        await _query_everything(probe, session_id, truth_file)
        await _query_everything(probe, None, truth_file)
        # one alias per reaction, the same through every tool and query
        shown = await probe.tool(
            "query_archive",
            sql="SELECT DISTINCT reaction FROM candidates UNION ALL "
            "SELECT DISTINCT json_extract_string(spec, '$.reaction') FROM candidates",
            session_id=session_id,
        )
        assert {row[0] for row in shown["rows"]} == {alias}
        # no session-level row names an alias, which would tell the ground truth
        sessions = await probe.tool(
            "query_archive", sql="SELECT * FROM sessions", **{"session_id": session_id}
        )
        assert sessions["row_count"] == 1 and "reaction_" not in json.dumps(sessions["rows"])
        # real, short and unknown names are refused with this session's aliases
        for name in ("aliev_panfilov", "ap", "AlievPanfilov", "reaction_Z", "fenton_karma"):
            text = await probe.refused("select_reaction", session_id=session_id, reaction=name)
            assert all(a in text for a in aliases) and "neural" in text
            assert not leaks(text.replace(repr(name), ""), dataset_path), text
    async with connect(archive=str(archive), compile_training=False) as conn:  # a fresh process
        again = Probe(conn)
        await _query_everything(again, None, truth_file)
        await _query_everything(again, session_id, truth_file)
        await again.tool("get_candidate", candidate_id=candidate_id)
        await again.resource(f"session://{session_id}/summary")
        probe.seen += again.seen
    probe.check(dataset_path)

    # the user (trusted code, on the server's machine) still learns the truth
    revealed = subprocess.run(
        [sys.executable, "-m", "leads_server.cli", "reveal", session_id, "--archive", str(archive)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    data = json.loads(revealed.stdout)
    assert data["dataset"] == "ap" and data["true_reaction"] == "aliev_panfilov"
    assert data["aliases"][alias] == "aliev_panfilov"
