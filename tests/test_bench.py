"""The paper-table benchmark: fit cache, table arithmetic, orderings, and the quick run."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from leads_agent.bench import (
    METHODS,
    BenchConfig,
    Run,
    check_orderings,
    main,
    planned_runs,
    run_bench,
    summarise,
)

from leads_engine.fit_cache import FitCache, fit_key
from leads_engine.generator import BenchmarkConfig, generate_benchmark
from leads_engine.spec import CandidateSpec
from leads_engine.training import TrainingConfig

FAST = TrainingConfig(epochs=2, batch_size=2, steps_per_frame=5, compile=False)


@pytest.fixture(scope="module")
def tiny(small_mesh):
    config = BenchmarkConfig(
        reaction="ap", n_samples=5, split_sizes=(3, 1, 1), duration_ms=30.0, seed=2
    )
    return generate_benchmark(config, mesh=small_mesh, name="tiny_bench")


def test_fit_cache_trains_once_and_returns_the_same_fit(tiny, tmp_path):
    cache = FitCache(tmp_path / "fits")
    spec = CandidateSpec(reaction="ap", diffusion="laplacian_global", seed=3)
    first = cache(spec, tiny, FAST)
    second = FitCache(tmp_path / "fits")(spec, tiny, FAST)  # a new process would do this
    assert (cache.misses, cache.hits) == (1, 0)
    assert second.val_losses == first.val_losses
    assert second.diagnosis.text == first.diagnosis.text
    for name, value in first.state_dict.items():
        assert torch.equal(second.state_dict[name], value)
    # fine-tuning from those weights is a different fit; other settings are too
    assert fit_key(spec, tiny, FAST, first.state_dict) != fit_key(spec, tiny, FAST)
    assert fit_key(spec, tiny, FAST) != fit_key(spec, tiny, TrainingConfig(epochs=3))
    assert fit_key(spec.model_copy(update={"seed": 4}), tiny, FAST) != fit_key(spec, tiny, FAST)
    # the same name regenerated with other data is another fit
    changed = dataclasses.replace(tiny, u=tiny.u * 0.5)
    assert fit_key(spec, changed, FAST) != fit_key(spec, tiny, FAST)
    # settings left to the template and the template's own, spelt out, are the same fit
    default = TrainingConfig(epochs=3)
    spelt_out = TrainingConfig(epochs=3, batch_size=2, conductivity_learning_rate=0.03)
    assert fit_key(spec, tiny, default) == fit_key(spec, tiny, spelt_out)
    gat = spec.model_copy(update={"diffusion": "gat"})
    assert fit_key(gat, tiny, default) != fit_key(gat, tiny, spelt_out)


def test_fit_cache_ignores_a_torn_entry(tiny, tmp_path):
    cache = FitCache(tmp_path)
    spec = CandidateSpec(reaction="ap", diffusion="laplacian_global")
    key = fit_key(spec, tiny, FAST)
    (tmp_path / f"{key}.json").write_text("{not json")  # a crash mid-write of an old version
    result = cache(spec, tiny, FAST)
    assert result.status == "ok" and cache.misses == 1
    assert json.loads((tmp_path / f"{key}.json").read_text())["status"] == "ok"


def _record(method: str, dataset: str, seed: int, mse: float, identified: bool = True) -> dict:
    return {
        "method": method,
        "dataset": dataset,
        "seed": seed,
        "test_mse": mse,
        "test_at_mae_ms": 10 * mse,
        "reaction": "r",
        "diffusion": "d",
        "reaction_identified": identified,
        "wall_seconds": 1.0,
    }


def _records(leads: dict[str, float], identified: bool = True) -> list[dict]:
    base = {"physics": 0.1, "hybrid-gat": 1.0, "all-neural": 3.0}
    records = []
    for seed in (0, 1):
        for dataset in ("ap", "rm"):
            for method, mse in base.items():
                records.append(_record(method, dataset, seed, mse * (1 + 0.1 * seed)))
            records.append(
                _record("leads-offline", dataset, seed, leads[dataset], identified or seed == 0)
            )
    return records


def test_summary_averages_seeds_and_sets():
    table = summarise(_records({"ap": 0.5, "rm": 0.3}), ["ap", "rm"])
    gat = table["hybrid-gat"]
    assert gat["per_dataset"]["ap"]["mse"] == pytest.approx(1.05)
    assert gat["per_dataset"]["ap"]["mse_sd"] == pytest.approx(0.0707, abs=1e-4)
    assert gat["per_dataset"]["ap"]["seeds"] == [0, 1]
    assert gat["mse_avg"] == pytest.approx(1.05)
    assert table["leads-offline"]["mse_over_gat"] == pytest.approx(0.4 / 1.05)
    assert list(table) == ["physics", "hybrid-gat", "all-neural", "leads-offline"]


def test_orderings_pass_and_fail_on_the_numbers():
    good = check_orderings(summarise(_records({"ap": 0.5, "rm": 0.3}), ["ap", "rm"]), ["ap", "rm"])
    assert [c.passed for c in good] == [True] * 5
    # LEADS worse than the GAT hybrid on rm, below the oracle on ap, and one seed misidentified
    bad = check_orderings(
        summarise(_records({"ap": 0.05, "rm": 2.0}, identified=False), ["ap", "rm"]), ["ap", "rm"]
    )
    verdict = {c.name: c for c in bad}
    oracle = next(c for name, c in verdict.items() if "oracle" in name)
    assert not oracle.passed and "ap: leads-offline 0.05" in oracle.detail
    failed = [name for name, c in verdict.items() if not c.passed]
    assert any("identifies" in name for name in failed)
    assert any("Hybrid GAT" in name for name in failed)
    assert any("26.7/37.6" in name for name in failed)
    assert not any("All-Neural" in name for name in failed)  # 2.0 < 3.0 still


def test_llm_rows_are_skipped_without_a_provider(tmp_path):
    runs, skipped = planned_runs(BenchConfig(out=tmp_path, seeds=(0, 1), methods=METHODS))
    assert set(skipped) == {"leads-llm", "hdtwingen"}
    assert "--llm" in skipped["hdtwingen"]
    assert len(runs) == 6 * 3 * 2
    assert runs[0].method == "leads-offline"  # the longest runs start first
    with pytest.raises(ValueError, match="unknown method"):
        planned_runs(BenchConfig(out=tmp_path, methods=("physics", "nope")))


def test_bench_refuses_an_llm_without_its_key(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(Exception, match="ANTHROPIC_API_KEY"):
        main(["--quick", "--out", str(tmp_path), "--llm", "anthropic"])


def test_quick_bench_runs_the_whole_table_and_resumes(tmp_path: Path, leads_home):
    """The CI run: every method of the paper on the three quick sets; the orderings the paper
    reports hold; a rerun resumes from the stored runs, redoing only a lost one."""
    out = tmp_path / "bench"
    result = run_bench(BenchConfig.quick_defaults(out))
    assert not result.failures, result.failures
    assert set(result.table) == {
        "physics",
        "hybrid-gat",
        "diff-only",
        "react-only",
        "all-neural",
        "leads-offline",
    }
    for check in result.checks:
        assert check.passed, f"{check.name}: {check.detail}"
    assert len(result.checks) == 5
    for entry in result.table.values():
        for per in entry["per_dataset"].values():
            assert per["seeds"] == [0] and per["mse"] > 0
    markdown = result.paths["markdown"].read_text()
    assert "| LEADS (offline policy) |" in markdown and "Not run: LEADS (LLM)" in markdown
    payload = json.loads(result.paths["json"].read_text())
    assert len(payload["runs"]) == 18 and payload["table"]["physics"]["mse_avg"] > 0
    assert result.paths["figure"].stat().st_size > 10_000
    # one run lost (a crash before it was written): only that one is redone
    lost = Run("physics", "rm", 0)
    (out / "runs" / f"{lost.key}.json").unlink()
    started = time.perf_counter()
    again = run_bench(BenchConfig.quick_defaults(out))
    assert time.perf_counter() - started < 60
    assert (
        again.table["physics"]["per_dataset"]["rm"] == result.table["physics"]["per_dataset"]["rm"]
    )


def test_hdtwingen_row_trains_the_llm_s_free_form_code_in_the_sandbox(tmp_path, monkeypatch):
    """The HDTwinGen-style row: the LLM (a fake OpenAI-compatible endpoint) gets the free-form
    prompt, writes a whole diffusion module, and the search trains it in the sandbox with the
    neural reaction, to the end (fine-tuning and test evaluation included)."""
    import asyncio

    import httpx2
    from leads_agent.agent import run_search
    from leads_agent.bench import HDTWINGEN_PROMPT, search_setup
    from leads_agent.connection import connect
    from leads_agent.llm import LLMPolicy, RetryPolicy, agent_tools
    from leads_agent.openai_provider import OpenAIBackend
    from leads_agent.ui import QuietView
    from leads_catalogs import diffusion as catalog
    from leads_server.app import build_server

    home = tmp_path / "home"
    monkeypatch.setenv("LEADS_HOME", str(home))
    config = BenchmarkConfig(reaction="ap", n_samples=4, split_sizes=(2, 1, 1), duration_ms=30.0)
    from leads_engine.mesh import make_lv_mesh

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


_KILLED_PARENT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from leads_agent.bench import _stop_with_parent

if __name__ == "__main__":
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_stop_with_parent,
                             initargs=(os.getpid(),)) as pool:
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(time.sleep, 120)
        time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_bench_workers_stop_when_the_bench_process_is_killed(tmp_path):
    """A SIGKILLed bench leaves no worker busy with a run nobody will collect."""
    script = tmp_path / "parent.py"
    script.write_text(_KILLED_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        assert _alive(worker)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker), "the worker outlived the killed bench process"
    finally:
        parent.kill()
