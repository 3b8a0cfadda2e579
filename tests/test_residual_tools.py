"""Hybrid residual reactions through the MCP tools: select_reaction(reaction, residual={...}),
training with the residual's share reported (result, text, archive), duplicates, refine,
fine-tuning from the stored weights, evaluation, anonymised sessions and clear refusals."""

from __future__ import annotations

import base64
import io

import pytest
import torch
from mcp import Client
from server_calls import call, fails, start, train

pytest_plugins = ("server_fixtures",)
pytestmark = pytest.mark.anyio

RESIDUAL = {"hidden": 8, "layers": 1, "penalty": 0.01}


async def _weights(client: Client, candidate_id: str) -> dict[str, torch.Tensor]:
    blob = (await client.read_resource(f"candidate://{candidate_id}/weights.pt")).contents[0].blob
    raw = blob if isinstance(blob, bytes) else base64.b64decode(blob)
    return torch.load(io.BytesIO(raw), weights_only=True)


async def test_a_residual_candidate_trains_reloads_and_evaluates_through_the_tools(
    client: Client,
) -> None:
    session_id = await start(client, budget=5)
    draft = await call(
        client, "select_reaction", session_id=session_id, reaction="ap", residual=RESIDUAL
    )
    assert draft["draft"]["reaction"] == "aliev_panfilov"
    assert draft["draft"]["reaction_residual"] == RESIDUAL
    assert "neural residual (hidden 8, layers 1" in draft["message"]
    draft = await call(
        client, "select_diffusion", session_id=session_id, template="laplacian_global"
    )
    assert draft["draft"]["parameter_count"] > 7 + 3 * 8  # the reaction, the MLP, conductivity

    hybrid, _ = await train(client, session_id)
    assert hybrid["status"] == "ok", hybrid
    residual = hybrid["residual"]
    assert {k: residual[k] for k in RESIDUAL} == RESIDUAL
    assert 0.0 < residual["share"] < 0.5 and 0.0 <= residual["share_u"] < 0.5
    assert residual["states"] > 0
    text = await client.call_tool(
        "get_candidate", {"candidate_id": hybrid["candidate_id"], "include_images": False}
    )
    assert "Hybrid reaction: neural residual" in text.content[0].text
    record = text.structured_content
    assert record["spec"]["reaction_residual"] == RESIDUAL
    assert record["metrics"]["residual"]["share"] == pytest.approx(residual["share"])
    state = await _weights(client, hybrid["candidate_id"])
    assert any(key.startswith("reaction.mlp.") for key in state)
    assert "reaction.base.raw_k" in state

    # the same structure again is a duplicate; the plain catalog reaction is not
    await call(client, "select_reaction", session_id=session_id, reaction="ap", residual=RESIDUAL)
    await call(client, "select_diffusion", session_id=session_id, template="laplacian_global")
    refused = await client.call_tool("train_candidate", {"session_id": session_id})
    assert refused.is_error and "duplicate of candidate" in refused.content[0].text
    await call(client, "select_reaction", session_id=session_id, reaction="ap")
    plain, _ = await train(client, session_id)
    assert plain["status"] == "ok" and plain["residual"] is None

    # refining the hybrid's diffusion keeps its residual
    await call(
        client,
        "refine_diffusion",
        session_id=session_id,
        candidate_id=hybrid["candidate_id"],
        hyperparameters={"conductivity": 1.5},
    )
    refined, _ = await train(client, session_id)
    assert refined["status"] == "ok" and refined["residual"]["hidden"] == 8
    assert refined["parent_id"] == hybrid["candidate_id"]

    # fine-tuning starts from the stored weights (the residual's included) and reports it
    # (with smaller steps and a warm-up; both archived with the candidate)
    tuned = await client.call_tool(
        "finetune_candidate",
        {
            "session_id": session_id,
            "candidate_id": hybrid["candidate_id"],
            "epochs": 1,
            "learning_rate_scale": 0.3,
            "warmup_epochs": 0.5,
        },
    )
    assert not tuned.is_error, tuned.content[0].text
    tuned = tuned.structured_content
    assert tuned["status"] == "ok" and tuned["residual"]["hidden"] == 8
    assert tuned["val_losses"][0] <= hybrid["best_val_loss"] * 1.5
    record = await call(client, "get_candidate", candidate_id=tuned["candidate_id"])
    assert record["metrics"]["learning_rate_scale"] == 0.3
    assert record["metrics"]["warmup_epochs"] == 0.5
    trained = (await call(client, "get_candidate", candidate_id=hybrid["candidate_id"]))["metrics"]
    assert "learning_rate_scale" not in trained and "warmup_epochs" not in trained
    for scale in (0.0, 1.5):
        text = await fails(
            client,
            "finetune_candidate",
            session_id=session_id,
            candidate_id=hybrid["candidate_id"],
            learning_rate_scale=scale,
        )
        assert "learning_rate_scale" in text
    text = await fails(
        client,
        "finetune_candidate",
        session_id=session_id,
        candidate_id=hybrid["candidate_id"],
        warmup_epochs=-1,
    )
    assert "warmup_epochs" in text

    # evaluating the stored weights on the validation split gives the trained val loss back
    scores = await call(
        client,
        "evaluate_candidate",
        session_id=session_id,
        candidate_id=hybrid["candidate_id"],
        split="val",
    )
    assert scores["mse"] == pytest.approx(hybrid["best_val_loss"], rel=1e-4)
    rows = await call(
        client,
        "query_archive",
        sql="SELECT count(*) FROM candidates WHERE json_extract(metrics, '$.residual') "
        "IS NOT NULL AND json_extract_string(metrics, '$.residual') <> 'null'",
    )
    assert rows["rows"] == [[3]]  # the hybrid, its refinement and its fine-tuning


async def test_residual_options_are_refused_with_a_clear_message(client: Client) -> None:
    session_id = await start(client)
    text = await fails(
        client, "select_reaction", session_id=session_id, reaction="ap", residual={"hidden": 999}
    )
    assert "hidden" in text and "4-128" in text
    text = await fails(
        client, "select_reaction", session_id=session_id, reaction="ap", residual={"width": 3}
    )
    assert "width" in text and "Allowed" in text
    text = await fails(
        client, "select_reaction", session_id=session_id, reaction="neural", residual={}
    )
    assert "already a network" in text
    # the defaults: {} is a residual of 16 hidden units, 2 layers, penalty 0.1
    draft = await call(client, "select_reaction", session_id=session_id, reaction="ms", residual={})
    assert draft["draft"]["reaction_residual"] == {"hidden": 16, "layers": 2, "penalty": 0.1}


async def test_an_anonymised_session_takes_a_residual_on_an_alias(client: Client) -> None:
    started = await call(
        client, "start_session", dataset="tiny", budget=2, epochs=1, anonymise=True
    )
    session_id, alias = started["session_id"], started["reactions"][0]
    assert alias.startswith("reaction_")
    await fails(client, "select_reaction", session_id=session_id, reaction="ap", residual=RESIDUAL)
    draft = await call(
        client, "select_reaction", session_id=session_id, reaction=alias, residual=RESIDUAL
    )
    assert draft["draft"]["reaction"] == alias
    await call(client, "select_diffusion", session_id=session_id, template="laplacian_global")
    result = await client.call_tool("train_candidate", {"session_id": session_id})
    assert not result.is_error, result.content[0].text
    trained = result.structured_content
    assert trained["status"] == "ok" and trained["reaction"] == alias
    assert trained["residual"]["hidden"] == 8
    text = result.content[0].text
    assert "Hybrid reaction" in text
    for real in ("aliev", "panfilov", "rogers", "mitchell", "fenton", "fitzhugh"):
        assert real not in text.lower()
