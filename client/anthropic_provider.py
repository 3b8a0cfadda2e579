"""Anthropic provider: the Messages API with tool use through the ``anthropic`` SDK, prompt
caching (``cache_control``) on the static prefix (tool list + system prompt)."""

from __future__ import annotations

import os
from typing import Any

import anthropic
import httpx2

from .connection import ToolSpec
from .errors import ConfigurationError, ProviderError
from .llm import (
    SYSTEM_PROMPT,
    AssistantTurn,
    RequestedCall,
    RetryPolicy,
    TemporaryError,
    parse_retry_after,
)
from .policy import Usage

__all__ = ["DEFAULT_ANTHROPIC_MODEL", "AnthropicBackend"]

DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-4-6"
_EPHEMERAL = {"type": "ephemeral"}


def convert_tools(tools: list[ToolSpec]) -> list[dict[str, Any]]:
    """MCP tool schemas as Anthropic tools; the last one carries the cache breakpoint, so the
    whole tool list (and the system prompt after it) is cached."""
    converted = [
        {"name": t.name, "description": t.description[:4000], "input_schema": t.input_schema}
        for t in tools
    ]
    if converted:
        converted[-1]["cache_control"] = _EPHEMERAL
    return converted


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
        self.messages: list[dict[str, Any]] = []
        self._tools = convert_tools(tools)
        self._system = [{"type": "text", "text": system_prompt, "cache_control": _EPHEMERAL}]

    def _append_user_blocks(self, blocks: list[dict[str, Any]]) -> None:
        if self.messages and self.messages[-1]["role"] == "user":
            self.messages[-1]["content"].extend(blocks)
        else:
            self.messages.append({"role": "user", "content": blocks})

    def add_user(self, text: str) -> None:
        """A user turn (the step's observation)."""
        self._append_user_blocks([{"type": "text", "text": text}])

    def add_tool_results(self, results: list[tuple[RequestedCall, str, bool]]) -> None:
        """The answers to the model's tool calls, in one user turn."""
        self._append_user_blocks(
            [
                {
                    "type": "tool_result",
                    "tool_use_id": call.call_id,
                    "content": text,
                    "is_error": is_error,
                }
                for call, text, is_error in results
            ]
        )

    async def _request(self) -> Any:
        try:
            return await self.client.messages.create(
                model=self.model,
                max_tokens=self.max_tokens,
                system=self._system,
                tools=self._tools,
                messages=self.messages,
            )
        except anthropic.AuthenticationError as exc:
            raise ConfigurationError(f"Anthropic rejected the API key: {exc.message}") from exc
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

    async def complete(self) -> AssistantTurn:
        """Ask the model (retrying rate limits and server errors)."""
        response = await self.retry.run(self._request, self.usage, "Anthropic API")
        self.usage.requests += 1
        usage = response.usage
        cache_write = usage.cache_creation_input_tokens or 0
        cache_read = usage.cache_read_input_tokens or 0
        self.usage.input_tokens += usage.input_tokens + cache_write + cache_read
        self.usage.output_tokens += usage.output_tokens
        self.usage.cache_creation_tokens += cache_write
        self.usage.cache_read_tokens += cache_read
        content = [block.model_dump(exclude_none=True) for block in response.content]
        self.messages.append({"role": "assistant", "content": content})
        texts, calls = [], []
        for block in response.content:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                if isinstance(block.input, dict):
                    calls.append(RequestedCall(block.id, block.name, dict(block.input)))
                else:
                    calls.append(
                        RequestedCall(
                            block.id,
                            block.name,
                            error=f"input must be a JSON object, got {block.input!r}",
                        )
                    )
        return AssistantTurn("\n".join(texts), calls)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.close()


def base_url_of(client: anthropic.AsyncAnthropic) -> str:
    """The endpoint a client talks to (for error messages)."""
    return str(client.base_url)
