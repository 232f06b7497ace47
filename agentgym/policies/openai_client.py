"""An async client for any OpenAI-compatible chat endpoint (vLLM, or a hosted API).

It implements the Policy protocol over ``POST {base_url}/chat/completions``:

* one ``httpx.AsyncClient`` per policy (keep-alive connections are reused);
* bounded concurrency with our own ``asyncio.Semaphore`` sized to the connection pool: with
  thousands of requests in flight, httpx's pool queue costs grow with the number of waiters, so
  requests wait on the semaphore (cheap, FIFO) and only ``max_concurrency`` ever reach httpx;
* timeouts per phase (connect / read / write / pool), and retries with exponential backoff and
  jitter for connection errors, timeouts and 5xx answers only (4xx is the caller's fault and
  is raised at once);
* typed errors: :class:`~agentgym.errors.PolicyConnectionError` (never reached the server, or it
  stopped answering), :class:`~agentgym.errors.PolicyHTTPError` (non-2xx, with the status) and
  its subclass :class:`~agentgym.errors.ContextWindowError` (a 400 saying the prompt exceeds the
  model's context window: the episode ran out of context, the server is fine);
* a supervised server that restarts (:class:`~agentgym.policies.vllm_server.VLLMServer`, here or
  in another process on this machine) is waited for: a request that finds the server gone is
  sent again once it is healthy, within ``reconnect_timeout_s`` (and the caller's deadline),
  without spending its retries. An endpoint nobody supervises fails after the retries as before.

Against vLLM it asks for token-level data (``logprobs: true`` and vLLM's
``return_token_ids: true``), and reads back ``prompt_token_ids`` (response level),
``choices[i].token_ids`` and ``choices[i].logprobs.content[j].logprob``. Hosted endpoints
ignore or reject those extras: set ``vllm_extras=False`` for them and the token fields of the
completions stay empty. Tool calls are read from native ``tool_calls`` (vLLM's hermes parser,
hosted APIs) or, failing that, from Hermes ``<tool_call>`` text. Against vLLM the default is the
latter (``raw_tool_text``): the server leaves the text alone, so it matches the token ids.

Given the served model's tokenizer (``tokenizer=``, what the trainer does), later turns of an
episode continue from token ids (``generate(..., prefix_ids=...)``, see
:mod:`agentgym.policies.chat_tokens`): the client builds the prompt ids itself and sends them to
vLLM's ``POST {base_url}/completions`` (``prompt`` as a list of ids), parsing tool calls from
the returned text.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from agentgym.errors import (
    ContextWindowError,
    PolicyConnectionError,
    PolicyError,
    PolicyHTTPError,
)
from agentgym.parsing import parse_assistant_message, parse_text_tool_calls
from agentgym.policies.chat_tokens import continue_prompt
from agentgym.policies.vllm_server import wait_until_serving
from agentgym.policy import Completion, SamplingParams

__all__ = ["OpenAIPolicy", "clean_messages"]

logger = logging.getLogger(__name__)

_MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")
_RETRYABLE = (httpx.TransportError,)  # connect/read/write errors and every timeout
# The server went away (refused, reset, closed mid-answer): maybe restarting, worth waiting for.
_SERVER_GONE = (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
# vLLM's (and OpenAI's) 400 for a prompt longer than the window.
_CONTEXT_WINDOW = re.compile(r"maximum context length is (\d+) tokens")


def _http_error(url: str, response: httpx.Response) -> PolicyHTTPError:
    """The typed error of a non-2xx answer (a context-window 400 is ContextWindowError)."""
    message = f"{url} answered {response.status_code}: {response.text[:500]}"
    match = _CONTEXT_WINDOW.search(response.text) if response.status_code == 400 else None
    if match:
        return ContextWindowError(message, 400, int(match.group(1)))
    return PolicyHTTPError(message, response.status_code)


def clean_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Keep only the OpenAI message fields (drop token ids, logprobs, weight versions...)."""
    return [{k: m[k] for k in _MESSAGE_KEYS if m.get(k) is not None} for m in messages]


def _sampling_fields(sampling: SamplingParams) -> dict[str, Any]:
    """The request fields of ``sampling``, the same for chat and token completions."""
    fields: dict[str, Any] = {"n": sampling.n, "temperature": sampling.temperature,
                              "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}
    if sampling.stop:
        fields["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        fields["seed"] = sampling.seed
    return fields


def _finish_reason(choice: Mapping[str, Any], calls: Sequence[Any]) -> str:
    """The choice's finish reason; ``"tool_calls"`` when calls were parsed here from the text,
    as the server would say had it parsed them itself."""
    finish = choice.get("finish_reason") or "stop"
    return "tool_calls" if finish == "stop" and calls else finish


class OpenAIPolicy:
    """A policy behind an OpenAI-compatible HTTP endpoint.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: the model name to request; :meth:`set_model` switches it (LoRA versions).
        api_key: sent as ``Authorization: Bearer``; None sends no header.
        max_concurrency: requests in flight at once (also the connection pool size).
        timeout: seconds for a whole response to arrive (read timeout); connect gets 10 s.
        max_retries: extra attempts after a connection error, timeout or 5xx.
        backoff_s: the first retry's delay; doubled each retry, with jitter, capped at 30 s.
        vllm_extras: request vLLM's token ids and logprobs (off for hosted endpoints).
        raw_tool_text: ask the server not to parse tool calls (``tool_choice: "none"``; vLLM
            still renders the tools into the prompt) and parse the Hermes ``<tool_call>`` text
            here instead. The completion's text is then exactly what the tokens say, so the next
            turn's prompt re-renders it verbatim and token-in/token-out never drifts. None
            means "when ``vllm_extras`` is on" (training against vLLM); hosted endpoints need
            it off, or they would not call tools at all.
        weight_version: recorded on completions until :meth:`set_model` changes it.
        tokenizer: the served model's tokenizer; with ``vllm_extras`` it enables token
            continuation (``prefix_ids``).
        transport: an httpx transport to use instead of the network (tests, proxies).
        reconnect_timeout_s: how long a request waits, in all, for a supervised server on
            this machine that is restarting (see :func:`wait_until_serving`).
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 max_concurrency: int = 64, timeout: float = 120.0, max_retries: int = 3,
                 backoff_s: float = 0.5, vllm_extras: bool = True,
                 raw_tool_text: bool | None = None,
                 weight_version: str | int | None = None, tokenizer: Any | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 reconnect_timeout_s: float = 600.0):
        if max_concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError("max_concurrency >= 1, max_retries >= 0 and timeout > 0 required")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.weight_version = weight_version
        self.api_key, self.timeout, self.max_concurrency = api_key, timeout, max_concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self.vllm_extras = vllm_extras
        self.raw_tool_text = vllm_extras if raw_tool_text is None else raw_tool_text
        self.tokenizer = tokenizer
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=max_concurrency,
                              max_keepalive_connections=max_concurrency)
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, limits=limits, transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout), pool=None))
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self.requests_sent = 0  # HTTP attempts, retries included (metrics and tests)

    def set_model(self, model: str, weight_version: str | int | None = None) -> None:
        """Route new requests to ``model`` (e.g. a freshly loaded LoRA ``policy-v3``)."""
        self.model = model
        self.weight_version = weight_version

    # --- the protocol ----------------------------------------------------------------------

    @property
    def accepts_prefix_ids(self) -> bool:
        """Token continuation needs the tokenizer and vLLM's token-level extras."""
        return self.tokenizer is not None and self.vllm_extras

    async def generate(self, messages: Sequence[Mapping[str, Any]],
                       tools: Sequence[Mapping[str, Any]] | None,
                       sampling: SamplingParams, *,
                       prefix_ids: Sequence[int] | None = None) -> list[Completion]:
        """Sample ``sampling.n`` completions from the endpoint.

        ``prefix_ids`` (the previous turn's prompt and completion ids; used when
        :attr:`accepts_prefix_ids`) continues the chat from those tokens.

        Raises:
            PolicyConnectionError: the server could not be reached within the retries.
            PolicyHTTPError: it answered non-2xx (4xx at once, 5xx after the retries).
            ContextWindowError: the prompt does not fit the model's context window.
            PolicyError: the answer was not an OpenAI (chat) completion.
        """
        model, version = self.model, self.weight_version  # snapshot: a sync may switch them
        prompt_ids = None
        if prefix_ids and self.accepts_prefix_ids:
            eos = {self.tokenizer.eos_token_id}
            prompt_ids = continue_prompt(self.tokenizer, messages, tools, prefix_ids, eos)
        try:
            if prompt_ids is None:
                data = await self.post_json("/chat/completions",
                                            self._request_body(messages, tools, sampling, model))
                return self._parse_response(data, version)
            data = await self.post_json("/completions",
                                        self._token_request_body(prompt_ids, sampling, model))
            return self._parse_token_response(data, prompt_ids, version)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise PolicyError(f"malformed completion from {self.base_url}: {exc!r}") from exc

    async def aclose(self) -> None:
        """Close the connection pool (idempotent)."""
        await self._client.aclose()

    # --- HTTP ------------------------------------------------------------------------------

    async def post_json(self, path: str, body: Mapping[str, Any], *,
                        expect_json: bool = True) -> Any:
        """POST ``body`` to ``path`` with bounded concurrency and retries; return the JSON.

        Raises:
            PolicyConnectionError, PolicyHTTPError: as for :meth:`generate`.
        """
        async with self._semaphore:
            return await self._post_with_retries(path, body, expect_json)

    async def _post_with_retries(self, path: str, body: Mapping[str, Any],
                                 expect_json: bool) -> Any:
        attempt = 0  # failed attempts that spent a retry
        reconnects = 0  # free re-sends after a supervised server came back (at most 2: a
        # request that kills the server every time must not restart it forever)
        reconnect_deadline = time.monotonic() + self.reconnect_timeout_s
        while True:
            self.requests_sent += 1
            try:
                response = await self._client.post(path, json=body)
            except _RETRYABLE as exc:
                last: PolicyError = PolicyConnectionError(
                    f"{type(exc).__name__} talking to {self.base_url}{path}: {exc}")
                gone = isinstance(exc, _SERVER_GONE)
            else:
                if response.status_code < 400:
                    return self._read_answer(path, response, expect_json)
                last = _http_error(f"{self.base_url}{path}", response)
                if response.status_code < 500:
                    raise last
                gone = True  # e.g. vLLM's "EngineCore encountered an issue" before it exits
            left = reconnect_deadline - time.monotonic()
            if gone and reconnects < 2 and left > 0 \
                    and await wait_until_serving(self.base_url, left):
                reconnects += 1
                logger.warning("%s; the supervised server is serving, sending it again", last)
                continue
            attempt += 1
            logger.warning("attempt %d/%d: %s", attempt, self.max_retries + 1, last)
            if attempt > self.max_retries:
                raise last
            delay = min(30.0, self.backoff_s * 2 ** (attempt - 1))
            await asyncio.sleep(delay * (0.5 + random.random() / 2))

    def _read_answer(self, path: str, response: httpx.Response, expect_json: bool) -> Any:
        if not expect_json:
            return response.text
        try:
            return response.json()
        except ValueError as exc:
            raise PolicyError(f"{self.base_url}{path} answered non-JSON: "
                              f"{response.text[:200]!r}") from exc

    # --- payloads --------------------------------------------------------------------------

    def _request_body(self, messages: Sequence[Mapping[str, Any]],
                      tools: Sequence[Mapping[str, Any]] | None, sampling: SamplingParams,
                      model: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": clean_messages(messages),
                                **_sampling_fields(sampling)}
        if tools:
            body["tools"] = list(tools)
            body["tool_choice"] = "none" if self.raw_tool_text else "auto"
        if self.vllm_extras:
            body["logprobs"] = True
            body["return_token_ids"] = True
        return body

    def _token_request_body(self, prompt_ids: Sequence[int], sampling: SamplingParams,
                            model: str) -> dict[str, Any]:
        """A vLLM ``/completions`` request on prompt token ids, with token-level answers."""
        return {"model": model, "prompt": list(prompt_ids), **_sampling_fields(sampling),
                "logprobs": 0, "return_token_ids": True}

    def _parse_token_response(self, data: Mapping[str, Any], prompt_ids: Sequence[int],
                              version: str | int | None) -> list[Completion]:
        completions = []
        for choice in sorted(data["choices"], key=lambda c: c.get("index", 0)):
            text = choice.get("text") or ""
            calls = parse_text_tool_calls(text).tool_calls
            logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or []
            completions.append(Completion(
                text=text, tool_calls=calls, finish_reason=_finish_reason(choice, calls),
                prompt_token_ids=tuple(prompt_ids),
                completion_token_ids=tuple(choice.get("token_ids") or ()),
                logprobs=tuple(float(lp) for lp in logprobs), weight_version=version))
        return completions

    def _parse_response(self, data: Mapping[str, Any],
                        version: str | int | None) -> list[Completion]:
        prompt_ids = tuple(data.get("prompt_token_ids") or ())
        completions = []
        for choice in sorted(data["choices"], key=lambda c: c.get("index", 0)):
            message = choice["message"]
            parsed = parse_assistant_message(message)
            text = message.get("content") or ""
            token_ids = tuple(choice.get("token_ids") or ())
            content = (choice.get("logprobs") or {}).get("content") or []
            logprobs = tuple(float(entry["logprob"]) for entry in content)
            if token_ids and logprobs and len(logprobs) != len(token_ids):
                logger.debug("logprobs (%d) and token ids (%d) differ in length",
                             len(logprobs), len(token_ids))
            completions.append(Completion(
                text=text, tool_calls=parsed.tool_calls,
                finish_reason=_finish_reason(choice, parsed.tool_calls),
                prompt_token_ids=prompt_ids, completion_token_ids=token_ids,
                logprobs=logprobs, weight_version=version))
        return completions
