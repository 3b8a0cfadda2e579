"""Runs (server/runs.py): training with progress, evaluation with figures, fine-tuning,
cancellation, and the same numbers as the engine's own fit."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import anyio
import pytest
import torch
from leads_server.app import LeadsServer
from mcp import Client
from server_calls import call, fails, start, train

pytest_plugins = ("server_fixtures",)
pytestmark = pytest.mark.anyio


async def test_scripted_session_physics_and_gat(client: Client, home: Path) -> None:
    """The physics-style and the GAT hybrid candidates, trained and evaluated through the
    tools alone."""
    session_id = await start(client)
    draft = await call(client, "select_reaction", session_id=session_id, reaction="aliev_panfilov")
    assert draft["draft"]["reaction"] == "aliev_panfilov"
    draft = await call(
        client, "select_diffusion", session_id=session_id, template="laplacian_nodewise"
    )
    assert draft["draft"]["parameter_count"] > 200  # one conductivity per node + reaction

    physics, events = await train(client, session_id)
    assert physics["status"] == "ok" and physics["operation"] == "select"
    epochs = [value for value, _, message in events if "batch" not in message]
    assert epochs == [1.0, 2.0]  # one notification per epoch, besides those per batch
    assert all(total == 2.0 for _, total, _ in events)
    assert len(physics["val_losses"]) == 2 and physics["best_val_loss"] > 0
    assert physics["budget_left"] == 3 and physics["diagnosis"]

    # The GAT hybrid: the reaction comes from the previous candidate, which becomes the parent.
    await call(client, "select_diffusion", session_id=session_id, template="gat")
    gat, events = await train(client, session_id, epochs=3)
    assert len([e for e in events if "batch" not in e[2]]) == 3 and gat["status"] == "ok"
    assert gat["reaction"] == "aliev_panfilov" and gat["parent_id"] == physics["candidate_id"]

    for candidate in (physics, gat):
        scores = await call(
            client,
            "evaluate_candidate",
            session_id=session_id,
            candidate_id=candidate["candidate_id"],
        )
        assert scores["mse"] > 0 and scores["at_mae_ms"] is not None
        folder = home / "runs" / session_id / candidate["candidate_id"]
        assert (folder / "activation_map.png").exists()
        assert (folder / "training_curves.png").exists()
        for uri in (scores["activation_map_uri"], scores["training_curves_uri"]):
            content = (await client.read_resource(uri)).contents[0]
            assert content.mime_type == "image/png" and content.blob

    record = await call(client, "get_candidate", candidate_id=gat["candidate_id"])
    assert len(record["epochs"]) == 3 and record["evaluations"][0]["split"] == "test"
    assert record["has_weights"] and record["spec"]["diffusion"] == "gat"

    tuned = await client.call_tool(
        "finetune_candidate",
        {"session_id": session_id, "candidate_id": physics["candidate_id"], "epochs": 1},
    )
    tuned = tuned.structured_content
    assert tuned["operation"] == "finetune" and tuned["parent_id"] == physics["candidate_id"]
    assert tuned["budget_left"] == 2  # fine-tuning uses no search budget

    rows = await call(
        client,
        "query_archive",
        sql="SELECT operation, count(*) AS n FROM candidates GROUP BY operation ORDER BY 1",
    )
    assert rows["rows"] == [["finetune", 1], ["select", 2]]
    epochs = await call(client, "query_archive", sql="SELECT count(*) FROM epochs")
    assert epochs["rows"] == [[6]]
    summary = await client.read_resource(f"session://{session_id}/summary")
    summary = json.loads(summary.contents[0].text)
    assert summary["steps_used"] == 2 and len(summary["candidates"]) == 3

    # the weights come back loadable (weights_only) and the agent's steps go to the archive
    blob = await client.read_resource(f"candidate://{gat['candidate_id']}/weights.pt")
    state = torch.load(
        io.BytesIO(
            blob.contents[0].blob
            if isinstance(blob.contents[0].blob, bytes)
            else base64.b64decode(blob.contents[0].blob)
        ),
        weights_only=True,
    )
    assert any(key.startswith("diffusion.") for key in state)
    step = await call(
        client,
        "record_step",
        session_id=session_id,
        thought="physics first, then GAT",
        action={"tool": "train_candidate"},
        observation="both trained",
    )
    rows = await call(
        client, "query_archive", sql=f"SELECT thought FROM steps WHERE step = {step['step']}"
    )
    assert rows["rows"] == [["physics first, then GAT"]]


async def test_cancelled_training_is_archived_as_cancelled(
    client: Client, server: LeadsServer
) -> None:
    session_id = await start(client)
    await call(client, "select_reaction", session_id=session_id, reaction="ap")
    await call(client, "select_diffusion", session_id=session_id, template="gcn")
    first_epoch = anyio.Event()

    async def progress(value: float, total: float | None, message: str | None) -> None:
        if "batch" not in (message or ""):
            first_epoch.set()

    async with anyio.create_task_group() as group:

        async def run() -> None:
            await client.call_tool(
                "train_candidate",
                {"session_id": session_id, "epochs": 100},
                progress_callback=progress,
            )

        group.start_soon(run)
        with anyio.fail_after(60):
            await first_epoch.wait()
        group.cancel_scope.cancel()
    archive = server.service.archive
    with anyio.fail_after(20):
        while archive.list_candidates(session_id)[0].status == "pending":
            await anyio.sleep(0.05)
    candidate = archive.list_candidates(session_id)[0]
    assert candidate.status == "cancelled"
    assert 1 <= len(archive.get_candidate(candidate.candidate_id).epochs) < 100


async def test_a_session_through_the_tools_reproduces_the_engine(
    client: Client, home: Path
) -> None:
    """The physics-oracle and GAT candidates trained through the tools give exactly the numbers
    of the engine's own ``fit`` with the same spec, seed and settings."""
    from leads_engine.dataset import load_dataset
    from leads_engine.spec import CandidateSpec
    from leads_engine.training import TrainingConfig, fit

    session_id = await start(client)
    dataset = load_dataset("tiny")
    for template in ("laplacian_nodewise", "gat"):
        await call(client, "select_reaction", session_id=session_id, reaction="aliev_panfilov")
        await call(client, "select_diffusion", session_id=session_id, template=template)
        served, _ = await train(client, session_id)
        spec = CandidateSpec(reaction="aliev_panfilov", diffusion=template, seed=0)
        engine = fit(spec, dataset, TrainingConfig(epochs=2, compile=False))
        assert served["val_losses"] == pytest.approx(engine.val_losses, rel=1e-6)
        assert served["train_losses"] == pytest.approx(engine.train_losses, rel=1e-6)


async def test_a_divergence_at_the_first_epoch_returns_unstable(client: Client, home: Path) -> None:
    """The issue's repro: no weights at all, still a normal result, one budget step spent."""
    session_id = await start(client, epochs=1)
    await call(client, "select_reaction", session_id=session_id, reaction="aliev_panfilov")
    await call(
        client,
        "select_diffusion",
        session_id=session_id,
        template="laplacian_global",
        hyperparameters={"conductivity": 100.0},
    )
    result, _ = await train(client, session_id, epochs=1)
    assert result["status"] == result["verdict"] == "unstable"
    assert result["failure"]["epoch"] == 1 and result["failure"]["step"] >= 0
    assert result["best_epoch"] is None and result["error"] is None
    assert (result["steps_used"], result["budget_left"]) == (1, 3)
    rows = await call(client, "query_archive", sql="SELECT status FROM candidates")
    assert rows["rows"] == [["unstable"]]
    message = await fails(
        client, "evaluate_candidate", session_id=session_id, candidate_id=result["candidate_id"]
    )
    assert "has no weights (status unstable)" in message


async def test_an_archive_write_failure_never_leaves_the_candidate_pending(
    client: Client, server: LeadsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storing the result fails (as on a full disk): the candidate is marked failed with the
    cause, and the caller is told."""
    from leads_server.archive import Archive, ArchiveError

    archive = server.service.archive
    finish = Archive.finish_candidate

    def full_disk(self: Archive, candidate_id: str, status: str, **fields: object) -> None:
        if fields.get("weights") is not None:
            raise ArchiveError("archive write failed: IO Error: No space left on device")
        finish(self, candidate_id, status, **fields)

    monkeypatch.setattr(Archive, "finish_candidate", full_disk)
    session_id = await start(client)
    await call(client, "select_reaction", session_id=session_id, reaction="aliev_panfilov")
    await call(client, "select_diffusion", session_id=session_id, template="laplacian_global")
    message = await fails(client, "train_candidate", session_id=session_id, epochs=1)
    assert "could not store the result" in message and "No space left" in message
    (candidate,) = archive.list_candidates(session_id)
    assert candidate.status == "failed"
    assert "No space left" in archive.get_candidate(candidate.candidate_id).error


async def test_a_server_error_after_the_fit_finishes_the_candidate(
    client: Client, server: LeadsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leads_server import runs

    def broken(*args: object) -> dict:
        raise KeyError("weights")

    monkeypatch.setattr(runs, "_final_state", broken)
    session_id = await start(client)
    await call(client, "select_reaction", session_id=session_id, reaction="aliev_panfilov")
    await call(client, "select_diffusion", session_id=session_id, template="laplacian_global")
    await fails(client, "train_candidate", session_id=session_id, epochs=1)
    (candidate,) = server.service.archive.list_candidates(session_id)
    assert candidate.status == "failed"
    detail = server.service.archive.get_candidate(candidate.candidate_id)
    assert detail.error == "server error: KeyError: 'weights'"
