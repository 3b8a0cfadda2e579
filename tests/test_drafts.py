"""The draft operations (server/drafts.py): select, refine, modify (sandboxed) and simplify,
their refusals, and training what they assembled."""

from __future__ import annotations

import pytest
from leads_server import runs
from leads_server.app import LeadsServer
from leads_server.jobs import sandbox_available
from mcp import Client
from server_calls import REAL_NAMES, call, fails, start, train

pytest_plugins = ("server_fixtures",)
pytestmark = pytest.mark.anyio


async def test_refine_and_simplify(client: Client) -> None:
    session_id = await start(client)
    await call(client, "select_reaction", session_id=session_id, reaction="ap")
    await call(client, "select_diffusion", session_id=session_id, template="gat")
    gat, _ = await train(client, session_id, epochs=1)
    parent = gat["candidate_id"]

    same = await fails(
        client, "refine_diffusion", session_id=session_id, candidate_id=parent,
        hyperparameters={"hidden": 8},
    )  # fmt: skip
    assert "changes nothing" in same
    wide = await fails(
        client, "refine_diffusion", session_id=session_id, candidate_id=parent,
        hyperparameters={"heads": 99},
    )  # fmt: skip
    assert "out of range [1, 8]" in wide
    refined = await call(
        client, "refine_diffusion", session_id=session_id, candidate_id=parent,
        hyperparameters={"hidden": 4},
    )  # fmt: skip
    assert refined["draft"]["operation"] == "refine" and refined["draft"]["parent_id"] == parent

    bigger = await fails(
        client, "simplify_diffusion", session_id=session_id, candidate_id=parent,
        hyperparameters={"hidden": 16},
    )  # fmt: skip
    assert "not a simplification" in bigger
    simpler = await call(
        client, "simplify_diffusion", session_id=session_id, candidate_id=parent,
        template="laplacian_global",
    )  # fmt: skip
    assert simpler["draft"]["parameter_count"] < gat["parameter_count"]
    trained, _ = await train(client, session_id, epochs=1)
    assert trained["operation"] == "simplify" and trained["parent_id"] == parent


async def test_error_paths_are_actionable(client: Client) -> None:
    session_id = await start(client, budget=1)
    unknown = await fails(client, "select_diffusion", session_id=session_id, template="magic")
    assert "known templates" in unknown and "gat" in unknown
    out_of_range = await fails(
        client, "select_diffusion", session_id=session_id, template="gcn",
        hyperparameters={"layers": 9},
    )  # fmt: skip
    assert "'layers'" in out_of_range and "out of range [1, 4]" in out_of_range
    wrong_type = await fails(
        client, "select_diffusion", session_id=session_id, template="gcn",
        hyperparameters={"activation": "cubic"},
    )  # fmt: skip
    assert "choose one of" in wrong_type
    assert "this session's reactions" in await fails(
        client, "select_reaction", session_id=session_id, reaction="hodgkin_huxley"
    )
    schema = await client.call_tool("start_session", {"budget": 0})
    assert schema.is_error  # the input schema's range, checked by the SDK

    assert "nothing to train" in await fails(client, "train_candidate", session_id=session_id)
    await call(client, "select_diffusion", session_id=session_id, template="laplacian_global")
    assert "select_reaction" in await fails(client, "train_candidate", session_id=session_id)
    await call(client, "select_reaction", session_id=session_id, reaction="ap")
    first, _ = await train(client, session_id, epochs=1)
    assert first["budget_left"] == 0

    await call(client, "select_diffusion", session_id=session_id, template="gcn")
    exhausted = await fails(client, "train_candidate", session_id=session_id)
    assert "budget exhausted" in exhausted and "finetune_candidate" in exhausted

    for tool in ("refine_diffusion", "simplify_diffusion"):
        text = await fails(
            client, tool, session_id=session_id, candidate_id="c-000000000000",
            hyperparameters={"conductivity": 2.0},
        )  # fmt: skip
        assert "unknown candidate" in text
    assert "unknown candidate" in await fails(client, "get_candidate", candidate_id="c-x")
    assert "unknown candidate" in await fails(
        client, "evaluate_candidate", session_id=session_id, candidate_id="c-x"
    )
    other = await start(client)
    foreign = await fails(
        client, "finetune_candidate", session_id=other, candidate_id=first["candidate_id"]
    )
    assert "belongs to session" in foreign
    with pytest.raises(Exception, match="evaluate_candidate first"):
        await client.read_resource(f"candidate://{first['candidate_id']}/activation_map.png")


HOSTILE = """\
import os
from torch import nn

class Diffusion(nn.Module):
    def __init__(self, num_nodes, **hyperparameters):
        super().__init__()
        os.system("echo pwned")

    def forward(self, u, graph):
        return u * 0
"""


async def test_modify_diffusion_refuses_hostile_code(
    client: Client, server: LeadsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_id = await start(client)
    if not sandbox_available():
        text = await fails(
            client, "modify_diffusion", session_id=session_id, source=HOSTILE, template="gcn"
        )
        assert "sandbox unavailable" in text
        return
    text = await fails(
        client, "modify_diffusion", session_id=session_id, source=HOSTILE, template="gcn"
    )
    assert "refused" in text and "os" in text
    refused = server.service.archive.list_candidates(session_id, status="refused")
    assert len(refused) == 1 and refused[0].code == HOSTILE
    assert "both" in await fails(
        client, "modify_diffusion", session_id=session_id, source=HOSTILE,
        template="gcn", candidate_id="c-1",
    )  # fmt: skip
    # An accepted edit (the catalog source itself) trains in the sandboxed worker.
    source = (await client.read_resource("catalog://diffusion/laplacian_global")).contents[0]
    draft = await call(
        client, "modify_diffusion", session_id=session_id, source=source.text,
        template="laplacian_global",
    )  # fmt: skip
    assert draft["draft"]["edited_source"] and draft["draft"]["operation"] == "modify"
    await call(client, "select_reaction", session_id=session_id, reaction="ap")
    trained, _ = await train(client, session_id, epochs=1)
    assert trained["status"] == "ok" and trained["operation"] == "modify"


async def test_modify_without_sandbox_never_runs_code(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "sandbox_available", lambda: False)
    session_id = await start(client)
    text = await fails(
        client, "modify_diffusion", session_id=session_id, source=HOSTILE, template="gcn"
    )
    assert "sandbox unavailable" in text


UNUSABLE_DEFAULT = """\
import math

import torch
from torch import nn


class Diffusion(nn.Module):
    def __init__(self, num_nodes, conductivity=0.0):
        super().__init__()
        if conductivity > 1.5:
            raise ValueError("this edit needs a conductivity up to 1.5")
        self.raw = nn.Parameter(torch.tensor(math.log(math.expm1(conductivity))))

    def forward(self, u, graph):
        weight = torch.nn.functional.softplus(self.raw) * graph.edge_weight
        return graph.flux_divergence(weight, u)
"""


async def test_edited_code_is_checked_with_the_hyperparameters_it_trains_with(
    client: Client,
) -> None:
    """The sandbox tries the edit as Diffusion(num_nodes, **hyper-parameters) with those of
    the template or parent candidate: a default that cannot be built with (log(expm1(0)))
    passes and trains, a parent's value the edit refuses is refused at once."""
    if not sandbox_available():
        pytest.skip("the code sandbox is not available here")
    session_id = await start(client)
    draft = await call(
        client, "modify_diffusion", session_id=session_id, source=UNUSABLE_DEFAULT,
        template="laplacian_global",
    )  # fmt: skip
    assert draft["draft"]["diffusion_hyperparameters"] == {"conductivity": 1.0}
    await call(client, "select_reaction", session_id=session_id, reaction="ap")
    trained, _ = await train(client, session_id, epochs=1)
    assert trained["status"] == "ok" and trained["operation"] == "modify"

    await call(
        client, "select_diffusion", session_id=session_id, template="laplacian_global",
        hyperparameters={"conductivity": 2.0},
    )  # fmt: skip
    wide, _ = await train(client, session_id, epochs=1)
    refused = await fails(
        client, "modify_diffusion", session_id=session_id, source=UNUSABLE_DEFAULT,
        candidate_id=wide["candidate_id"],
    )  # fmt: skip
    assert "refused" in refused and "conductivity up to 1.5" in refused


async def test_reaction_hyperparameters_are_checked_by_the_spec_rules(client: Client) -> None:
    session_id = await start(client, anonymise=True, seed=2)
    catalog = await call(client, "list_catalogs", session_id=session_id)
    alias = catalog["reactions"][0]["name"]
    text = await fails(
        client, "select_reaction", session_id=session_id, reaction=alias,
        hyperparameters={"hidden": 8},
    )  # fmt: skip
    assert f"reaction {alias!r} takes no hyper-parameters" in text
    assert not any(real in text.lower() for real in REAL_NAMES)
    assert "unknown hyper-parameter(s) ['depth']" in await fails(
        client, "select_reaction", session_id=session_id, reaction="neural",
        hyperparameters={"depth": 2},
    )  # fmt: skip
    assert "invalid hyper-parameters for 'neural'" in await fails(
        client, "select_reaction", session_id=session_id, reaction="neural",
        hyperparameters={"layers": 9},
    )  # fmt: skip
    draft = await call(
        client, "select_reaction", session_id=session_id, reaction="neural",
        hyperparameters={"hidden": 8},
    )  # fmt: skip
    assert draft["draft"]["reaction_hyperparameters"] == {"hidden": 8}


async def test_every_draft_operation_is_archived_as_a_step_of_its_tool(client: Client) -> None:
    session_id = await start(client)
    await call(client, "select_reaction", session_id=session_id, reaction="ap")
    await call(client, "select_diffusion", session_id=session_id, template="laplacian_global")
    trained, _ = await train(client, session_id, epochs=1)
    await call(
        client, "refine_diffusion", session_id=session_id,
        candidate_id=trained["candidate_id"], hyperparameters={"conductivity": 2.0},
    )  # fmt: skip
    await fails(client, "refine_diffusion", session_id=session_id,
                candidate_id="c-000000000000", hyperparameters={"conductivity": 2.0})  # fmt: skip
    rows = await call(
        client,
        "query_archive",
        sql="SELECT json_extract_string(action, '$.tool'), observation FROM steps ORDER BY step",
    )
    tools = [row[0] for row in rows["rows"]]
    assert tools == ["select_reaction", "select_diffusion", "select", "refine_diffusion"]
    assert rows["rows"][3][1].startswith(f"draft refines {trained['candidate_id']}")


async def test_a_structure_trained_before_is_refused_without_spending_budget(
    client: Client,
) -> None:
    session_id = await start(client, anonymise=True, budget=3)
    catalog = await call(client, "list_catalogs", session_id=session_id)
    alias = catalog["reactions"][0]["name"]
    await call(client, "select_reaction", session_id=session_id, reaction=alias)
    await call(client, "select_diffusion", session_id=session_id, template="laplacian_global")
    first, _ = await train(client, session_id, epochs=1)
    await call(client, "select_reaction", session_id=session_id, reaction=alias)
    await call(client, "select_diffusion", session_id=session_id, template="laplacian_global")
    text = await fails(client, "train_candidate", session_id=session_id)
    assert f"duplicate of candidate {first['candidate_id']}" in text and "No budget used" in text
    # the draft is kept: one changed hyper-parameter makes it a new structure
    await call(
        client,
        "select_diffusion",
        session_id=session_id,
        template="laplacian_global",
        hyperparameters={"conductivity": 2.0},
    )
    second, _ = await train(client, session_id, epochs=1)
    assert second["budget_left"] == 1 and second["candidate_id"] != first["candidate_id"]
    # a fine-tune of the same structure is no duplicate
    tuned = await call(
        client,
        "finetune_candidate",
        session_id=session_id,
        candidate_id=first["candidate_id"],
        epochs=1,
    )
    assert tuned["operation"] == "finetune"
