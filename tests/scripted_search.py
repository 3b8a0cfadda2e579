"""A whole search by the scripted model of ``fake_llm_endpoints``, through the bundled server in
process, metered per step (used by the token tests and ``benchmarks/llm_tokens.py``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fake_llm_endpoints import FakeEndpoint, ScriptedModel

__all__ = ["StepTokens", "scripted_search"]


@dataclass
class StepTokens:
    """The tokens one search step cost (all its requests)."""

    step: int
    requests: int
    input_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    output_tokens: int

    @property
    def cache_read_share(self) -> float:
        return self.cache_read_tokens / self.input_tokens if self.input_tokens else 0.0


@dataclass
class MeteredPolicy:
    """An LLM policy whose usage is snapshotted around each step."""

    inner: Any
    steps: list[StepTokens] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def usage(self) -> Any:
        return self.inner.usage

    @property
    def counts(self) -> Any:
        return self.inner.counts

    def _snapshot(self) -> tuple[int, int, int, int, int]:
        u = self.inner.usage
        return (
            u.requests,
            u.input_tokens,
            u.cache_read_tokens,
            u.cache_creation_tokens,
            u.output_tokens,
        )

    async def next_action(self, state: Any, env: Any) -> Any:
        before = self._snapshot()
        decision = await self.inner.next_action(state, env)
        after = self._snapshot()
        delta = [b - a for a, b in zip(before, after, strict=True)]
        self.steps.append(StepTokens(state.step, *delta))
        return decision

    async def revise(self, state: Any, env: Any, refusal: str) -> Any:
        return await self.inner.revise(state, env, refusal)

    def record_outcome(self, state: Any, decision: Any, observation: str) -> None:
        self.inner.record_outcome(state, decision, observation)


def scripted_search(
    home: Path,
    provider: str = "anthropic",
    budget: int = 15,
    model: ScriptedModel | None = None,
    dataset: str = "tiny",
    report: Path | None = None,
    anonymise: bool = True,
) -> tuple[Any, list[StepTokens], FakeEndpoint]:
    """Run ``budget`` steps (1 epoch each, no fine-tuning) with the scripted model behind a
    fake endpoint; the run's result, its tokens per step and the (stopped) endpoint. The
    report is written to ``report`` when given. An anonymised session draws its aliases at
    random, so the scripted model's n-th structure is another real reaction every run; pass
    ``anonymise=False`` where the fits must be the same every run."""
    from leads_agent.agent import RunConfig, run_search
    from leads_agent.connection import connect
    from leads_agent.llm import LLMPolicy, RetryPolicy, agent_tools
    from leads_agent.report import write_report
    from leads_agent.ui import QuietView
    from leads_server.app import build_server

    async def search(endpoint: FakeEndpoint) -> tuple[Any, MeteredPolicy]:
        server = build_server(home / "archive.duckdb", compile_training=False)
        try:
            async with connect(server=server) as conn:
                retry = RetryPolicy(sleep=lambda _: asyncio.sleep(0))
                tools = agent_tools(conn.tools)
                if provider == "anthropic":
                    from leads_agent.anthropic_provider import AnthropicBackend

                    backend: Any = AnthropicBackend(
                        tools, api_key="test-key", base_url=endpoint.base_url, retry=retry
                    )
                else:
                    from leads_agent.openai_provider import OpenAIBackend

                    backend = OpenAIBackend(
                        tools,
                        model="gpt-4o-mini",
                        api_key="test-key",
                        base_url=endpoint.base_url + "/v1",
                        retry=retry,
                    )
                policy = MeteredPolicy(LLMPolicy(backend))
                config = RunConfig(
                    dataset=dataset, budget=budget, epochs=1, finetune=0, anonymise=anonymise
                )
                try:
                    result = await run_search(conn, policy, config, QuietView())
                finally:
                    await backend.aclose()
                if report is not None:
                    await write_report(conn, result, report)
                return result, policy
        finally:
            server.close()

    with FakeEndpoint(model or ScriptedModel()) as endpoint:
        result, policy = asyncio.run(search(endpoint))
    return result, policy.steps, endpoint
