"""Batch proposals of the search loop (``leads_agent.batch``): the offline policy's reaction
screening is decided as one batch of independent candidates, and nothing else is."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from leads_agent.batch import propose_batch
from leads_agent.offline import OfflinePolicy
from leads_agent.state import Candidate, SearchState

pytestmark = pytest.mark.anyio
REACTIONS = ["reaction_A", "reaction_B", "reaction_C", "reaction_D", "reaction_E", "neural"]
TEMPLATES = ["laplacian_global", "laplacian_nodewise", "gcn", "gat"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Tools:
    """A connection that offers the given tools (the screening needs no call)."""

    def __init__(self, *names: str) -> None:
        self.names = set(names)

    def has_tool(self, name: str) -> bool:
        return name in self.names

    async def call(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        raise AssertionError(f"a screening decision calls no tool ({name})")

    async def read_resource(self, uri: str) -> str:
        raise AssertionError(f"a screening decision reads no resource ({uri})")


def run_with(policy: Any, *tools: str) -> Any:
    return SimpleNamespace(policy=policy, conn=Tools(*tools))


def state(budget: int = 15, candidates: list[Candidate] | None = None) -> SearchState:
    done = candidates or []
    return SearchState(
        session_id="s-1",
        reactions=REACTIONS,
        templates=TEMPLATES,
        budget=budget,
        step=len(done) + 1,
        candidates=done,
        template_families={"gcn": "neural", "gat": "neural"},
    )


def screened(reaction: str, loss: float) -> Candidate:
    return Candidate(f"c-{reaction}", "select", reaction, "laplacian_global", "ok", val_loss=loss)


def reactions_of(batch: list[tuple[SearchState, Any]]) -> list[str]:
    return [decision.calls[0].arguments["reaction"] for _, decision in batch]


async def test_the_screening_is_one_batch_in_the_policys_order() -> None:
    run = run_with(OfflinePolicy(), "wait_candidate")
    batch = await propose_batch(run, state(), 8)
    assert reactions_of(batch) == REACTIONS
    for number, (seen, decision) in enumerate(batch):
        assert seen.step == number + 1  # each decided on the archive plus those before it
        assert [c.name for c in decision.calls] == ["select_reaction", "select_diffusion"]
        assert decision.calls[1].arguments["template"] == "laplacian_global"
        assert decision.thought.startswith("Screening reactions")
    assert reactions_of(await propose_batch(run, state(), 3)) == REACTIONS[:3]


async def test_only_what_is_left_of_the_screening_and_its_quota_is_batched() -> None:
    run = run_with(OfflinePolicy(), "wait_candidate")
    done = [screened("reaction_A", 0.1), screened("reaction_B", 0.2)]
    assert reactions_of(await propose_batch(run, state(candidates=done), 8)) == REACTIONS[2:]
    # a budget of 4 screens two reactions (budget - 2), then explores the diffusion
    assert reactions_of(await propose_batch(run, state(budget=4), 8)) == REACTIONS[:2]
    # after the screening, each step depends on the last result: no batch
    everything = [screened(r, 0.1 + i) for i, r in enumerate(REACTIONS)]
    assert await propose_batch(run, state(candidates=everything), 8) == []
    # one screening candidate left is no batch either: the ordinary step takes it
    assert await propose_batch(run, state(candidates=everything[:5]), 8) == []


async def test_no_batch_without_wait_candidate_or_for_other_policies() -> None:
    assert await propose_batch(run_with(OfflinePolicy()), state(), 8) == []
    llm = SimpleNamespace(name="llm", refused=set())
    assert await propose_batch(run_with(llm, "wait_candidate"), state(), 8) == []
    assert await propose_batch(run_with(OfflinePolicy(), "wait_candidate"), state(), 1) == []
