"""The diffusion agenda as one batch (``leads_agent.batch``): after the reaction screening, the
offline policy's agenda steps (``laplacian_nodewise``, ``gcn``, ``gat`` with the best reaction)
are decided together and trained at once, with the outcome of a step-by-step search."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from leads_agent.batch import _expected_cost, as_decided_on, propose_batch
from leads_agent.offline import OfflinePolicy, plan_step
from leads_agent.state import Candidate, Decision, SearchState
from server_calls import save_tiny

REACTIONS = ["reaction_A", "reaction_B", "reaction_C", "neural"]
TEMPLATES = ["laplacian_global", "laplacian_nodewise", "gcn", "gat", "graphsage"]
FAMILIES = {"gcn": "neural", "gat": "neural", "graphsage": "neural"}
RANGES = {
    "laplacian_nodewise": {"conductivity": {"min": 0.001, "max": 100.0, "default": 1.0}},
    "gcn": {"hidden": {"min": 4, "max": 64, "default": 16}},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Tools:
    """A connection with ``wait_candidate``; a ``select`` decision calls no tool."""

    def has_tool(self, name: str) -> bool:
        return name == "wait_candidate"

    async def call(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        raise AssertionError(f"a select decision calls no tool ({name})")

    async def read_resource(self, uri: str) -> str:
        raise AssertionError(f"a select decision reads no resource ({uri})")


def state(candidates: list[Candidate], budget: int = 15) -> SearchState:
    return SearchState(
        session_id="s-1",
        reactions=REACTIONS,
        templates=TEMPLATES,
        budget=budget,
        step=len(candidates) + 1,
        candidates=candidates,
        template_families=FAMILIES,
        hyperparameter_ranges=RANGES,
    )


def screening() -> list[Candidate]:
    """The four reactions screened; reaction_B is the best (val 0.1)."""
    losses = {"reaction_A": 0.3, "reaction_B": 0.1, "reaction_C": 0.5, "neural": 0.2}
    return [
        Candidate(f"c-{i}", "select", r, "laplacian_global", "ok", val_loss=losses[r])
        for i, r in enumerate(REACTIONS, start=1)
    ]


def templates_of(batch: list[tuple[SearchState, Any]]) -> list[str]:
    return [decision.calls[1].arguments["template"] for _, decision in batch]


@pytest.mark.anyio
async def test_the_agenda_is_one_batch_with_the_best_reaction() -> None:
    run = SimpleNamespace(policy=OfflinePolicy(), conn=Tools())
    batch = await propose_batch(run, state(screening()), 8)
    assert templates_of(batch) == ["laplacian_nodewise", "gcn", "gat"]
    assert {d.calls[0].arguments["reaction"] for _, d in batch} == {"reaction_B"}
    for number, (seen, decision) in enumerate(batch):
        assert seen.step == 5 + number
        assert decision.thought.startswith("Reaction reaction_B is the best of the screening")
    # the limit bounds it; what is left of the agenda is the next batch
    assert templates_of(await propose_batch(run, state(screening()), 2)) == [
        "laplacian_nodewise",
        "gcn",
    ]
    nodewise = Candidate("c-5", "select", "reaction_B", "laplacian_nodewise", "ok", val_loss=0.05)
    assert templates_of(await propose_batch(run, state([*screening(), nodewise]), 8)) == [
        "gcn",
        "gat",
    ]


@pytest.mark.anyio
async def test_screening_and_agenda_never_share_a_batch_and_the_diagnosis_is_not_batched() -> None:
    run = SimpleNamespace(policy=OfflinePolicy(), conn=Tools())
    # the last screening candidate alone is no batch: the agenda needs its result
    assert await propose_batch(run, state(screening()[:3]), 8) == []
    # after the agenda every step acts on the best candidate's diagnosis: one at a time
    agenda = [
        Candidate(f"c-{5 + i}", "select", "reaction_B", t, "ok", val_loss=0.05 + i / 100)
        for i, t in enumerate(("laplacian_nodewise", "gcn", "gat"))
    ]
    assert plan_step(state([*screening(), *agenda])).rule == "diagnosis"
    assert await propose_batch(run, state([*screening(), *agenda]), 8) == []
    # a gcn that diverged is handled first (rule 3), not batched with gat
    unstable = Candidate("c-6", "select", "reaction_B", "gcn", "unstable")
    done = [*screening(), agenda[0], unstable]
    assert plan_step(state(done)).rule == "instability"
    assert await propose_batch(run, state(done), 8) == []


@pytest.mark.anyio
async def test_the_longest_agenda_training_is_expected_first() -> None:
    run = SimpleNamespace(policy=OfflinePolicy(), conn=Tools())
    batch = await propose_batch(run, state(screening()), 8)
    costs = [_expected_cost(decision) for _, decision in batch]
    assert costs[2] > costs[1] > costs[0]  # gat > gcn > laplacian_nodewise


@pytest.mark.anyio
async def test_a_batched_step_gets_the_thought_a_step_by_step_search_writes() -> None:
    policy = OfflinePolicy()
    run = SimpleNamespace(policy=policy, conn=Tools())
    base = state(screening())
    batch = await propose_batch(run, base, 8)
    nodewise = Candidate("c-5", "select", "reaction_B", "laplacian_nodewise", "ok", val_loss=0.04)
    # step 6 (gcn) as a step-by-step search sees it: the nodewise result is in the archive
    seen = dataclasses.replace(base, step=6, candidates=[*screening(), nodewise])
    decided, decision = batch[1]
    again = as_decided_on(seen, decided, decision, policy)
    assert "(val 0.1)" in decision.thought  # decided on placeholders: the screening's best
    assert "(val 0.04)" in again.thought and again.thought == plan_step(seen).thought
    assert again.calls == decision.calls
    # a nodewise that diverged: the rules would have simplified it first; the thought says so
    broken = Candidate("c-5", "select", "reaction_B", "laplacian_nodewise", "unstable")
    seen = dataclasses.replace(base, step=6, candidates=[*screening(), broken])
    told = as_decided_on(seen, decided, decision, policy)
    assert told.thought.startswith(decision.thought)
    assert "the rules would have chosen instead" in told.thought and "unstable" in told.thought


def _normalised(result: Any) -> list[tuple[str, str, str]]:
    """Each step's thought, action and observation with the run's own ids replaced by the
    step that trained the candidate (ids differ between runs, nothing else may)."""
    names = {r.candidate_id: f"<step {r.step}>" for r in result.steps if r.candidate_id}
    names[result.session_id] = "<session>"
    pattern = re.compile("|".join(re.escape(key) for key in sorted(names, key=len, reverse=True)))

    def clean(text: str) -> str:
        return pattern.sub(lambda m: names[m.group(0)], text)

    return [(clean(r.thought), clean(repr(r.action)), clean(r.observation)) for r in result.steps]


def _search(home: Path, parallel: int) -> Any:
    from leads_agent.agent import RunConfig, run_search
    from leads_agent.connection import connect
    from leads_agent.ui import QuietView
    from leads_server.app import build_server

    async def search() -> Any:
        server = build_server(home / f"archive-{parallel}.duckdb", compile_training=False)
        try:
            async with connect(server=server) as conn:
                config = RunConfig(
                    dataset="tiny",
                    budget=10,
                    epochs=1,
                    finetune=1,
                    anonymise=False,
                    parallel=parallel,
                )
                return await run_search(conn, OfflinePolicy(), config, QuietView())
        finally:
            server.close()

    return asyncio.run(search())


def test_batched_search_has_the_step_by_step_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same session run one step at a time and with the screening and the agenda batched:
    the same steps (thought, action, observation), candidates, fits and test score."""
    monkeypatch.setenv("LEADS_HOME", str(tmp_path))
    save_tiny(tmp_path)
    sequential = _search(tmp_path, parallel=1)
    batched = _search(tmp_path, parallel=8)
    assert sequential.completed and batched.completed
    trained = [c for c in batched.candidates if c.operation != "finetune"]
    # 6 screened reactions, then the agenda with the best one, then a diagnosis step
    assert [c.diffusion for c in trained[6:9]] == ["laplacian_nodewise", "gcn", "gat"]
    assert len({c.reaction for c in trained[6:]}) == 1
    assert _normalised(batched) == _normalised(sequential)

    def fits(result: Any) -> list[tuple[Any, ...]]:
        return [
            (c.step, c.operation, c.reaction, c.diffusion, c.status, c.val_loss)
            for c in result.candidates
        ]

    assert fits(batched) == fits(sequential)
    assert batched.best.diffusion == sequential.best.diffusion
    assert batched.evaluation["mse"] == pytest.approx(sequential.evaluation["mse"], rel=1e-9)


def test_a_shorter_screening_trains_only_the_screening_candidates_shorter() -> None:
    from leads_agent.batch import epochs_for

    short = SimpleNamespace(policy=OfflinePolicy(), config=SimpleNamespace(epochs=3))
    short.config.screening_epochs = 1
    assert epochs_for(short, state([])) == 1  # a screening candidate
    assert epochs_for(short, state(screening()[:3])) == 1
    assert epochs_for(short, state(screening())) == 3  # the agenda after it
    full = SimpleNamespace(policy=OfflinePolicy(), config=SimpleNamespace(epochs=3))
    assert epochs_for(full, state([])) == 3  # unset: every step has the run's epochs
    llm = SimpleNamespace(policy=SimpleNamespace(refused=set()), config=short.config)
    assert epochs_for(llm, state([])) == 3  # only the offline policy screens
    longer = Decision("a residual", epochs_factor=4)  # the decision's own factor applies last
    assert epochs_for(short, state(screening()), longer) == 12
    assert epochs_for(short, state([]), longer) == 4


def test_leads_agent_discover_screens_at_one_epoch_by_default() -> None:
    from leads_agent.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["discover"]).screening_epochs == 1
    assert parser.parse_args(["discover", "--screening-epochs", "3"]).screening_epochs == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["discover", "--screening-epochs", "0"])
