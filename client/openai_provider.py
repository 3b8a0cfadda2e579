"""OpenAI-compatible provider: chat completions with tools over ``httpx2`` (OpenAI, vLLM,
Ollama, llama.cpp, ...). ``OPENAI_API_KEY`` is optional for local servers."""

from __future__ import annotations

import json
import os
from typing import Any

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

__all__ = ["DEFAULT_OPENAI_BASE_URL", "OpenAIBackend", "convert_tools"]

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"


def convert_tools(tools: list[ToolSpec]) -> list[dict[str, Any]]:
    """MCP tool schemas as chat-completions function tools."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description[:1000],
                "parameters": t.input_schema,
            },
        }
        for t in tools
    ]


class OpenAIBackend:
    """One chat-completions conversation (a whole search run)."""

    def __init__(
        self,
        tools: list[ToolSpec],
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        http_client: httpx2.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 300.0,
        system_prompt: str = SYSTEM_PROMPT,
    ) -> None:
        self.model = model or os.environ.get("OPENAI_MODEL") or ""
        if not self.model:
            raise ConfigurationError("--llm openai needs a model: pass --model or set OPENAI_MODEL")
        self.base_url = (
            base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL
        ).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if not key and self.base_url == DEFAULT_OPENAI_BASE_URL:
            raise ConfigurationError(
                "--llm openai against api.openai.com needs OPENAI_API_KEY (a local server, "
                "--base-url http://localhost:8000/v1, needs none)"
            )
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = http_client or httpx2.AsyncClient(timeout=timeout)
        self.headers = headers
        self.tools = tools
        self.usage = Usage(model=self.model)
        self.retry = retry or RetryPolicy()
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}]
        self._tools = convert_tools(tools)

    def add_user(self, text: str) -> None:
        """A user turn (the step's observation)."""
        self.messages.append({"role": "user", "content": text})

    def add_tool_results(self, results: list[tuple[RequestedCall, str, bool]]) -> None:
        """One ``tool`` message per call (errors are prefixed by the caller)."""
        for call, text, _ in results:
            self.messages.append({"role": "tool", "tool_call_id": call.call_id, "content": text})

    async def _request(self) -> dict[str, Any]:
        url = f"{self.base_url}/chat/completions"
        body = {
            "model": self.model,
            "messages": self.messages,
            "tools": self._tools,
            "tool_choice": "auto",
        }
        try:
            response = await self.http.post(url, json=body, headers=self.headers)
        except httpx2.TransportError as exc:
            raise TemporaryError(
                f"cannot reach the LLM endpoint at {self.base_url}: {exc}"
            ) from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise TemporaryError(
                f"HTTP {response.status_code}",
                parse_retry_after(response.headers.get("retry-after")),
            )
        if response.status_code in (401, 403):
            raise ConfigurationError(
                f"the endpoint {self.base_url} rejected the API key (HTTP "
                f"{response.status_code}): set OPENAI_API_KEY"
            )
        if response.status_code >= 400:
            raise ProviderError(
                f"the endpoint {self.base_url} refused the request (HTTP "
                f"{response.status_code}): {response.text[:500]}"
            )
        try:
            return response.json()
        except ValueError as exc:
            raise TemporaryError(f"the endpoint answered non-JSON: {response.text[:200]}") from exc

    async def complete(self) -> AssistantTurn:
        """Ask the model (retrying rate limits, server errors and connection failures)."""
        data = await self.retry.run(self._request, self.usage, f"LLM endpoint {self.base_url}")
        self.usage.requests += 1
        usage = data.get("usage") or {}
        self.usage.input_tokens += int(usage.get("prompt_tokens") or 0)
        self.usage.output_tokens += int(usage.get("completion_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        self.usage.cache_read_tokens += int(details.get("cached_tokens") or 0)
        choices = data.get("choices") or []
        if not choices:
            raise ProviderError(f"the endpoint returned no choices: {str(data)[:300]}")
        message = choices[0].get("message") or {}
        text = message.get("content") or ""
        raw_calls = message.get("tool_calls") or []
        self.messages.append(
            {
                "role": "assistant",
                "content": text or None,
                **({"tool_calls": raw_calls} if raw_calls else {}),
            }
        )
        calls = []
        for index, raw in enumerate(raw_calls):
            function = raw.get("function") or {}
            call_id = str(raw.get("id") or f"call_{index}")
            name = str(function.get("name") or "")
            arguments = function.get("arguments")
            if isinstance(arguments, dict):
                calls.append(RequestedCall(call_id, name, arguments))
                continue
            try:
                parsed = json.loads(arguments or "{}")
            except json.JSONDecodeError as exc:
                calls.append(
                    RequestedCall(
                        call_id,
                        name,
                        error=f"arguments are not valid JSON ({exc.msg} at position {exc.pos})",
                    )
                )
                continue
            if not isinstance(parsed, dict):
                calls.append(RequestedCall(call_id, name, error="arguments must be a JSON object"))
            else:
                calls.append(RequestedCall(call_id, name, parsed))
        return AssistantTurn(text, calls)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.http.aclose()
