"""Batch proposals of the search loop (``leads_agent.batch``): the offline policy's reaction
screening is decided as one batch of independent candidates (the diffusion agenda after it:
tests/test_batch_agenda.py)."""

from __future__ import annotations

from types import MethodType, SimpleNamespace
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
    # after the screening comes the diffusion agenda (a batch of its own, tests/test_batch_agenda)
    everything = [screened(r, 0.1 + i) for i, r in enumerate(REACTIONS)]
    agenda = await propose_batch(run, state(candidates=everything), 8)
    assert [d.calls[1].arguments["template"] for _, d in agenda] == TEMPLATES[1:]
    # one screening candidate left is no batch either: the ordinary step takes it
    assert await propose_batch(run, state(candidates=everything[:5]), 8) == []


async def test_no_batch_without_wait_candidate_or_for_other_policies() -> None:
    assert await propose_batch(run_with(OfflinePolicy()), state(), 8) == []
    llm = SimpleNamespace(name="llm", refused=set())
    assert await propose_batch(run_with(llm, "wait_candidate"), state(), 8) == []
    assert await propose_batch(run_with(OfflinePolicy(), "wait_candidate"), state(), 1) == []


class BatchRun:
    """Enough of a :class:`~leads_agent.agent.SearchRun` to run one batch: set-up calls are
    remembered, trainings answer at once, and the server may refuse one reaction's set-up."""

    def __init__(self, refuse: str | None = None) -> None:
        from leads_agent.agent import SearchRun

        self.policy = OfflinePolicy()
        self.config = SimpleNamespace(epochs=1)
        self.session_id = "s-1"
        self.aliases: dict[str, str] = {}
        self.refuse = refuse
        self.started: list[str] = []  # reactions, in the order their trainings started
        self.recorded: list[Any] = []
        self.selected = ""
        self.conn = self
        self.describe_training = SearchRun.describe_training
        self.finish_step = MethodType(SearchRun.finish_step, self)
        self.view = SimpleNamespace(
            candidates=lambda *_: None,
            thought=lambda *_: None,
            training=lambda *_: None,
            message=lambda *_: None,
            progress=self._nothing,
        )

    @staticmethod
    async def _nothing(*_: Any) -> None:
        return None

    def has_tool(self, name: str) -> bool:
        return name == "wait_candidate"

    async def read_candidates(self) -> list[Candidate]:
        return []

    def base_state(self, number: int, candidates: list[Candidate]) -> SearchState:
        return state()

    async def execute(self, calls: list[Any]) -> str | None:
        self.selected = calls[0].arguments["reaction"]
        return "refused: duplicate" if self.selected == self.refuse else None

    async def call(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        from leads_agent.connection import ToolResult

        if name == "train_candidate":
            self.started.append(self.selected)
            return ToolResult(ok=True, data={"candidate_id": f"c-{self.selected}"})
        reaction = str((arguments or {})["candidate_id"])[2:]
        result = {"candidate_id": f"c-{reaction}", "reaction": reaction, "status": "ok"}
        return ToolResult(ok=True, data={"done": True, "fraction": 1.0, "result": result})

    async def record(self, record: Any) -> None:
        self.recorded.append(record)


async def test_the_longest_training_starts_first_and_steps_keep_the_decisions_order() -> None:
    from leads_agent.batch import run_batch

    run = BatchRun()
    assert await run_batch(run, 1, 8) == len(REACTIONS)  # type: ignore[arg-type]
    assert run.started == ["neural", *REACTIONS[:-1]]  # the neural reaction first
    assert [r.step for r in run.recorded] == list(range(1, len(REACTIONS) + 1))
    assert [r.candidate_id for r in run.recorded] == [f"c-{r}" for r in REACTIONS]


async def test_a_refused_start_keeps_every_started_candidate_as_a_step() -> None:
    from leads_agent.batch import run_batch

    run = BatchRun(refuse="reaction_C")
    taken = await run_batch(run, 4, 8)  # type: ignore[arg-type]
    # neural, A and B started before C was refused; all three are steps, in decision order
    assert run.started == ["neural", "reaction_A", "reaction_B"] and taken == 3
    assert [(r.step, r.candidate_id) for r in run.recorded] == [
        (4, "c-reaction_A"),
        (5, "c-reaction_B"),
        (6, "c-neural"),
    ]
