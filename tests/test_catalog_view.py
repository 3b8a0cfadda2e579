"""The catalogs as the agent sees them (server/catalog_view.py): reaction names and
equations under a session's aliases, diffusion templates and their sources."""

from __future__ import annotations

import json

import pytest
from mcp import Client
from server_calls import REAL_NAMES, call, start

pytest_plugins = ("server_fixtures",)
pytestmark = pytest.mark.anyio


async def test_catalogs_show_aliases_in_anonymised_sessions(client: Client) -> None:
    plain = await call(client, "list_catalogs")
    assert "aliev_panfilov" in {entry["name"] for entry in plain["reactions"]}
    assert {t["name"] for t in plain["diffusion_templates"]} >= {"gat", "laplacian_nodewise"}

    session_id = await start(client, anonymise=True, seed=3)
    shown = await call(client, "list_catalogs", session_id=session_id)
    names = [entry["name"] for entry in shown["reactions"]]
    assert names == ["reaction_A", "reaction_B", "reaction_C", "reaction_D", "reaction_E", "neural"]
    text = json.dumps(shown).lower()
    assert not any(real in text for real in REAL_NAMES)
    started = await call(client, "start_session", dataset="tiny", anonymise=True, seed=3)
    assert started["dataset"]["reaction"].startswith("hidden")
    source = await client.read_resource("catalog://diffusion/gat")
    assert "class Diffusion" in source.contents[0].text
