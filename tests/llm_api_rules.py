"""What the public LLM APIs refuse: request checks of the Anthropic Messages API and of the
OpenAI chat-completions API (an OpenAI-compatible server that parses the history's tool-call
arguments, as several do, when ``strict_arguments``), returning the 400 message or None. Used
by ``fake_llm_endpoints`` so that a client that sends a request the real API would refuse fails
here as it would there."""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["anthropic_request_error", "openai_request_error"]

_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def anthropic_request_error(body: Any) -> str | None:
    """Why the Messages API would refuse this request body (400), or None."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: Field required (an integer >= 1)"
    for i, tool in enumerate(body.get("tools") or []):
        if not _NAME.match(str(tool.get("name", ""))):
            return f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return f"tools.{i}.custom.input_schema.type: Input should be 'object'"
    system = body.get("system")
    if isinstance(system, list):
        for i, block in enumerate(system):
            if block.get("type") != "text" or not str(block.get("text", "")).strip():
                return f"system.{i}: text content blocks must contain non-whitespace text"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    merged: list[dict[str, Any]] = []  # the API combines consecutive turns of one role
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}] if content else []
        if not isinstance(content, list):
            return f"messages.{i}.content: Input should be a valid list"
        final_assistant = i == len(messages) - 1 and role == "assistant"
        if not content and not final_assistant:
            return (
                f"messages.{i}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"] = merged[-1]["content"] + content
        else:
            merged.append({"role": role, "content": list(content), "index": i})
    if merged[0]["role"] != "user":
        return 'messages: first message must use the "user" role'
    marks = sum(1 for block in system or [] if isinstance(block, dict) and "cache_control" in block)
    marks += sum(1 for tool in body.get("tools") or [] if "cache_control" in tool)
    previous_uses: list[str] = []
    for message in merged:
        i = message["index"]
        seen_other = False
        answered: list[str] = []
        for j, block in enumerate(message["content"]):
            if not isinstance(block, dict):
                return f"messages.{i}.content.{j}: Input should be a valid dictionary"
            if "cache_control" in block:
                marks += 1
                if block["cache_control"].get("type") != "ephemeral":
                    return f"messages.{i}.content.{j}.cache_control.type: should be 'ephemeral'"
            kind = block.get("type")
            if kind == "text":
                if not isinstance(block.get("text"), str) or not block["text"]:
                    return f"messages.{i}.content.{j}: text content blocks must be non-empty"
                if not block["text"].strip():
                    return "messages: text content blocks must contain non-whitespace text"
                seen_other = True
            elif kind == "tool_use":
                if message["role"] != "assistant":
                    return f"messages.{i}.content.{j}: tool_use blocks are only for assistant"
                if not _ID.match(str(block.get("id", ""))):
                    return f"messages.{i}.content.{j}.tool_use.id: String should match pattern"
                if not _NAME.match(str(block.get("name", ""))):
                    return f"messages.{i}.content.{j}.tool_use.name: String should match pattern"
                if not isinstance(block.get("input"), dict):
                    return f"messages.{i}.content.{j}.tool_use.input: Input should be a valid dict"
            elif kind == "tool_result":
                if message["role"] != "user":
                    return f"messages.{i}.content.{j}: tool_result blocks are only for user"
                if seen_other:
                    return (
                        f"messages.{i}: tool_result blocks must come first in the content, "
                        "before any text"
                    )
                use_id = block.get("tool_use_id")
                if use_id not in previous_uses:
                    return (
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {use_id}. Each `tool_result` block must have a "
                        "corresponding `tool_use` block in the previous message."
                    )
                answered.append(use_id)
                result = block.get("content", "")
                if not isinstance(result, str | list):
                    return f"messages.{i}.content.{j}.tool_result.content: Input should be a str"
            else:
                return f"messages.{i}.content.{j}.type: unknown content block type {kind!r}"
        missing = [u for u in previous_uses if u not in answered]
        if missing and message["role"] == "user":
            return (
                f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message."
            )
        uses = [b["id"] for b in message["content"] if b.get("type") == "tool_use"]
        if len(set(uses)) != len(uses):
            return f"messages.{i}: `tool_use` ids must be unique"
        previous_uses = uses if message["role"] == "assistant" else []
    if previous_uses and merged[-1]["role"] == "assistant":
        return "messages: the final assistant message has tool_use blocks without results"
    if marks > 4:
        return f"A maximum of 4 blocks with cache_control may be provided. Found {marks}."
    return None


def openai_request_error(body: Any, strict_arguments: bool = True) -> str | None:
    """Why a chat-completions endpoint would refuse this body (400), or None.
    ``strict_arguments``: the history's tool-call arguments must parse as a JSON object, as
    several OpenAI-compatible servers require."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    for i, tool in enumerate(body.get("tools") or []):
        function = tool.get("function") or {}
        if tool.get("type") != "function" or not _NAME.match(str(function.get("name", ""))):
            return f"Invalid 'tools[{i}].function.name': string does not match pattern"
        if not isinstance(function.get("parameters", {}), dict):
            return f"Invalid 'tools[{i}].function.parameters': expected an object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "Invalid 'messages': empty array. Expected an array with minimum length 1"
    pending: list[str] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            return f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', ..."
        if pending and role != "tool":
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(pending)}"
            )
        content = message.get("content")
        if role == "tool":
            if message.get("tool_call_id") not in pending:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'."
                )
            pending.remove(message["tool_call_id"])
            if not isinstance(content, str):
                return f"Invalid type for 'messages[{i}].content': expected a string"
            continue
        calls = message.get("tool_calls") or []
        if role == "assistant":
            if content is None and not calls:
                return f"Invalid value for 'messages[{i}].content': expected a string, got null."
            for j, call in enumerate(calls):
                function = call.get("function") or {}
                if not call.get("id") or call.get("type") != "function":
                    return f"Missing required parameter: 'messages[{i}].tool_calls[{j}].id'"
                arguments = function.get("arguments")
                if not isinstance(arguments, str):
                    return (
                        f"Invalid type for 'messages[{i}].tool_calls[{j}].function.arguments': "
                        "expected a string"
                    )
                if strict_arguments:
                    try:
                        parsed = json.loads(arguments)
                    except json.JSONDecodeError:
                        parsed = None
                    if not isinstance(parsed, dict):
                        return (
                            f"messages[{i}].tool_calls[{j}].function.arguments is not a valid "
                            "JSON object"
                        )
            pending = [str(c.get("id")) for c in calls]
        elif content is None:
            return f"Invalid value for 'messages[{i}].content': expected a string, got null."
    if pending:
        return f"tool_call_ids did not have response messages: {', '.join(pending)}"
    return None
