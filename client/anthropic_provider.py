"""Anthropic provider: the Messages API with tool use through the ``anthropic`` SDK.

The conversation is rendered at each request with prompt-caching breakpoints
(``cache_control``, at most 4 per request as the API allows): the system prompt (which caches
the tool list before it too), the latest user turn (written to the cache now), the previous
user turn (the last request's breakpoint, read back) and the latest step prompt (stable when
the step that just ended is compacted). Everything before a breakpoint seen before is billed as
a cache read (0.1x the input price)."""

from __future__ import annotations

import os
from typing import Any

import anthropic
import httpx2

from .connection import ToolSpec
from .conversation import Conversation, ModelTurn, RequestedCall, UserTurn
from .errors import ConfigurationError, ProviderError
from .llm import SYSTEM_PROMPT, AssistantTurn, RetryPolicy, TemporaryError, parse_retry_after
from .policy import Usage

__all__ = ["DEFAULT_ANTHROPIC_MODEL", "AnthropicBackend", "convert_tools", "render_messages"]

DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-4-6"
_EPHEMERAL = {"type": "ephemeral"}


def convert_tools(tools: list[ToolSpec]) -> list[dict[str, Any]]:
    """MCP tool schemas as Anthropic tools (cached through the system prompt's breakpoint,
    which comes after them in the cache's order: tools, system, messages)."""
    return [
        {"name": t.name, "description": t.description[:4000], "input_schema": t.input_schema}
        for t in tools
    ]


def _blocks(turn: UserTurn | ModelTurn) -> list[dict[str, Any]]:
    if isinstance(turn, ModelTurn):
        blocks: list[dict[str, Any]] = [{"type": "text", "text": turn.text}] if turn.text else []
        blocks += [
            {"type": "tool_use", "id": c.call_id, "name": c.name, "input": c.arguments}
            for c in turn.calls
        ]
        return blocks
    blocks = [
        {
            "type": "tool_result",
            "tool_use_id": r.call_id,
            "content": r.text,
            **({"is_error": True} if r.is_error else {}),
        }
        for r in turn.results
    ]
    if turn.text:
        blocks.append({"type": "text", "text": turn.text})
    return blocks


def render_messages(conversation: Conversation, breakpoints: int = 3) -> list[dict[str, Any]]:
    """The conversation as Messages API ``messages``, with cache breakpoints on the last block
    of the turns :meth:`Conversation.cache_breakpoints` chooses."""
    marked = set(conversation.cache_breakpoints(breakpoints))
    messages: list[dict[str, Any]] = []
    for index, turn in enumerate(conversation.turns):
        role = "assistant" if isinstance(turn, ModelTurn) else "user"
        blocks = _blocks(turn)
        if index in marked and blocks:
            blocks[-1]["cache_control"] = _EPHEMERAL
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    return messages


class AnthropicBackend:
    """One Claude conversation (a whole search run)."""

    def __init__(
        self,
        tools: list[ToolSpec],
        model: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        http_client: httpx2.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        max_tokens: int = 2048,
        system_prompt: str = SYSTEM_PROMPT,
    ) -> None:
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise ConfigurationError(
                "--llm anthropic needs an API key: set ANTHROPIC_API_KEY (or use --llm offline)"
            )
        self.model = model or DEFAULT_ANTHROPIC_MODEL
        self.tools = tools
        self.usage = Usage(model=self.model)
        self.retry = retry or RetryPolicy()
        self.max_tokens = max_tokens
        self.client = anthropic.AsyncAnthropic(
            api_key=key, base_url=base_url, http_client=http_client, max_retries=0
        )
        self._tools = convert_tools(tools)
        self.request_log: list[dict[str, int]] = []  # tokens of each request, in order
        self._system = [{"type": "text", "text": system_prompt, "cache_control": _EPHEMERAL}]

    async def _request(self, messages: list[dict[str, Any]]) -> Any:
        try:
            return await self.client.messages.create(
                model=self.model,
                max_tokens=self.max_tokens,
                system=self._system,
                tools=self._tools,
                messages=messages,
            )
        except anthropic.AuthenticationError as exc:
            raise ConfigurationError(f"Anthropic rejected the API key: {exc.message}") from exc
        except anthropic.NotFoundError as exc:
            raise ConfigurationError(
                f"the Anthropic endpoint {base_url_of(self.client)} does not know model "
                f"{self.model!r} or has no Messages API there (HTTP 404): {exc.message}"
            ) from exc
        except anthropic.APIStatusError as exc:
            status = exc.status_code
            if status == 429 or status >= 500:
                retry_after = exc.response.headers.get("retry-after")
                raise TemporaryError(f"HTTP {status}", parse_retry_after(retry_after)) from exc
            raise ProviderError(
                f"Anthropic refused the request (HTTP {status}): {exc.message}"
            ) from exc
        except anthropic.APIConnectionError as exc:
            url = base_url_of(self.client)
            raise TemporaryError(f"cannot reach the Anthropic API at {url}: {exc}") from exc

    async def complete(self, conversation: Conversation) -> AssistantTurn:
        """Ask the model (retrying rate limits and server errors)."""
        messages = render_messages(conversation)
        response = await self.retry.run(
            lambda: self._request(messages), self.usage, "Anthropic API"
        )
        self.usage.requests += 1
        usage = response.usage
        cache_write = usage.cache_creation_input_tokens or 0
        cache_read = usage.cache_read_input_tokens or 0
        self.usage.input_tokens += usage.input_tokens + cache_write + cache_read
        self.usage.output_tokens += usage.output_tokens
        self.usage.cache_creation_tokens += cache_write
        self.usage.cache_read_tokens += cache_read
        self.request_log.append(
            {"input": usage.input_tokens, "cache_write": cache_write, "cache_read": cache_read}
        )
        texts, calls = [], []
        for block in response.content or []:
            if block.type == "text":
                texts.append(block.text or "")
            elif block.type == "tool_use":
                if isinstance(block.input, dict):
                    calls.append(RequestedCall(block.id, block.name, dict(block.input)))
                else:
                    calls.append(
                        RequestedCall(
                            block.id,
                            block.name,
                            error=f"input must be a JSON object, got {block.input!r:.80}",
                        )
                    )
        return AssistantTurn("\n".join(t for t in texts if t.strip()), calls)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.close()


def base_url_of(client: anthropic.AsyncAnthropic) -> str:
    """The endpoint a client talks to (for error messages)."""
    return str(client.base_url)
