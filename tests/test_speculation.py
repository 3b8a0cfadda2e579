"""Speculative steps (``leads_agent.speculation``): after the screening and the agenda, the next
step is guessed and trained while the current one trains. The search loop runs against a
scripted server that trains in the background (each training ends after a set number of
``wait_candidate`` polls, so the order in which trainings end is fixed), once step by step and
once with batches and guesses; the steps must be the same, a wrong guess is cancelled and
leaves no trace in the search, and only a wrong guess that ended first stays a step."""

from __future__ import annotations

import asyncio
import contextlib
import re
from types import SimpleNamespace
from typing import Any

from leads_agent.agent import SearchRun, take_steps
from leads_agent.connection import ToolResult
from leads_agent.offline import OfflinePolicy
from leads_agent.speculation import placeholder, plain
from leads_agent.state import Candidate, SearchState

REACTIONS = ["reaction_A", "reaction_B"]
TEMPLATES = ["laplacian_global", "laplacian_nodewise", "gcn", "gat", "graphsage", "edge_mlp"]
FAMILIES = {t: "neural" for t in ("gcn", "gat", "graphsage", "edge_mlp")}
RANGES = {"laplacian_nodewise": {"conductivity": {"min": 0.001, "max": 100.0, "default": 1.0}}}
#: validation loss of each structure (reaction_B + laplacian_nodewise is the best)
LOSSES = {
    ("reaction_A", "laplacian_global"): 0.5,
    ("reaction_B", "laplacian_global"): 0.3,
    ("reaction_B", "laplacian_nodewise"): 0.01,
    ("reaction_B", "gcn"): 0.05,
    ("reaction_B", "gat"): 0.06,
    ("reaction_B", "graphsage"): 0.04,
    ("reaction_B", "edge_mlp"): 0.07,
}
BUDGET = 9  # 2 screened, 3 agenda, then 4 steps on the diagnosis (graphsage, edge_mlp, refines)


class ScriptedServer:
    """The tools the loop calls, over an in-memory archive; trainings run in the background and
    end after ``polls[template]`` calls of ``wait_candidate`` (1 when not listed)."""

    def __init__(
        self,
        losses: dict[tuple[str, str], float],
        polls: dict[str, int],
        conductivity_cost: Any = None,
    ) -> None:
        self.losses = losses
        self.polls = polls
        #: the loss factor of an initial conductivity (default: 1 + 0.1 * conductivity)
        self.conductivity_cost = conductivity_cost or (lambda g: 1 + 0.1 * g)
        self.events: list[str] = []
        self.archive: list[Candidate] = []
        self.draft: dict[str, Any] = {}
        self.waits: dict[str, int] = {}
        self.cancelled: list[str] = []

    def has_tool(self, name: str) -> bool:
        return name != "get_candidate"  # a code edit reads the template's catalog source

    async def read_resource(self, uri: str) -> str:
        from leads_engine.diffusion import template_source

        return template_source(uri.rsplit("/", 1)[-1])

    def budget_left(self) -> int:
        return BUDGET - sum(1 for c in self.archive if c.status != "cancelled")

    def result(self, c: Candidate) -> dict[str, Any]:
        return {
            "candidate_id": c.candidate_id,
            "reaction": c.reaction,
            "diffusion": c.diffusion,
            "status": c.status,
            "best_val_loss": c.val_loss,
            "train_losses": [c.val_loss],
            "val_losses": [c.val_loss],
            "parameter_count": 10,
            "diagnosis": "good_fit: fine",
            "budget_left": self.budget_left(),
        }

    def finish(self, c: Candidate) -> None:
        c.status = "ok"
        conductivity = float(c.hyperparameters.get("conductivity", 1.0))
        c.val_loss = c.train_loss = self.losses.get(
            (c.reaction, c.diffusion), 0.09
        ) * self.conductivity_cost(conductivity)
        self.events.append(f"trained {c.candidate_id}")
        c.diagnosis = "good_fit: fine"
        c.verdict = "good_fit"

    async def call(
        self, name: str, arguments: dict[str, Any] | None = None, progress: Any = None
    ) -> ToolResult:
        await asyncio.sleep(0)
        args = dict(arguments or {})
        if name == "select_reaction":
            self.draft = {"reaction": args["reaction"]}
        elif name == "select_diffusion":
            self.draft |= {"operation": "select", "diffusion": args["template"], "hyper": {}}
            self.draft.pop("code", None)
        elif name in ("refine_diffusion", "simplify_diffusion"):
            parent = next(c for c in self.archive if c.candidate_id == args["candidate_id"])
            self.draft |= {
                "operation": name.split("_")[0],
                "diffusion": parent.diffusion,
                "hyper": dict(args["hyperparameters"]),
                "parent": parent.candidate_id,
            }
        elif name == "modify_diffusion":
            parent = self.get(args["candidate_id"])
            self.draft |= {
                "operation": "modify",
                "diffusion": parent.diffusion,
                "hyper": dict(parent.hyperparameters),
                "parent": parent.candidate_id,
                "code": args["source"],
            }
        elif name == "train_candidate":
            c = Candidate(
                f"c-{len(self.archive) + 1}",
                self.draft["operation"],
                self.draft["reaction"],
                self.draft["diffusion"],
                "training",
                parent_id=self.draft.get("parent"),
                hyperparameters=self.draft["hyper"],
                code=self.draft.get("code"),
                edited=bool(self.draft.get("code")),
            )
            self.archive.append(c)
            if args.get("wait") is False:
                return ToolResult(ok=True, data={**self.result(c), "status": "training"})
            self.finish(c)
            return ToolResult(ok=True, data=self.result(c))
        elif name == "wait_candidate":
            c = self.get(args["candidate_id"])
            self.waits[c.candidate_id] = self.waits.get(c.candidate_id, 0) + 1
            if c.status == "training" and self.waits[c.candidate_id] >= self.polls.get(
                c.diffusion, 1
            ):
                self.finish(c)
            done = c.status != "training"
            result = self.result(c) if c.status == "ok" else None
            return ToolResult(ok=True, data={"done": done, "status": c.status, "result": result})
        elif name == "finetune_candidate":
            parent = self.get(args["candidate_id"])
            copy = Candidate(
                f"c-{len(self.archive) + 1}",
                "finetune",
                parent.reaction,
                parent.diffusion,
                "training",
                parent_id=parent.candidate_id,
            )
            self.archive.append(copy)
            self.events.append(f"finetune {parent.candidate_id}")
            try:
                for _ in range(20):
                    await asyncio.sleep(0)
            except asyncio.CancelledError:
                copy.status = "cancelled"
                raise
            copy.status, copy.val_loss = "ok", parent.val_loss
            return ToolResult(
                ok=True,
                data={"candidate_id": copy.candidate_id, "status": "ok", "best_val_loss": 0.001},
            )
        elif name == "evaluate_candidate":
            return ToolResult(ok=True, data={"mse": 1e-5, "candidate_id": args["candidate_id"]})
        elif name == "cancel_candidate":
            c = self.get(args["candidate_id"])
            if c.status == "training":
                c.status = "cancelled"
                self.cancelled.append(c.candidate_id)
            return ToolResult(ok=True, data={"candidate_id": c.candidate_id, "status": c.status})
        else:
            raise AssertionError(f"unexpected tool {name}")
        return ToolResult(ok=True, data={"ok": True})

    def get(self, candidate_id: str) -> Candidate:
        return next(c for c in self.archive if c.candidate_id == candidate_id)


class ScriptedRun:
    """A :class:`SearchRun` over the scripted server: the loop's own methods, the archive read
    from memory instead of ``query_archive``."""

    step = SearchRun.step
    act = SearchRun.act
    execute = SearchRun.execute
    train = SearchRun.train
    finish_step = SearchRun.finish_step
    describe_training = staticmethod(SearchRun.describe_training)
    finish = SearchRun.finish
    finetune = SearchRun.finetune

    def __init__(self, server: ScriptedServer, parallel: int, finetune: int = 0) -> None:
        self.conn = server
        self.policy = OfflinePolicy()
        self.config = SimpleNamespace(
            budget=BUDGET, epochs=1, parallel=parallel, max_steps=None, finetune=finetune
        )
        self.finetune_ahead = None
        self.notes: list[str] = []
        self.session_id = "s-1"
        self.aliases: dict[str, str] = {}
        self.discarded: set[str] = set()
        self.steps: list[Any] = []
        self.refusals = self.duplicates = 0
        self.messages: list[str] = []
        self.view = SimpleNamespace(
            candidates=lambda *_: None,
            thought=lambda *_: None,
            training=lambda *_: None,
            message=self.messages.append,
            progress=self._nothing,
        )

    @staticmethod
    async def _nothing(*_: Any) -> None:
        return None

    async def read_candidates(self) -> list[Candidate]:
        return [
            Candidate(**{**c.__dict__, "hyperparameters": dict(c.hyperparameters)})
            for c in self.conn.archive
            if c.candidate_id not in self.discarded
        ]

    def base_state(self, number: int, candidates: list[Candidate]) -> SearchState:
        return SearchState(
            session_id=self.session_id,
            reactions=REACTIONS,
            templates=TEMPLATES,
            budget=BUDGET,
            step=number,
            candidates=candidates,
            template_families=FAMILIES,
            hyperparameter_ranges=RANGES,
        )

    async def record(self, record: Any) -> None:
        self.steps.append(record)


def search(parallel: int, losses: dict | None = None, polls: dict | None = None) -> ScriptedRun:
    run = ScriptedRun(ScriptedServer(losses or LOSSES, polls or {}), parallel)
    assert asyncio.run(take_steps(run, 1)) is False  # type: ignore[arg-type]
    return run


def trajectory(run: ScriptedRun) -> list[tuple[str, str, str, str]]:
    """Each step with the candidate ids replaced by the step that trained them."""
    names = {r.candidate_id: f"<{r.step}>" for r in run.steps if r.candidate_id}
    pattern = re.compile("|".join(sorted(map(re.escape, names), key=len, reverse=True)))

    def clean(text: str) -> str:
        return pattern.sub(lambda m: names[m.group(0)], text)

    return [
        (str(r.step), clean(r.thought), clean(repr(r.action)), clean(r.observation))
        for r in run.steps
    ]


def structures(run: ScriptedRun) -> list[tuple[Any, ...]]:
    """The trained candidates in step order (a batch starts its longest first); none other."""
    steps = {r.candidate_id: r.step for r in run.steps}
    kept = sorted(
        (c for c in run.conn.archive if c.status != "cancelled"),
        key=lambda c: steps[c.candidate_id],
    )
    return [(c.operation, c.diffusion, c.hyperparameters, c.val_loss) for c in kept]


def test_right_guesses_give_the_step_by_step_search() -> None:
    sequential = search(parallel=1)
    pipelined = search(parallel=8, polls={"graphsage": 3, "edge_mlp": 2})
    assert [r.step for r in pipelined.steps] == list(range(1, BUDGET + 1))
    assert trajectory(pipelined) == trajectory(sequential)
    assert structures(pipelined) == structures(sequential)
    assert [s[1] for s in structures(sequential)[5:7]] == ["graphsage", "edge_mlp"]
    assert pipelined.conn.cancelled == [] and pipelined.discarded == set()


def test_a_wrong_guess_is_cancelled_and_leaves_no_step() -> None:
    # graphsage becomes the best: the rules then edit it (not edge_mlp, the guess made while
    # graphsage trained); the guess is still training when graphsage's result comes in
    losses = {**LOSSES, ("reaction_B", "graphsage"): 0.001}
    sequential = search(parallel=1, losses=losses)
    pipelined = search(parallel=8, losses=losses, polls={"edge_mlp": 50})
    assert len(pipelined.conn.cancelled) == 1
    cancelled = pipelined.conn.get(pipelined.conn.cancelled[0])
    assert cancelled.diffusion == "edge_mlp" and cancelled.candidate_id in pipelined.discarded
    assert trajectory(pipelined) == trajectory(sequential)
    assert structures(pipelined) == structures(sequential)
    assert any("was cancelled" in m for m in pipelined.messages)


def test_a_wrong_guess_that_ended_first_stays_a_step_and_says_so() -> None:
    losses = {**LOSSES, ("reaction_B", "graphsage"): 0.001}
    pipelined = search(parallel=8, losses=losses, polls={"graphsage": 5})
    assert pipelined.conn.cancelled == []
    guessed = next(r for r in pipelined.steps if "rules would have chosen instead" in r.thought)
    assert "edge_mlp" in guessed.thought and guessed.step == 7
    assert [r.step for r in pipelined.steps] == list(range(1, BUDGET + 1))


def test_only_plain_plans_are_pipelined_and_placeholders_count_as_tried() -> None:
    from leads_agent.offline import Plan

    parent = Candidate("c-1", "select", "reaction_B", "gcn", "ok", val_loss=0.1)
    assert plain(Plan("reaction_B", "select", "gcn", {}, "t"))
    assert plain(Plan("reaction_B", "refine", "gcn", {"hidden": 32}, "t", parent=parent))
    assert not plain(Plan("reaction_B", "modify", "gcn", {}, "t", parent=parent, edit="x"))
    assert not plain(None)
    stand_in = placeholder(Plan("reaction_B", "refine", "gcn", {"hidden": 32}, "t", parent), 7)
    assert stand_in.status == "training" and stand_in.parent_id == "c-1"
    assert stand_in.hyperparameters == {"hidden": 32} and not stand_in.ok


def search_and_finish(parallel: int, conductivity_cost: Any = None) -> tuple[ScriptedRun, Any]:
    """The whole search with 2 epochs of fine-tuning and the test evaluation."""
    # the last step (a refinement of laplacian_nodewise) trains long enough to overlap
    server = ScriptedServer(LOSSES, {"laplacian_nodewise": 5}, conductivity_cost)
    run = ScriptedRun(server, parallel, finetune=2)

    async def go() -> Any:
        await take_steps(run, 1)  # type: ignore[arg-type]
        return await run.finish(await run.read_candidates())  # type: ignore[arg-type]

    return run, asyncio.run(go())


def test_the_fine_tuning_starts_with_the_last_step_when_it_keeps_the_best() -> None:
    # a conductivity away from 1 costs: the last steps (refinements) do not beat the best
    away = lambda g: 1 + abs(g - 1)  # noqa: E731
    sequential, (best, tuned, evaluation) = search_and_finish(1, away)
    run, (best_p, tuned_p, evaluation_p) = search_and_finish(8, away)
    assert (best_p.diffusion, best_p.val_loss) == (best.diffusion, best.val_loss)
    assert tuned_p["status"] == "ok" and evaluation_p["candidate_id"] == tuned_p["candidate_id"]
    events = run.conn.events
    last = next(r.candidate_id for r in run.steps if r.step == BUDGET)
    # one fine-tuning, of the best, started before the last step's training ended
    assert [e for e in events if e.startswith("finetune")] == [f"finetune {best_p.candidate_id}"]
    assert events.index(f"finetune {best_p.candidate_id}") < events.index(f"trained {last}")
    assert sequential.conn.events[-1] == f"finetune {best.candidate_id}"  # step by step: at the end


def test_a_fine_tuning_started_for_a_best_the_last_step_beat_is_cancelled() -> None:
    # the default cost: the last refinement (conductivity 0.5) beats laplacian_nodewise
    run, (best, tuned, evaluation) = search_and_finish(8)
    last = next(r.candidate_id for r in run.steps if r.step == BUDGET)
    assert best.candidate_id == last
    started = [e for e in run.conn.events if e.startswith("finetune")]
    assert len(started) == 2 and started[1] == f"finetune {last}"
    wrong = [c for c in run.conn.archive if c.operation == "finetune" and c.parent_id != last]
    assert [c.status for c in wrong] == ["cancelled"] and wrong[0].candidate_id in run.discarded
    assert all(c.candidate_id not in run.discarded for c in run.conn.archive if c.parent_id == last)
    assert tuned["status"] == "ok" and evaluation["candidate_id"] == tuned["candidate_id"]


def test_a_cancelled_fine_tuning_call_leaves_the_connection_usable(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """On a real server (tiny set): the fine-tuning call cancelled mid-way ends without a result,
    and the same connection then fine-tunes and evaluates."""
    from leads_agent.connection import connect
    from leads_server.app import build_server
    from server_calls import save_tiny

    monkeypatch.setenv("LEADS_HOME", str(tmp_path))
    save_tiny(tmp_path)

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        server = build_server(tmp_path / "archive.duckdb", compile_training=False)
        try:
            async with connect(server=server) as conn:
                start = await conn.call(
                    "start_session", {"dataset": "tiny", "budget": 2, "anonymise": False}
                )
                sid = start.as_dict()["session_id"]
                await conn.call(
                    "select_reaction", {"session_id": sid, "reaction": "aliev_panfilov"}
                )
                await conn.call(
                    "select_diffusion", {"session_id": sid, "template": "laplacian_global"}
                )
                trained = await conn.call("train_candidate", {"session_id": sid, "epochs": 1})
                parent = trained.as_dict()["candidate_id"]
                arguments = {"session_id": sid, "candidate_id": parent, "epochs": 30}
                ahead = asyncio.ensure_future(conn.call("finetune_candidate", arguments))
                await asyncio.sleep(1.0)
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ahead
                tuned = await conn.call("finetune_candidate", {**arguments, "epochs": 1})
                assert tuned.ok, tuned.text
                scored = await conn.call(
                    "evaluate_candidate",
                    {"session_id": sid, "candidate_id": tuned.as_dict()["candidate_id"]},
                )
                assert scored.ok, scored.text
                return tuned.as_dict(), scored.as_dict()
        finally:
            server.close()

    tuned, scored = asyncio.run(go())
    assert tuned["status"] == "ok" and scored["mse"] > 0


def test_a_cancelled_candidate_without_a_step_is_not_read_back_as_part_of_the_search() -> None:
    """A guess cancelled by an earlier run of the session (its budget given back) stays out of
    a resumed search's view; a cancelled candidate recorded as a step stays in."""
    from leads_agent.agent import RunConfig
    from leads_agent.run_result import StepRecord

    rows = [
        ["c-1", "select", None, "reaction_B", "gcn", "{}", "ok", 0.1, 0.1, 1, 10, None],
        ["c-2", "select", None, "reaction_B", "gat", "{}", "cancelled", None, None, None, 10, None],
        ["c-3", "select", None, "reaction_B", "gat", "{}", "cancelled", None, None, None, 10, None],
    ]
    columns = [
        "candidate_id", "operation", "parent_id", "reaction", "diffusion", "spec", "status",
        "train_loss", "val_loss", "best_epoch", "parameter_count", "diagnosis",
    ]  # fmt: skip

    class Archive:
        def has_tool(self, name: str) -> bool:
            return name == "query_archive"

        async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
            if "FROM candidates" in arguments["sql"] and "epochs" not in arguments["sql"]:
                return ToolResult(ok=True, data={"columns": columns, "rows": rows})
            return ToolResult(ok=True, data={"columns": ["candidate_id"], "rows": []})

    run = SearchRun(Archive(), OfflinePolicy(), RunConfig(), SimpleNamespace())  # type: ignore[arg-type]
    run.session_id = "s-1"
    run.steps = [StepRecord(1, "t", [], "o", "c-1"), StepRecord(2, "t", [], "o", "c-3")]
    read = asyncio.run(run.read_candidates())
    assert [c.candidate_id for c in read] == ["c-1", "c-3"]
