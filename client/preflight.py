"""The pre-flight check of an LLM endpoint and model, before any server or session is started.

One models request (``GET /v1/models/{model}`` for Anthropic, ``GET {base}/models`` for an
OpenAI-compatible endpoint), and a one-token completion only where the models endpoint cannot
say (a proxy without it, a model the list does not name). Every failure is one line: the
endpoint cannot be reached, the key is rejected, the model is unknown, or the base URL has no
API there (with the ``/v1`` hint). A rate limit or a server error means the endpoint is there:
the run starts, and its requests retry.
"""

from __future__ import annotations

import os
from typing import Any

import httpx2

from .errors import ConfigurationError, ProviderError

__all__ = ["ANTHROPIC_BASE_URL", "anthropic_base_url", "openai_base_url", "preflight"]

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"


def anthropic_base_url(base_url: str | None) -> str:
    """``--base-url``, else ``$ANTHROPIC_BASE_URL``, else the public API (without ``/v1``)."""
    return (base_url or os.environ.get("ANTHROPIC_BASE_URL") or ANTHROPIC_BASE_URL).rstrip("/")


def openai_base_url(base_url: str | None) -> str:
    """``--base-url``, else ``$OPENAI_BASE_URL``, else the public API (with ``/v1``)."""
    from .openai_provider import DEFAULT_OPENAI_BASE_URL

    return (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL).rstrip("/")


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:160]


async def _get(client: httpx2.AsyncClient, url: str, where: str) -> httpx2.Response:
    try:
        return await client.get(url)
    except httpx2.HTTPError as exc:
        raise ProviderError(
            f"cannot reach the LLM endpoint at {where} ({_reason(exc)}): check --base-url"
        ) from exc


async def _post(
    client: httpx2.AsyncClient, url: str, body: dict[str, Any], where: str
) -> httpx2.Response:
    try:
        return await client.post(url, json=body)
    except httpx2.HTTPError as exc:
        raise ProviderError(
            f"cannot reach the LLM endpoint at {where} ({_reason(exc)}): check --base-url"
        ) from exc


def _rejected_key(response: httpx2.Response, where: str, variable: str) -> None:
    if response.status_code in (401, 403):
        raise ConfigurationError(
            f"the LLM endpoint at {where} rejected the API key (HTTP {response.status_code}): "
            f"check {variable}"
        )


def _model_ids(response: httpx2.Response) -> list[str]:
    try:
        data = response.json().get("data") or []
    except (ValueError, AttributeError):
        return []
    return [str(entry.get("id")) for entry in data if isinstance(entry, dict) and entry.get("id")]


async def check_anthropic(model: str, base: str, key: str, timeout: float) -> None:
    """The model exists at the Anthropic endpoint and the key is accepted."""
    headers = {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION}
    hint = " (drop the trailing /v1: the API paths add it)" if base.endswith("/v1") else ""
    async with httpx2.AsyncClient(timeout=timeout, headers=headers) as client:
        response = await _get(client, f"{base}/v1/models/{model}", base)
        _rejected_key(response, base, "ANTHROPIC_API_KEY")
        if response.status_code == 200 or response.status_code == 429:
            return
        if response.status_code >= 500:
            return
        if response.status_code == 404:  # an alias the endpoint does not resolve, a proxy
            probe = await _post(  # without a models endpoint, or no such model: ask once
                client,
                f"{base}/v1/messages",
                {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]},
                base,
            )
            _rejected_key(probe, base, "ANTHROPIC_API_KEY")
            if probe.status_code < 400 or probe.status_code == 429 or probe.status_code >= 500:
                return
            listing = await _get(client, f"{base}/v1/models", base)
            if listing.status_code == 200 and not hint:
                known = ", ".join(_model_ids(listing)[:8]) or "none listed"
                raise ConfigurationError(
                    f"the Anthropic endpoint at {base} has no model {model!r} (it has: {known})"
                )
            raise ConfigurationError(
                f"no Anthropic Messages API for model {model!r} at {base} "
                f"(HTTP {probe.status_code}){hint}"
            )
        raise ConfigurationError(
            f"the Anthropic endpoint at {base} answered HTTP {response.status_code} for model "
            f"{model!r}{hint}"
        )


async def check_openai(model: str, base: str, key: str | None, timeout: float) -> None:
    """The endpoint speaks the OpenAI API and serves the model; the key is accepted."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    hint = "" if base.endswith("/v1") else f"; did you mean --base-url {base}/v1 ?"
    async with httpx2.AsyncClient(timeout=timeout, headers=headers) as client:
        response = await _get(client, f"{base}/models", base)
        _rejected_key(response, base, "OPENAI_API_KEY")
        if response.status_code == 429 or response.status_code >= 500:
            return
        known = _model_ids(response) if response.status_code == 200 else []
        if response.status_code == 200 and (not known or model in known):
            return
        # no models endpoint, or a list without the model (local servers often serve any name)
        probe = await _post(
            client,
            f"{base}/chat/completions",
            {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]},
            base,
        )
        _rejected_key(probe, base, "OPENAI_API_KEY")
        if probe.status_code < 400 or probe.status_code == 429 or probe.status_code >= 500:
            return
        if known:
            raise ConfigurationError(
                f"the endpoint at {base} does not serve model {model!r} (it lists: "
                f"{', '.join(known[:8])})"
            )
        raise ConfigurationError(
            f"no OpenAI-compatible API at {base} (HTTP {probe.status_code} on "
            f"/chat/completions){hint}"
        )


async def preflight(
    llm: str, model: str | None, base_url: str | None, timeout: float = 15.0
) -> str:
    """Check the provider's endpoint and model; returns ``"model at base"``. Raises
    :class:`ConfigurationError` (exit 2) or :class:`ProviderError` (unreachable, exit 1)."""
    if llm == "anthropic":
        from .anthropic_provider import DEFAULT_ANTHROPIC_MODEL

        name = model or DEFAULT_ANTHROPIC_MODEL
        base = anthropic_base_url(base_url)
        await check_anthropic(name, base, os.environ.get("ANTHROPIC_API_KEY", ""), timeout)
        return f"{name} at {base}"
    if llm == "openai":
        name = model or os.environ.get("OPENAI_MODEL") or ""
        base = openai_base_url(base_url)
        await check_openai(name, base, os.environ.get("OPENAI_API_KEY"), timeout)
        return f"{name} at {base}"
    return "offline"
