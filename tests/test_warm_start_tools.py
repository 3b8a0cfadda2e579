"""train_candidate(warm_start=[...]) through the MCP tools: a combination of a residual found on
one operator and another operator starts from both (result, archive), in the
background too; refusals (unknown, foreign, untrained, unrelated candidates) spend no budget
and keep the draft."""

from __future__ import annotations

import re

import pytest
from mcp import Client
from server_calls import call, fails, start, train

from leads_engine.warm_start import WARMUP_EPOCHS

pytest_plugins = ("server_fixtures",)
pytestmark = pytest.mark.anyio

RESIDUAL = {"hidden": 8, "layers": 1, "penalty": 0.01}


async def _select(client: Client, session_id: str, template: str, residual: bool) -> None:
    extra = {"residual": RESIDUAL} if residual else {}
    await call(client, "select_reaction", session_id=session_id, reaction="ap", **extra)
    await call(client, "select_diffusion", session_id=session_id, template=template)


async def test_a_combination_starts_from_its_parents(client: Client) -> None:
    session_id = await start(client, budget=5, epochs=1)
    await _select(client, session_id, "laplacian_global", residual=True)
    hybrid, _ = await train(client, session_id)
    await _select(client, session_id, "laplacian_nodewise", residual=False)
    operator, _ = await train(client, session_id)
    assert hybrid["status"] == operator["status"] == "ok"
    parents = [hybrid["candidate_id"], operator["candidate_id"]]

    await _select(client, session_id, "laplacian_nodewise", residual=True)
    combined, _ = await train(client, session_id, warm_start=parents, learning_rate_scale=0.3)
    assert combined["status"] == "ok", combined
    expected = {"reaction": parents[0], "residual": parents[0], "diffusion": parents[1]}
    assert combined["warm_start"] == expected
    assert combined["budget_left"] == 2
    record = await call(client, "get_candidate", candidate_id=combined["candidate_id"])
    assert record["metrics"]["warm_start"] == expected
    assert record["metrics"]["learning_rate_scale"] == 0.3
    assert record["metrics"]["warmup_epochs"] == WARMUP_EPOCHS  # a warm start warms up
    parent = await call(client, "get_candidate", candidate_id=parents[0])
    assert "warmup_epochs" not in parent["metrics"]  # a fit from scratch does not

    # the copy itself (tensors from the parents, a fresh rest) is checked at the worker:
    # tests/test_jobs.py and tests/test_warm_start.py


async def test_a_background_training_takes_a_warm_start(client: Client) -> None:
    session_id = await start(client, budget=3, epochs=1)
    await _select(client, session_id, "laplacian_global", residual=False)
    plain, _ = await train(client, session_id)
    await _select(client, session_id, "laplacian_global", residual=True)
    started = await call(
        client,
        "train_candidate",
        session_id=session_id,
        wait=False,
        warm_start=[plain["candidate_id"]],
    )
    assert started["status"] == "training"
    done = {"status": "training"}
    while done["status"] == "training":  # a final status comes back within the tool's wait
        done = await call(
            client, "wait_candidate", candidate_id=started["candidate_id"], timeout_s=50
        )
    assert done["status"] == "ok", done
    assert done["result"]["warm_start"] == {
        "reaction": plain["candidate_id"],
        "diffusion": plain["candidate_id"],
    }


async def test_warm_starts_that_cannot_work_are_refused_without_spending(client: Client) -> None:
    session_id = await start(client, budget=3, epochs=1)
    other = await start(client, budget=2, epochs=1)
    await _select(client, other, "laplacian_global", residual=False)
    foreign, _ = await train(client, other)
    await _select(client, session_id, "laplacian_global", residual=False)
    plain, _ = await train(client, session_id)

    await call(client, "select_reaction", session_id=session_id, reaction="ms")
    await call(client, "select_diffusion", session_id=session_id, template="gcn")
    for warm_start, message in [
        (["c-000000000000"], "unknown candidate"),
        ([foreign["candidate_id"]], "belongs to session"),
        ([plain["candidate_id"]], "shares no part with the draft"),
        ([plain["candidate_id"]] * 2, "different candidate ids"),
    ]:
        text = await fails(client, "train_candidate", session_id=session_id, warm_start=warm_start)
        assert re.search(message, text), text
    # nothing was spent and the draft is still there: it trains as it is
    trained, _ = await train(client, session_id)
    assert trained["reaction"] == "mitchell_schaeffer" and trained["diffusion"] == "gcn"
    assert trained["budget_left"] == 1 and trained["warm_start"] is None
