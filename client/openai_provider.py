"""OpenAI-compatible provider: chat completions with tools over ``httpx2`` (OpenAI, vLLM,
Ollama, llama.cpp, ...). ``OPENAI_API_KEY`` is optional for local servers.

The conversation is rendered at each request: tool-call arguments are always re-serialised
from the repaired JSON object (several OpenAI-compatible servers parse the history's arguments
and refuse the request when one does not parse), an assistant message always has content or
tool calls, and every tool call is answered by one ``tool`` message. OpenAI caches prompt
prefixes by itself; the reply's ``cached_tokens`` are counted as cache reads."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx2

from .connection import ToolSpec
from .conversation import Conversation, ModelTurn, RequestedCall
from .errors import ConfigurationError, ProviderError
from .llm import SYSTEM_PROMPT, AssistantTurn, RetryPolicy, TemporaryError, parse_retry_after
from .policy import Usage

__all__ = ["DEFAULT_OPENAI_BASE_URL", "OpenAIBackend", "convert_tools", "render_messages"]

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


def render_messages(conversation: Conversation, system_prompt: str) -> list[dict[str, Any]]:
    """The conversation as chat-completions ``messages``."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}]
    for turn in conversation.turns:
        if isinstance(turn, ModelTurn):
            message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
            if turn.calls:
                message["tool_calls"] = [
                    {
                        "id": c.call_id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                    }
                    for c in turn.calls
                ]
            messages.append(message)
            continue
        messages += [
            {
                "role": "tool",
                "tool_call_id": r.call_id,
                # the wire format has no error flag: the text says it
                "content": r.text
                if not r.is_error or r.text.startswith("ERROR")
                else f"ERROR: {r.text}",
            }
            for r in turn.results
        ]
        if turn.text:
            messages.append({"role": "user", "content": turn.text})
    return messages


def parse_calls(raw_calls: list[Any]) -> list[RequestedCall]:
    """A reply's ``tool_calls``; arguments that are not a JSON object become the call's error."""
    calls = []
    for index, raw in enumerate(raw_calls):
        raw = raw if isinstance(raw, dict) else {}
        function = raw.get("function") if isinstance(raw.get("function"), dict) else {}
        call_id = str(raw.get("id") or f"call_{index}")
        name = str(function.get("name") or "")
        arguments = function.get("arguments")
        if isinstance(arguments, dict):
            calls.append(RequestedCall(call_id, name, arguments))
            continue
        try:
            parsed = json.loads(arguments or "{}") if isinstance(arguments, str) else arguments
        except json.JSONDecodeError as exc:
            error = f"arguments are not valid JSON ({exc.msg} at position {exc.pos})"
            calls.append(RequestedCall(call_id, name, error=error))
            continue
        if not isinstance(parsed, dict):
            calls.append(RequestedCall(call_id, name, error="arguments must be a JSON object"))
        else:
            calls.append(RequestedCall(call_id, name, parsed))
    return calls


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
        self.system_prompt = system_prompt
        self._tools = convert_tools(tools)
        self.request_log: list[dict[str, int]] = []  # tokens of each request, in order

    async def _request(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        url = f"{self.base_url}/chat/completions"
        body = {
            "model": self.model,
            "messages": messages,
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
        if response.status_code == 404:
            hint = "" if self.base_url.endswith("/v1") else f" (did you mean {self.base_url}/v1?)"
            raise ProviderError(
                f"the endpoint {self.base_url} has no chat completions API or no model "
                f"{self.model!r} (HTTP 404){hint}: {response.text[:300]}"
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

    async def complete(self, conversation: Conversation) -> AssistantTurn:
        """Ask the model (retrying rate limits, server errors and connection failures)."""
        messages = render_messages(conversation, self.system_prompt)
        data = await self.retry.run(
            lambda: self._request(messages), self.usage, f"LLM endpoint {self.base_url}"
        )
        self.usage.requests += 1
        usage = data.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        cached = int(details.get("cached_tokens") or 0)
        self.usage.input_tokens += prompt
        self.usage.output_tokens += int(usage.get("completion_tokens") or 0)
        self.usage.cache_read_tokens += cached
        self.request_log.append({"input": prompt - cached, "cache_write": 0, "cache_read": cached})
        choices = data.get("choices") or []
        if not choices:
            raise ProviderError(f"the endpoint returned no choices: {str(data)[:300]}")
        message = choices[0].get("message") or {}
        text = message.get("content") or ""
        if not isinstance(text, str):  # content parts
            text = " ".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
        return AssistantTurn(text, parse_calls(message.get("tool_calls") or []))

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.http.aclose()
