"""Standards-following fake LLM endpoints on 127.0.0.1, for tests and the token benchmark.

:class:`FakeEndpoint` serves the Anthropic Messages API (``POST /v1/messages``,
``GET /v1/models[/{id}]``) and the OpenAI chat-completions API (``POST /v1/chat/completions``,
``GET /v1/models``) over real HTTP, in a thread. Every request is checked the way the public
APIs check it (``llm_api_rules``): a request the real API would refuse gets its 400 answer, so a
client that sends one fails here as it would there.

Usage is computed, not asserted: tokens are counted as ``ceil(len(json) / 4)`` per content
block; on the Anthropic path a prefix ending at a ``cache_control`` breakpoint of at least 1024
tokens is written to the cache, and a later request reads from the cache the longest prefix that
ends at one of its breakpoints or up to 20 blocks before one and was written before (the API's
rule); on the OpenAI path a prefix of at least 1024 tokens seen before is read in 128-token
increments (automatic caching).

The model is a :class:`ScriptedModel`: it sets up one distinct candidate per step (a reaction
and a template from the first step prompt's lists) with two tool calls, then says so in text;
``faults`` replaces a given reply (by step and reply index within the step) with what real
models send: an empty turn, a text-only turn, malformed arguments, an unknown tool. ``http``
answers given requests (by number) with a 429 or 5xx instead.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llm_api_rules import anthropic_request_error, openai_request_error

__all__ = ["FakeEndpoint", "Reply", "ScriptedModel"]

MIN_CACHE_TOKENS = 1024
LOOKBACK_BLOCKS = 20


def tokens(block: Any) -> int:
    """The fake tokenizer: a token per 4 characters of the block's JSON (cache marks excluded)."""
    if isinstance(block, dict):
        block = {k: v for k, v in block.items() if k != "cache_control"}
    return max(1, math.ceil(len(json.dumps(block, sort_keys=True)) / 4))


# ---------------------------------------------------------------------------- the model


@dataclass
class Reply:
    """A model reply, provider-neutral: text and calls ``(name, arguments)``; ``arguments`` may
    be a string (sent verbatim: malformed JSON, or a non-object on the Anthropic path)."""

    text: str | None
    calls: list[tuple[str, Any]] = field(default_factory=list)


@dataclass
class Dialogue:
    """What the scripted model reads from a request."""

    reactions: list[str]
    templates: list[str]
    step: int
    index: int  # model replies already given in this step
    results: list[tuple[str, bool]]  # the latest user turn's tool results (text, is_error)
    user_text: str
    last_calls: list[str] = field(default_factory=list)  # tools the last model turn called


STEP = re.compile(r"Step (\d+) of (\d+)")
LISTS = re.compile(r"reaction models: (.*)\ndiffusion templates: (.*)")


class ScriptedModel:
    """One distinct candidate per step: ``reactions x templates`` in order (templates of the
    ``preferred`` list first), two tool calls, then a text answer; ``faults`` maps
    ``(step, reply index)`` to ``"empty"``, ``"text_only"``, ``"malformed"``, ``"not_object"``,
    ``"unknown_tool"`` or ``"out_of_range"`` (hyper-parameters a server refuses);
    ``duplicate_at`` repeats the first step's structure at those steps;
    ``observe``: each step first reads the chosen template's source (a long tool result)."""

    def __init__(
        self,
        faults: dict[tuple[int, int], str] | None = None,
        preferred: tuple[str, ...] = ("laplacian_global", "mean_aggregation", "laplacian_nodewise"),
        duplicate_at: tuple[int, ...] = (),
        thought_words: int = 40,
        observe: bool = False,
    ) -> None:
        self.faults = dict(faults or {})
        self.preferred = preferred
        self.duplicate_at = duplicate_at
        self.thought_words = thought_words
        self.observe = observe

    def plan(self, dialogue: Dialogue, step: int) -> tuple[str, str]:
        """The step's structure; after a duplicate refusal, the next one in the list."""
        refused_duplicate = "duplicate of candidate" in dialogue.user_text
        templates = [t for t in self.preferred if t in dialogue.templates] or dialogue.templates
        pairs = list(itertools.product(templates, dialogue.reactions))
        if step in self.duplicate_at and not refused_duplicate:
            step = 1
        index = step - 1 if not refused_duplicate else step
        template, reaction = pairs[index % len(pairs)]
        return reaction, template

    def reply(self, dialogue: Dialogue) -> Reply:
        fault = self.faults.get((dialogue.step, dialogue.index))
        reaction, template = self.plan(dialogue, dialogue.step)
        setup = [
            ("select_reaction", {"reaction": reaction}),
            ("select_diffusion", {"template": template}),
        ]
        if fault == "empty":
            return Reply(None)
        if fault == "text_only":
            return Reply(f"I would try {reaction} with {template} next.")
        if fault == "malformed":
            return Reply("Setting it up.", [("select_reaction", '{"reaction": "'), setup[1]])
        if fault == "not_object":
            return Reply("Setting it up.", [("select_reaction", "reaction please"), setup[1]])
        if fault == "unknown_tool":
            return Reply("Training now.", [("train_now", {})])
        if fault == "out_of_range":  # a call the server refuses
            wide = {"template": template, "hyperparameters": {"hidden": 1000}}
            return Reply("A wide operator.", [setup[0], ("select_diffusion", wide)])
        ok = dialogue.results and not any(error for _, error in dialogue.results)
        if ok and "select_diffusion" in dialogue.last_calls:
            return Reply(f"The candidate {reaction} + {template} is set up.")
        if self.observe and dialogue.index == 0:
            return Reply(
                "Reading the operator first.", [("read_template_source", {"template": template})]
            )
        padding = " ".join(["reasoning"] * self.thought_words)
        thought = f"The curves say: compare reactions under one operator. Trying {reaction} + "
        return Reply(f"{thought}{template}. {padding}", setup)


# ---------------------------------------------------------------------------- the server


def _anthropic_dialogue(body: dict[str, Any]) -> Dialogue:
    texts: list[str] = []
    last_calls: list[str] = []
    step, index, results, user_text = 1, 0, [], ""
    for message in body["messages"]:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if message["role"] == "assistant":
            last_calls = [b.get("name") for b in blocks if b.get("type") == "tool_use"]
        if message["role"] == "user":
            texts += [b["text"] for b in blocks if b.get("type") == "text"]
            results = [
                (str(b.get("content")), bool(b.get("is_error")))
                for b in blocks
                if b.get("type") == "tool_result"
            ]
            user_text = " ".join(b["text"] for b in blocks if b.get("type") == "text")
            found = STEP.search(user_text)
            if found:
                step, index = int(found.group(1)), 0
        else:
            index += 1
    return _dialogue(texts, step, index, results, user_text, last_calls)


def _openai_dialogue(body: dict[str, Any]) -> Dialogue:
    texts: list[str] = []
    last_calls: list[str] = []
    step, index, results, user_text = 1, 0, [], ""
    for message in body["messages"]:
        role = message["role"]
        if role == "user":
            user_text = str(message["content"])
            texts.append(user_text)
            found = STEP.search(user_text)
            if found:
                step, index = int(found.group(1)), 0
        elif role == "tool":
            text = str(message["content"])
            results.append((text, text.startswith("ERROR")))
        elif role == "assistant":
            index += 1
            results, user_text = [], ""
            last_calls = [
                str((c.get("function") or {}).get("name")) for c in message.get("tool_calls") or []
            ]
    return _dialogue(texts, step, index, results, user_text, last_calls)


def _dialogue(
    texts: list[str],
    step: int,
    index: int,
    results: list,
    user_text: str,
    last_calls: list[str],
) -> Dialogue:
    reactions: list[str] = []
    templates: list[str] = []
    for text in texts:
        found = LISTS.search(text)
        if found:
            reactions = [r.strip() for r in found.group(1).split(",")]
            templates = [t.strip() for t in found.group(2).split(",")]
            break
    return Dialogue(
        reactions or ["reaction_A"],
        templates or ["laplacian_global"],
        step,
        index,
        results,
        user_text,
        last_calls,
    )


@dataclass
class Exchange:
    """One request and the answer it got."""

    path: str
    request: Any
    status: int
    response: Any
    headers: dict[str, str] = field(default_factory=dict)


class FakeEndpoint:
    """Both APIs on ``http://127.0.0.1:<port>`` (``base_url``; OpenAI's under ``/v1``).

    ``replay``: recorded answers ``(status, headers, body)`` served in order instead of the
    scripted model (each request still validated first)."""

    def __init__(
        self,
        model: ScriptedModel | None = None,
        api_key: str = "test-key",
        models: tuple[str, ...] = ("claude-sonnet-4-6", "claude-haiku-4-5", "gpt-4o-mini"),
        http: dict[int, int] | None = None,
        strict_arguments: bool = True,
        replay: list[tuple[int, dict[str, str], Any]] | None = None,
    ) -> None:
        self.model = model or ScriptedModel()
        self.api_key = api_key
        self.models = models
        self.http = dict(http or {})
        self.strict_arguments = strict_arguments
        self.replay = list(replay) if replay is not None else None
        self.exchanges: list[Exchange] = []
        self.cache: set[str] = set()
        self.seen_prefixes: dict[str, int] = {}
        self.completions = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ answers

    def answer(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple:
        """``(status, headers, body)`` for a request."""
        path = path.split("?")[0]
        if method == "GET" and path.startswith("/v1/models"):
            return self._models(path, headers)
        if method != "POST" or path not in ("/v1/messages", "/v1/chat/completions"):
            return 404, {}, {"error": {"type": "not_found_error", "message": f"no route {path}"}}
        anthropic = path == "/v1/messages"
        refused = self._auth(headers, anthropic)
        if refused:
            return refused
        try:
            body = json.loads(raw or b"null")
        except json.JSONDecodeError:
            return self._error(400, anthropic, "body is not valid JSON")
        error = (
            anthropic_request_error(body)
            if anthropic
            else openai_request_error(body, self.strict_arguments)
        )
        if error:
            return self._error(400, anthropic, error)
        if body["model"] not in self.models:
            return self._error(404, anthropic, f"model: {body['model']}")
        with self._lock:
            self.completions += 1
            number = self.completions
            if self.replay is not None:
                if not self.replay:
                    return self._error(400, anthropic, "the transcript has no more answers")
                return self.replay.pop(0)
            status = self.http.get(number)
            if status:
                code, _, payload = self._error(status, anthropic, f"HTTP {status} (scripted)")
                return code, {"retry-after": "0"}, payload
            if anthropic:
                return 200, {}, self._anthropic_reply(body)
            return 200, {}, self._openai_reply(body)

    def _models(self, path: str, headers: dict[str, str]) -> tuple:
        anthropic = "anthropic-version" in headers
        refused = self._auth(headers, anthropic)
        if refused:
            return refused
        name = path.removeprefix("/v1/models").strip("/")
        entries = [
            {"id": m, "type": "model", "object": "model", "display_name": m} for m in self.models
        ]
        if not name:
            return 200, {}, {"object": "list", "data": entries, "has_more": False}
        if name not in self.models:
            return self._error(404, anthropic, f"model: {name}")
        return 200, {}, next(e for e in entries if e["id"] == name)

    def _auth(self, headers: dict[str, str], anthropic: bool) -> tuple | None:
        """The key as ``x-api-key`` (Anthropic) or ``Authorization: Bearer`` (both; the
        current Anthropic SDK sends the latter)."""
        given = {headers.get("x-api-key"), headers.get("authorization", "").removeprefix("Bearer ")}
        if self.api_key and self.api_key not in given:
            return self._error(401, anthropic, "invalid x-api-key" if anthropic else "bad key")
        return None

    @staticmethod
    def _error(status: int, anthropic: bool, message: str) -> tuple:
        kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
        kind = kinds.get(status, "rate_limit_error" if status == 429 else "api_error")
        if anthropic:
            return status, {}, {"type": "error", "error": {"type": kind, "message": message}}
        return status, {}, {"error": {"message": message, "type": kind, "code": None}}

    # ------------------------------------------------------------------ Anthropic

    def _anthropic_blocks(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        blocks = list(body.get("tools") or [])
        system = body.get("system") or []
        blocks += [{"type": "text", "text": system}] if isinstance(system, str) else system
        for message in body["messages"]:
            content = message["content"]
            blocks += [{"type": "text", "text": content}] if isinstance(content, str) else content
        return blocks

    def _anthropic_usage(self, body: dict[str, Any]) -> dict[str, int]:
        blocks = self._anthropic_blocks(body)
        digest = hashlib.sha256()
        hashes, cumulative, total = [], [], 0
        for block in blocks:
            clean = {k: v for k, v in block.items() if k != "cache_control"}
            digest.update(json.dumps(clean, sort_keys=True).encode())
            hashes.append(digest.copy().hexdigest())
            total += tokens(block)
            cumulative.append(total)
        marks = [i for i, b in enumerate(blocks) if "cache_control" in b]
        hit = -1
        for mark in marks:
            for position in range(mark, max(mark - LOOKBACK_BLOCKS, 0) - 1, -1):
                if hashes[position] in self.cache:
                    hit = max(hit, position)
                    break
        read = cumulative[hit] if hit >= 0 else 0
        written_to = hit
        for mark in marks:
            if cumulative[mark] >= MIN_CACHE_TOKENS:
                self.cache.add(hashes[mark])
                written_to = max(written_to, mark)
        write = cumulative[written_to] - read if written_to > hit else 0
        return {
            "input_tokens": total - read - write,
            "cache_creation_input_tokens": write,
            "cache_read_input_tokens": read,
        }

    def _anthropic_reply(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.model.reply(_anthropic_dialogue(body))
        content: list[dict[str, Any]] = []
        if reply.text:
            content.append({"type": "text", "text": reply.text})
        for index, (name, arguments) in enumerate(reply.calls):
            value = arguments
            if isinstance(arguments, str):  # not an object: sent as the model wrote it
                try:
                    value = json.loads(arguments)
                except json.JSONDecodeError:
                    value = arguments
            call_id = f"toolu_{self.completions:03d}_{index}"
            content.append({"type": "tool_use", "id": call_id, "name": name, "input": value})
        usage = self._anthropic_usage(body)
        usage["output_tokens"] = sum(tokens(b) for b in content) if content else 1
        return {
            "id": f"msg_{self.completions:04d}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": "tool_use" if reply.calls else "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }

    # ------------------------------------------------------------------ OpenAI

    def _openai_usage(self, body: dict[str, Any]) -> dict[str, Any]:
        blocks = list(body.get("tools") or []) + list(body["messages"])
        digest = hashlib.sha256()
        total, cached = 0, 0
        prefixes = []
        for block in blocks:
            digest.update(json.dumps(block, sort_keys=True).encode())
            total += tokens(block)
            prefixes.append((digest.copy().hexdigest(), total))
        for key, count in prefixes:
            if key in self.seen_prefixes and count >= MIN_CACHE_TOKENS:
                cached = count // 128 * 128
        for key, count in prefixes:
            self.seen_prefixes[key] = count
        return {"prompt_tokens": total, "prompt_tokens_details": {"cached_tokens": cached}}

    def _openai_reply(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.model.reply(_openai_dialogue(body))
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if reply.calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{self.completions:03d}_{index}",
                    "type": "function",
                    "function": {
                        "name": name,
                        "arguments": arguments
                        if isinstance(arguments, str)
                        else json.dumps(arguments),
                    },
                }
                for index, (name, arguments) in enumerate(reply.calls)
            ]
        usage = self._openai_usage(body)
        usage["completion_tokens"] = tokens(message)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {
            "id": f"chatcmpl-{self.completions:04d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if reply.calls else "stop",
                }
            ],
            "usage": usage,
        }

    # ------------------------------------------------------------------ HTTP

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                return

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra, payload = endpoint.answer(method, self.path, headers, raw)
                try:
                    request = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    request = raw.decode(errors="replace")
                endpoint.exchanges.append(
                    Exchange(self.path, request, status, payload, dict(extra))
                )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def do_GET(self) -> None:  # noqa: N802
                self._serve("GET")

        return Handler

    # ------------------------------------------------------------------ reading back

    def completion_exchanges(self) -> list[Exchange]:
        """The exchanges of ``/messages`` and ``/chat/completions``, in order."""
        return [
            e for e in self.exchanges if e.path.split("?")[0].endswith(("messages", "completions"))
        ]

    def refused(self) -> list[Exchange]:
        """Completion requests the endpoint refused as invalid (HTTP 400)."""
        return [e for e in self.completion_exchanges() if e.status == 400]
