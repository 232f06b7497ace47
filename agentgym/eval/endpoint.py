"""Where an eval's policy comes from: an endpoint (checked first), a local engine, or an object.

:func:`open_policy` yields a ready :class:`~agentgym.policy.Policy` for the length of a run and
releases it afterwards (closing connections, stopping a vLLM server it started). For an HTTP
endpoint it first sends one cheap request (:func:`preflight`), so a server that is down or
refuses the credentials fails the command at once, with one clear message, instead of producing
a run full of failed rollouts. A server that is starting or restarting under its supervisor on
this machine (``agentgym serve``, see :func:`~agentgym.policies.vllm_server.wait_until_serving`)
is waited for instead, up to a bound, with a log line that says what the run waits for.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from agentgym.errors import PolicyConnectionError, PolicyError, PolicyHTTPError
from agentgym.policy import Policy

__all__ = ["given_policy", "open_policy", "preflight"]

logger = logging.getLogger(__name__)


async def _get_models(url: str, headers: dict[str, str],
                      timeout_s: float) -> tuple[Any, str | None]:
    """``GET url``: ``(response, None)``, or ``(None, why nothing answered)``."""
    import httpx  # heavy (its CLI module pulls in rich): importing eval stays light

    async with httpx.AsyncClient(timeout=timeout_s) as client:
        try:
            return await client.get(url, headers=headers), None
        except httpx.TransportError as exc:
            return None, f"{type(exc).__name__}: {exc or 'no answer'}"


async def preflight(base_url: str, model: str, api_key: str | None = None,
                    timeout_s: float = 10.0, wait_s: float = 600.0) -> None:
    """One cheap request (``GET {base_url}/models``) to fail fast on a bad endpoint.

    When nothing answers but a supervisor on this machine is (re)starting the server at
    ``base_url``, wait for it (up to ``wait_s``) and ask again.

    Raises:
        PolicyConnectionError: nothing answers at ``base_url``.
        PolicyHTTPError: the credentials are refused (401/403) or the server errors.
    """
    from agentgym.policies.vllm_server import wait_until_serving  # imports httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/models"
    response, failure = await _get_models(url, headers, timeout_s)
    if failure and await wait_until_serving(base_url, wait_s):
        response, failure = await _get_models(url, headers, timeout_s)
    if failure:
        raise PolicyConnectionError(f"cannot reach the endpoint {base_url} ({failure}); "
                                    "is the server running?")
    status = response.status_code
    if status in (401, 403):
        raise PolicyHTTPError(f"the endpoint {base_url} refused the credentials (HTTP {status}); "
                              "pass the API key's variable with --api-key-env", status)
    if status == 404:
        logger.warning("%s has no /models route; skipping the model check", base_url)
        return
    if status >= 400:
        raise PolicyHTTPError(f"the endpoint {base_url} answered HTTP {status} to GET /models",
                              status)
    try:
        served = [m.get("id") for m in response.json().get("data", [])]
    except (ValueError, AttributeError):
        served = []
    if served and model not in served:
        logger.warning("model %r is not listed by %s (it lists %s)", model, base_url,
                       ", ".join(map(str, served[:10])))


@contextlib.asynccontextmanager
async def open_policy(model: str, *, base_url: str | None = None, api_key: str | None = None,
                      engine: str | None = None, max_concurrent: int = 8,
                      token_ids: bool = False) -> AsyncIterator[tuple[Policy, str]]:
    """Yield ``(policy, endpoint description)`` for a run and release it afterwards.

    Args:
        model: the served model name, or a local folder / name for ``engine``.
        base_url: an OpenAI-compatible API root (with no ``engine``); several, comma-separated,
            are replicas of one model behind a
            :class:`~agentgym.policies.router.ReplicaRouter`.
        api_key: bearer token for ``base_url``.
        engine: None for ``base_url``; ``"hf"`` (embedded, in-process) or ``"vllm"`` (a local
            server started for the run and stopped after it).
        max_concurrent: requests in flight.
        token_ids: ask a vLLM server for token ids and logprobs (exact token counts).

    Raises:
        PolicyError: no endpoint given, unknown engine, vLLM missing, or the preflight failed.
    """
    if engine == "hf":
        from agentgym.policies.serve import make_policy

        policy = make_policy("hf", model)
        try:
            yield policy, "in-process (hf engine)"
        finally:
            await policy.aclose()
        return
    from agentgym.policies.openai_client import OpenAIPolicy
    from agentgym.policies.router import ReplicaRouter

    if engine == "vllm":
        from agentgym.policies.model_prep import resolve_model
        from agentgym.policies.vllm_server import VLLMServer, VLLMServerConfig, vllm_available

        if not vllm_available():
            raise PolicyError("--engine vllm needs vLLM installed (pip install 'agentgym[vllm]')")
        config = VLLMServerConfig(model=resolve_model(model), enable_lora=False)
        async with VLLMServer(config) as server:
            policy = OpenAIPolicy(server.base_url, config.served_model_name,
                                  max_concurrency=max_concurrent, vllm_extras=True)
            try:
                yield policy, f"{server.base_url} (vLLM started for the run)"
            finally:
                await policy.aclose()
        return
    if engine not in (None, "openai"):
        raise PolicyError(f"unknown engine {engine!r}; choose hf or vllm (or give --base-url)")
    if not base_url:
        raise PolicyError("give --base-url URL (an OpenAI-compatible endpoint) or --engine hf|vllm")
    urls = [url.strip() for url in base_url.split(",") if url.strip()]
    for url in urls:
        await preflight(url, model, api_key)
    policy: OpenAIPolicy | ReplicaRouter
    if len(urls) == 1:
        policy = OpenAIPolicy(urls[0], model, api_key=api_key, max_concurrency=max_concurrent,
                              vllm_extras=token_ids)
    else:
        policy = ReplicaRouter.from_urls(urls, model, api_key=api_key,
                                         max_concurrency=max_concurrent, vllm_extras=token_ids)
    try:
        yield policy, base_url
    finally:
        await policy.aclose()


@contextlib.asynccontextmanager
async def given_policy(policy: Policy) -> AsyncIterator[tuple[Policy, str]]:
    """A caller's policy: used as is and left open (the caller owns it)."""
    yield policy, f"in-process ({type(policy).__name__})"
