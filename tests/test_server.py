"""The MCP server driven through ``mcp.Client`` in memory: every tool, its errors, progress,
anonymisation, resources, cancellation and resuming a session after a restart."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import torch
from leads_server import sessions
from leads_server.app import LeadsServer, build_server
from leads_server.archive import Archive
from leads_server.jobs import sandbox_available
from mcp import Client

from leads_engine.generator import BenchmarkConfig, generate_benchmark
from leads_engine.mesh import make_lv_mesh

pytestmark = pytest.mark.anyio

TOOLS = {
    "list_catalogs",
    "start_session",
    "select_reaction",
    "select_diffusion",
    "refine_diffusion",
    "modify_diffusion",
    "simplify_diffusion",
    "train_candidate",
    "query_archive",
    "get_candidate",
    "finetune_candidate",
    "evaluate_candidate",
    "record_step",
}
REAL_NAMES = ("aliev", "panfilov", "rogers", "mcculloch", "mitchell", "schaeffer", "fenton")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def save_tiny(home: Path, name: str = "tiny", **overrides: Any) -> Path:
    """A 200-node, 4-sample, 40 ms data set (about 0.1 s per training epoch)."""
    settings = {"n_samples": 4, "split_sizes": (2, 1, 1), "duration_ms": 40.0, **overrides}
    nodes = settings.pop("nodes", 200)
    data = generate_benchmark(
        BenchmarkConfig(reaction="ap", **settings), mesh=make_lv_mesh(nodes), name=name
    )
    return data.save(home / "datasets" / f"{name}.npz")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "leads_home"
    monkeypatch.setenv("LEADS_HOME", str(home))
    save_tiny(home)
    return home


@pytest.fixture
def server(home: Path) -> Iterator[LeadsServer]:
    server = build_server(home / "archive.duckdb", compile_training=False)
    yield server
    server.close()


@pytest.fixture
async def client(server: LeadsServer) -> AsyncIterator[Client]:
    async with Client(server) as client:
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool that must succeed; its structured content."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content[0].text
    assert result.structured_content is not None
    return result.structured_content


async def fails(client: Client, tool: str, **arguments: Any) -> str:
    """Call a tool that must fail; its error text."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return result.content[0].text


async def start(client: Client, **arguments: Any) -> str:
    settings = {"dataset": "tiny", "budget": 4, "anonymise": False, "epochs": 2, **arguments}
    return (await call(client, "start_session", **settings))["session_id"]


async def train(client: Client, session_id: str, **arguments: Any) -> tuple[dict, list]:
    events: list[tuple[float, float | None, str | None]] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        events.append((value, total, message))

    result = await client.call_tool(
        "train_candidate", {"session_id": session_id, **arguments}, progress_callback=progress
    )
    assert not result.is_error, result.content[0].text
    return result.structured_content, events


async def test_tools_publish_schemas_and_honest_annotations(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.output_schema and tool.output_schema["type"] == "object", tool.name
        assert tool.input_schema["type"] == "object"
        assert tool.annotations is not None
        assert tool.annotations.destructive_hint is False
        assert tool.annotations.open_world_hint is False
    read_only = {name for name, tool in tools.items() if tool.annotations.read_only_hint}
    assert read_only == {"list_catalogs", "query_archive", "get_candidate"}
    budget = tools["start_session"].input_schema["properties"]["budget"]
    assert budget["minimum"] == 1 and budget["default"] == 15
    templates = await client.list_resource_templates()
    uris = {t.uri_template for t in templates.resource_templates}
    assert uris == {
        "catalog://diffusion/{name}",
        "candidate://{candidate_id}/activation_map.png",
        "candidate://{candidate_id}/training_curves.png",
        "session://{session_id}/summary",
        "candidate://{candidate_id}/weights.pt",
    }


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
    assert [value for value, _, _ in events] == [1.0, 2.0]  # one notification per epoch
    assert all(total == 2.0 for _, total, _ in events)
    assert len(physics["val_losses"]) == 2 and physics["best_val_loss"] > 0
    assert physics["budget_left"] == 3 and physics["diagnosis"]

    # The GAT hybrid: the reaction comes from the previous candidate, which becomes the parent.
    await call(client, "select_diffusion", session_id=session_id, template="gat")
    gat, events = await train(client, session_id, epochs=3)
    assert len(events) == 3 and gat["status"] == "ok"
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
    assert "unknown session" in await fails(client, "select_reaction", session_id="s-nope",
                                            reaction="ap")  # fmt: skip
    assert "start_session" in await fails(client, "train_candidate", session_id="s-nope")
    missing = await fails(client, "start_session", dataset="no_such_set")
    assert "no_such_set" in missing and "leads-data generate" in missing

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


@pytest.mark.parametrize(
    "sql",
    [
        "DROP TABLE candidates",
        "INSERT INTO sessions VALUES ('x')",
        "COPY candidates TO '/tmp/leak.csv'",
        "ATTACH '/tmp/other.duckdb' AS other",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT 1; DROP TABLE candidates",
    ],
)
async def test_query_archive_refuses_writes_and_files(client: Client, sql: str) -> None:
    text = await fails(client, "query_archive", sql=sql)
    assert "query_archive" in text or "disabled" in text
    still = await call(client, "query_archive", sql="SELECT count(*) FROM candidates")
    assert still["rows"] == [[0]]


async def test_anonymised_names_in_archive_queries(client: Client, server: LeadsServer) -> None:
    session_id = await start(client, anonymise=True, seed=1)
    alias = server.service.store.get(session_id).aliases.show("aliev_panfilov")
    await call(client, "select_reaction", session_id=session_id, reaction=alias)
    await call(client, "select_diffusion", session_id=session_id, template="laplacian_global")
    trained, _ = await train(client, session_id, epochs=1)
    assert trained["reaction"] == alias
    result = await call(
        client,
        "query_archive",
        sql=f"SELECT reaction, spec FROM candidates WHERE reaction = '{alias}'",
    )
    assert result["rows"][0][0] == alias and alias in result["rows"][0][1]
    assert "aliev" not in json.dumps(result).lower()
    record = await call(client, "get_candidate", candidate_id=trained["candidate_id"])
    assert "aliev" not in json.dumps(record).lower()
    # The archive itself keeps the real name and the alias map.
    row = server.service.archive.get_candidate(trained["candidate_id"])
    assert row.reaction == "aliev_panfilov"
    config = server.service.archive.get_session(session_id).config
    assert config["aliases"]["aliev_panfilov"] == alias


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
    monkeypatch.setattr(sessions, "sandbox_available", lambda: False)
    session_id = await start(client)
    text = await fails(
        client, "modify_diffusion", session_id=session_id, source=HOSTILE, template="gcn"
    )
    assert "sandbox unavailable" in text


async def test_cancelled_training_is_archived_as_cancelled(
    client: Client, server: LeadsServer
) -> None:
    session_id = await start(client)
    await call(client, "select_reaction", session_id=session_id, reaction="ap")
    await call(client, "select_diffusion", session_id=session_id, template="gcn")
    first_epoch = anyio.Event()

    async def progress(value: float, total: float | None, message: str | None) -> None:
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


async def test_session_resumes_after_a_restart(home: Path) -> None:
    path = home / "archive.duckdb"
    server = build_server(path, compile_training=False)
    try:
        async with Client(server) as client:
            assert "batch_size" in await fails(
                client, "start_session", dataset="tiny", batch_size=0
            )
            session_id = await start(client, anonymise=True, budget=2, batch_size=1)
            assert server.service.store.get(session_id).batch_size == 1
            alias = server.service.store.get(session_id).aliases.show("aliev_panfilov")
            await call(client, "select_reaction", session_id=session_id, reaction=alias)
            await call(client, "select_diffusion", session_id=session_id, template="gcn")
            await train(client, session_id, epochs=1)
    finally:
        server.close()
    server = build_server(path, compile_training=False)
    try:
        async with Client(server) as client:
            await call(
                client, "select_diffusion", session_id=session_id, template="laplacian_global"
            )
            resumed, _ = await train(client, session_id, epochs=1)
            assert resumed["reaction"] == alias and resumed["budget_left"] == 0
            assert server.service.store.get(session_id).batch_size == 1  # kept on resume
            assert "budget exhausted" in await fails(
                client, "train_candidate", session_id=session_id
            )
    finally:
        server.close()
    with Archive.open(path) as archive:
        assert [c.status for c in archive.list_candidates(session_id)] == ["ok", "ok"]
        assert archive.get_session(session_id).status == "finished"  # its budget is spent


def test_a_killed_worker_is_described_in_words() -> None:
    import signal

    from leads_server.jobs import CPU_SECONDS_PER_EPOCH, _describe_exit

    assert "CPU-time limit" in _describe_exit(-signal.SIGXCPU)
    assert "SIGKILL" in _describe_exit(-signal.SIGKILL)
    assert _describe_exit(3) == "exit code 3"
    assert CPU_SECONDS_PER_EPOCH * 10 > 120  # a 10-epoch fine-tune gets more than the default


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
