"""Completions (``completion/complete``) for the prompts' and resources' arguments: template
names, session, candidate and data set ids, and a session's reaction names (its aliases)."""

from __future__ import annotations

import mcp_types as types
import pytest
from mcp import Client
from server_calls import call, start, train

pytest_plugins = ("server_fixtures",)
pytestmark = pytest.mark.anyio

SOURCE = types.ResourceTemplateReference(uri="catalog://diffusion/{name}")
SUMMARY = types.ResourceTemplateReference(uri="session://{session_id}/summary")
EXPLAIN = types.PromptReference(name="explain_candidate")
DISCOVER = types.PromptReference(name="discover")


async def _values(
    client: Client, ref, name: str, value: str, context: dict[str, str] | None = None
) -> list[str]:
    result = await client.complete(ref, {"name": name, "value": value}, context_arguments=context)
    return result.completion.values


async def test_template_names_complete_by_prefix(client: Client) -> None:
    everything = await _values(client, SOURCE, "name", "")
    assert len(everything) == 11 and "laplacian_global" in everything
    assert await _values(client, SOURCE, "name", "LAPLACIAN_G") == ["laplacian_global"]
    assert await _values(client, SOURCE, "name", "zzz") == []


async def test_sessions_candidates_and_data_sets_complete(client: Client) -> None:
    session_id = await start(client)
    other = await start(client)
    await call(client, "select_reaction", session_id=session_id, reaction="aliev_panfilov")
    await call(client, "select_diffusion", session_id=session_id, template="laplacian_global")
    trained, _ = await train(client, session_id, epochs=1)
    assert set(await _values(client, SUMMARY, "session_id", "s-")) == {session_id, other}
    candidates = await _values(client, EXPLAIN, "candidate_id", "c-")
    assert candidates == [trained["candidate_id"]]
    assert await _values(client, EXPLAIN, "candidate_id", "c-", {"session_id": other}) == []
    datasets = await _values(client, DISCOVER, "dataset", "")
    assert {"ap", "rm", "tiny"} <= set(datasets)
    await start(client, anonymise=True)  # its data set's name is what it hides
    assert "tiny" not in await _values(client, DISCOVER, "dataset", "")


async def test_reaction_names_are_the_sessions_own(client: Client) -> None:
    hidden = await start(client, anonymise=True)
    aliases = await _values(client, DISCOVER, "reaction", "", {"session_id": hidden})
    assert "neural" in aliases and all(a == "neural" or a.startswith("reaction_") for a in aliases)
    shown = await _values(client, DISCOVER, "reaction", "a")
    assert "aliev_panfilov" in shown  # without a session: the catalog's names
    assert await _values(client, DISCOVER, "unknown_argument", "") == []
