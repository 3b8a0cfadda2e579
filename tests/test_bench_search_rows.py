"""Search rows: the HDTwinGen-style row's setup, and a search's result read back through the
server's tools only, with the figures a local evaluation of the same weights gives."""

from __future__ import annotations

import json
from pathlib import Path

from leads_bench.config import BenchConfig, Run
from leads_bench.search_rows import HDTWINGEN_PROMPT, search_setup

from leads_engine.generator import BenchmarkConfig, generate_benchmark
from leads_engine.heart_mesh import make_lv_mesh


def test_hdtwingen_row_trains_the_llm_s_free_form_code_in_the_sandbox(tmp_path, monkeypatch):
    """The HDTwinGen-style row: the LLM (a fake OpenAI-compatible endpoint) gets the free-form
    prompt, writes a whole diffusion module, and the search trains it in the sandbox with the
    neural reaction, to the end (fine-tuning and test evaluation included)."""
    import asyncio

    import httpx2
    from leads_agent.agent import run_search
    from leads_agent.connection import connect
    from leads_agent.llm import LLMPolicy, RetryPolicy, agent_tools
    from leads_agent.openai_provider import OpenAIBackend
    from leads_agent.ui import QuietView
    from leads_catalogs import diffusion as catalog
    from leads_server.app import build_server

    home = tmp_path / "home"
    monkeypatch.setenv("LEADS_HOME", str(home))
    config = BenchmarkConfig(reaction="ap", n_samples=4, split_sizes=(2, 1, 1), duration_ms=30.0)
    dataset_path = home / "datasets" / "tiny.npz"
    generate_benchmark(config, mesh=make_lv_mesh(200), name="tiny").save(dataset_path)
    # free-form code: the LLM's own module (here a damped global Laplacian it wrote)
    source = (Path(catalog.__file__).parent / "laplacian_global.py").read_text()
    source = source.replace(
        "return self.conductivity * graph.edge_weight",
        "return 0.9 * self.conductivity * graph.edge_weight",
    )
    assert "0.9 * self.conductivity" in source
    requests: list[dict] = []

    def reply(message: dict) -> httpx2.Response:
        usage = {"prompt_tokens": 10, "completion_tokens": 5}
        choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}
        return httpx2.Response(200, json={"choices": [choice], "usage": usage})

    def handler(request: httpx2.Request) -> httpx2.Response:
        requests.append(json.loads(request.content))
        if len(requests) % 2 == 0:
            return reply({"content": "The module is set up."})
        calls = [
            ("a", "select_reaction", {"reaction": "neural"}),
            ("b", "modify_diffusion", {"template": "laplacian_global", "source": source}),
        ]
        return reply(
            {
                "content": "I write my own operator.",
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(arguments)},
                    }
                    for call_id, name, arguments in calls
                ],
            }
        )

    run_config, prompt = search_setup(
        Run("hdtwingen", "tiny", 0),
        dataset_path,
        BenchConfig(out=tmp_path, budget=1, epochs=1, finetune=1, llm="openai"),
    )
    assert prompt == HDTWINGEN_PROMPT and run_config.fixed_reaction == "neural"

    async def search():
        server = build_server(home / "archive.duckdb", compile_training=False)
        try:
            async with connect(server=server) as conn:
                backend = OpenAIBackend(
                    agent_tools(conn.tools),
                    model="fake",
                    base_url="http://llm.local/v1",
                    http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
                    retry=RetryPolicy(sleep=lambda _: asyncio.sleep(0)),
                    system_prompt=prompt,
                )
                return await run_search(conn, LLMPolicy(backend), run_config, QuietView())
        finally:
            server.close()

    result = asyncio.run(search())
    assert requests[0]["messages"][0] == {"role": "system", "content": HDTWINGEN_PROMPT}
    assert result.completed and result.best is not None
    assert result.best.reaction == "neural" and result.best.operation == "modify"
    assert result.evaluation and result.evaluation["mse"] > 0


def test_a_search_row_reads_the_figures_a_local_evaluation_gives(tmp_path, leads_home):
    """A LEADS search row's figures come from the server's tools: the test scores of
    ``evaluate_candidate``, the real-named structure of ``query_archive`` and the first test
    beat's activation maps from the weights resource are those of evaluating the same weights
    on the same split here."""
    import io
    import math

    import numpy as np
    import torch
    from leads_bench.records import training_config
    from leads_bench.search_rows import run_search_row
    from leads_server.archive import Archive
    from leads_server.archive.truth import TruthStore

    from leads_engine.dataset import load_dataset
    from leads_engine.spec import CandidateSpec
    from leads_engine.training import evaluate

    config = BenchmarkConfig(reaction="rm", n_samples=5, split_sizes=(2, 1, 2), duration_ms=30.0)
    dataset_path = leads_home / "datasets" / "tiny_rm.npz"
    generate_benchmark(config, mesh=make_lv_mesh(200), name="tiny_rm").save(dataset_path)
    bench = BenchConfig.quick_defaults(tmp_path / "out", budget=1, epochs=1, finetune=1)
    record = run_search_row(Run("leads-offline", "tiny_rm", 0), dataset_path, bench, lambda _: None)

    final_id = record["details"]["test"]["candidate_id"]
    archive = Archive.open(Path(record["archive"]))
    try:
        shown = archive.get_candidate(final_id).spec  # under the session's alias
        weights = archive.get_weights(final_id)
    finally:
        archive.close()
    truth = TruthStore(record["archive"]).read(record["session_id"])
    assert shown["reaction"] in truth.aliases.values()
    real_of = {alias: real for real, alias in truth.aliases.items()}
    spec = CandidateSpec(**{**shown, "reaction": real_of[shown["reaction"]]})
    state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    dataset = load_dataset(dataset_path)
    local = evaluate(spec, dataset, state, "test", training_config(bench))
    assert len(local.per_sample_mse) == 2
    assert record["test_mse"] == local.mse == record["server_test_mse"]
    mae = local.activation_error.mae
    assert record["test_at_mae_ms"] == mae or (
        math.isnan(mae) and math.isnan(record["test_at_mae_ms"])
    )
    assert record["test_at_missed"] == local.activation_error.missed_fraction
    assert (record["reaction"], record["diffusion"]) == (spec.reaction, spec.diffusion)
    assert not record["reaction"].startswith("reaction_")  # the real name, not the alias
    assert record["true_reaction"] == "rogers_mcculloch"
    np.testing.assert_array_equal(record["_at_pred"], local.at_pred[:1])
    np.testing.assert_array_equal(record["_at_true"], local.at_true[:1])


def test_an_interrupted_search_s_session_is_found_through_query_archive(tmp_path, leads_home):
    """A rerun resumes the session its run's archive holds (none in a new archive), which the
    bench finds through its truth file and the server's query_archive tool."""
    import asyncio

    from leads_agent.connection import connect
    from leads_bench.search_rows import session_to_resume
    from leads_server.app import build_server

    config = BenchmarkConfig(reaction="ap", n_samples=4, split_sizes=(2, 1, 1), duration_ms=30.0)
    dataset_path = leads_home / "datasets" / "tiny.npz"
    generate_benchmark(config, mesh=make_lv_mesh(200), name="tiny").save(dataset_path)

    async def sessions() -> tuple[str | None, str, str | None]:
        server = build_server(tmp_path / "run.duckdb", compile_training=False)
        try:
            async with connect(server=server) as conn:
                archive = tmp_path / "run.duckdb"
                before = await session_to_resume(conn, archive)
                started = await conn.call("start_session", {"dataset": str(dataset_path)})
                return (
                    before,
                    started.as_dict()["session_id"],
                    await session_to_resume(conn, archive),
                )
        finally:
            server.close()

    before, session_id, found = asyncio.run(sessions())
    assert before is None
    assert found == session_id
