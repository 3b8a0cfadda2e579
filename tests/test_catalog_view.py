"""The catalogs as the agent sees them (server/catalog_view.py): reaction names and
equations under a session's aliases, diffusion templates and their sources."""

from __future__ import annotations

import json
import random

import pytest
from leads_server.anonymise import ReactionAliases
from leads_server.catalog_view import NEURAL_HYPERPARAMETERS, catalogs, equations, reaction_names
from mcp import Client
from server_calls import REAL_NAMES, call, start

from leads_engine.reactions import AlievPanfilov
from leads_engine.spec import NEURAL_HYPERPARAMETERS as SPEC_NAMES

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
    assert "reaction" not in started["dataset"] and started["dataset"]["name"].startswith("data-")
    source = await client.read_resource("catalog://diffusion/gat")
    assert "class Diffusion" in source.contents[0].text


def test_anonymised_reactions_show_equations_without_names() -> None:
    doc = (
        "Title Name.\n\n.. math::\n    du/dt = f(u)\n\n    dv/dt = g(u)\n\nSource: Someone (1996)."
    )
    assert equations(doc) == "du/dt = f(u)\ndv/dt = g(u)"
    assert equations("no maths here") == "(equations not documented)"
    assert "Aliev" not in equations(AlievPanfilov.__doc__ or "")
    assert list(NEURAL_HYPERPARAMETERS) == list(SPEC_NAMES)  # described = accepted

    aliases = ReactionAliases.shuffled(random.Random(0))
    assert reaction_names(aliases) == [f"reaction_{c}" for c in "ABCDE"] + ["neural"]
    shown = catalogs("s-1", aliases)
    assert [entry.name for entry in shown.reactions] == reaction_names(aliases)
    assert shown.reactions[-1].hyperparameters == NEURAL_HYPERPARAMETERS
    assert shown.anonymised and set(shown.operations) >= {"select", "refine", "modify"}
    plain = catalogs(None, ReactionAliases.disabled())
    assert "Aliev" in next(e.description for e in plain.reactions if e.name == "aliev_panfilov")


async def test_an_unknown_template_source_is_refused(client: Client) -> None:
    with pytest.raises(Exception, match="known templates"):
        await client.read_resource("catalog://diffusion/magic")
