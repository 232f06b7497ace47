"""OpenAIPolicy against a real HTTP server on 127.0.0.1 (stdlib, OpenAI-shaped answers)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from _policy_helpers import TOOLS

from agentgym.errors import (
    ContextWindowError,
    PolicyConnectionError,
    PolicyError,
    PolicyHTTPError,
    SyncTimeoutError,
)
from agentgym.policies.openai_client import OpenAIPolicy
from agentgym.policies.vllm_server import free_port, state_file, wait_until_serving
from agentgym.policies.weight_sync import FullWeightSync, LoRASync
from agentgym.policy import SamplingParams
from agentgym.rollout import RolloutConfig, RolloutEngine
from agentgym.testing import ToyEnv

CHAT = [{"role": "user", "content": "Add 2 and 3."}]


class FakeOpenAI:
    """State of the test server: what it received and how it should misbehave."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.fail_first = 0  # answer this many requests with 500 first
        self.in_flight = 0
        self.max_in_flight = 0

    def completion(self, body: dict[str, Any], mode: str) -> dict[str, Any]:
        choices = []
        for i in range(body.get("n", 1)):
            message: dict[str, Any] = {"role": "assistant", "content": f"answer {i}"}
            if mode == "native":
                message = {"role": "assistant", "content": None, "tool_calls": [{
                    "id": f"call_{i}", "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]}
            elif mode == "hermes":
                message["content"] = ('<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}'
                                      '</tool_call>')
            choice: dict[str, Any] = {"index": i, "message": message,
                                      "finish_reason": "tool_calls" if mode == "native" else "stop"}
            if body.get("return_token_ids"):
                choice["token_ids"] = [10 + i, 11, 2]
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [{"token": "t", "logprob": -0.5}] * 3}
            choices.append(choice)
        answer: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion",
                                  "model": body["model"], "choices": choices}
        if body.get("return_token_ids"):
            answer["prompt_token_ids"] = [1, 2, 3]
        return answer


def make_handler(state: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def reply(self, status: int, payload: Any) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            mode = self.path.split("/")[1]
            with state.lock:
                state.bodies.append(body)
                state.paths.append(self.path)
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
                fail = state.fail_first > 0
                state.fail_first -= 1
            try:
                if mode == "slow" or mode == "hang":
                    time.sleep(10.0 if mode == "slow" else 30.0)
                elif mode == "busy":
                    time.sleep(0.01)
                if self.path.endswith("_lora_adapter"):
                    self.reply(200, b"Success: LoRA adapter loaded or unloaded")
                elif self.path.endswith(("/collective_rpc", "/reset_prefix_cache")):
                    self.reply(200, {"results": [None]})
                elif mode == "auth" and self.headers.get("Authorization") != "Bearer sk-good":
                    self.reply(401, {"error": {"message": "bad key"}})
                elif mode == "flaky" and fail:
                    self.reply(500, {"error": {"message": "try again"}})
                elif mode == "bad":
                    self.reply(200, b"<html>not json</html>")
                elif mode == "badrequest":
                    self.reply(400, {"error": {"message": "unknown field"}})
                elif mode == "toolong":  # vLLM 0.32's words for a prompt over the window
                    self.reply(400, {"error": {"message": (
                        "This model's maximum context length is 4096 tokens. However, your "
                        "prompt contains 4097 input tokens, which exceeds this limit even "
                        "without any output tokens."), "type": "BadRequestError", "code": 400}})
                else:
                    self.reply(200, state.completion(body, mode))
            finally:
                with state.lock:
                    state.in_flight -= 1

        def do_GET(self) -> None:
            self.reply(200, {"status": "ok"} if self.path == "/health" else {"data": []})

    return Handler


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the default backlog (5) drops connections under bursts
    daemon_threads = True


@pytest.fixture
def server() -> Iterator[tuple[str, FakeOpenAI]]:
    state = FakeOpenAI()
    httpd = _Server(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    httpd.shutdown()
    httpd.server_close()


def policy(url: str, mode: str, **kwargs: Any) -> OpenAIPolicy:
    kwargs.setdefault("backoff_s", 0.01)
    return OpenAIPolicy(f"{url}/{mode}/v1", "smollm2", **kwargs)


async def test_text_reply_with_token_ids_and_logprobs(server: tuple[str, FakeOpenAI]) -> None:
    url, state = server
    client = policy(url, "text", weight_version=3)
    completions = await client.generate(
        [*CHAT, {"role": "assistant", "content": "x", "prompt_token_ids": [1],
                 "weight_version": 2}], TOOLS,
        SamplingParams(n=2, temperature=0.5, top_p=0.9, max_tokens=7, stop=("END",), seed=4))
    await client.aclose()
    assert [c.text for c in completions] == ["answer 0", "answer 1"]
    assert completions[1].completion_token_ids == (11, 11, 2)
    assert completions[0].prompt_token_ids == (1, 2, 3)
    assert completions[0].logprobs == (-0.5, -0.5, -0.5)
    assert completions[0].weight_version == 3
    body = state.bodies[0]
    assert body["messages"][1] == {"role": "assistant", "content": "x"}  # token fields dropped
    assert {k: body[k] for k in ("n", "temperature", "top_p", "max_tokens", "stop", "seed",
                                 "logprobs", "return_token_ids", "tool_choice")} == {
        "n": 2, "temperature": 0.5, "top_p": 0.9, "max_tokens": 7, "stop": ["END"], "seed": 4,
        "logprobs": True, "return_token_ids": True, "tool_choice": "none"}  # raw tool text
    assert body["tools"] == TOOLS


async def test_native_and_hermes_tool_calls_are_parsed(server: tuple[str, FakeOpenAI]) -> None:
    url, _ = server
    for mode in ("native", "hermes"):
        client = policy(url, mode, raw_tool_text=False)
        [c] = await client.generate(CHAT, TOOLS, SamplingParams())
        await client.aclose()
        assert [(t.name, dict(t.arguments)) for t in c.tool_calls] == [("add", {"a": 2, "b": 3})]


async def test_hosted_endpoint_mode_sends_no_vllm_fields(server: tuple[str, FakeOpenAI]) -> None:
    url, state = server
    client = policy(url, "text", vllm_extras=False)
    [c] = await client.generate(CHAT, None, SamplingParams())
    await client.aclose()
    assert "return_token_ids" not in state.bodies[0] and "tools" not in state.bodies[0]
    hosted = policy(url, "native", vllm_extras=False)
    [call] = await hosted.generate(CHAT, TOOLS, SamplingParams())
    await hosted.aclose()
    assert state.bodies[1]["tool_choice"] == "auto" and call.tool_calls[0].name == "add"
    assert c.text == "answer 0" and c.completion_token_ids == () and c.logprobs == ()


async def test_5xx_is_retried_with_backoff_then_succeeds(server: tuple[str, FakeOpenAI]) -> None:
    url, state = server
    state.fail_first = 2
    client = policy(url, "flaky", max_retries=3)
    [c] = await client.generate(CHAT, None, SamplingParams())
    await client.aclose()
    assert c.text == "answer 0" and client.requests_sent == 3


async def test_5xx_gives_up_after_the_retries(server: tuple[str, FakeOpenAI]) -> None:
    url, state = server
    state.fail_first = 10
    client = policy(url, "flaky", max_retries=2)
    with pytest.raises(PolicyHTTPError) as info:
        await client.generate(CHAT, None, SamplingParams())
    await client.aclose()
    assert info.value.status_code == 500 and client.requests_sent == 3


async def test_4xx_is_not_retried(server: tuple[str, FakeOpenAI]) -> None:
    url, _ = server
    for mode, status in (("auth", 401), ("badrequest", 400)):
        client = policy(url, mode, api_key="sk-wrong")
        with pytest.raises(PolicyHTTPError) as info:
            await client.generate(CHAT, None, SamplingParams())
        await client.aclose()
        assert info.value.status_code == status and client.requests_sent == 1
    good = policy(url, "auth", api_key="sk-good")
    assert (await good.generate(CHAT, None, SamplingParams()))[0].text == "answer 0"
    await good.aclose()


async def test_timeouts_and_refused_connections_are_connection_errors(
        server: tuple[str, FakeOpenAI]) -> None:
    url, state = server
    slow = policy(url, "slow", timeout=0.3, max_retries=1)
    started = time.monotonic()
    with pytest.raises(PolicyConnectionError, match="ReadTimeout"):
        await slow.generate(CHAT, None, SamplingParams())
    await slow.aclose()
    # two 0.3 s timeouts, not the server's 10 s answer (headroom for a busy machine)
    assert time.monotonic() - started < 9.5 and slow.requests_sent == 2
    refused = OpenAIPolicy(f"http://127.0.0.1:{free_port()}/v1", "m", max_retries=2,
                           backoff_s=0.01)
    with pytest.raises(PolicyConnectionError, match="ConnectError"):
        await refused.generate(CHAT, None, SamplingParams())
    await refused.aclose()
    assert refused.requests_sent == 3


async def test_a_prompt_over_the_window_is_a_context_window_error(
        server: tuple[str, FakeOpenAI]) -> None:
    url, _ = server
    client = policy(url, "toolong")
    with pytest.raises(ContextWindowError) as info:
        await client.generate(CHAT, None, SamplingParams())
    await client.aclose()
    assert info.value.max_model_len == 4096 and info.value.status_code == 400
    assert info.value.blame == "model" and client.requests_sent == 1


async def test_a_restarting_supervised_server_is_waited_for(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """While the state file says a live supervisor is (re)starting the server, a request that
    finds nobody listening waits for it instead of spending its retries."""
    monkeypatch.setenv("AGENTGYM_CACHE", str(tmp_path))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    path = state_file(base_url)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"state": "starting", "supervisor_pid": os.getpid()}))
    client = OpenAIPolicy(base_url, "m", max_retries=0, reconnect_timeout_s=30)
    request = asyncio.ensure_future(client.generate(CHAT, None, SamplingParams()))
    await asyncio.sleep(1.5)  # the request failed to connect and is waiting
    assert not request.done()
    httpd = _Server(("127.0.0.1", port), make_handler(FakeOpenAI()))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    path.write_text(json.dumps({"state": "ready", "supervisor_pid": os.getpid()}))
    try:
        [completion] = await asyncio.wait_for(request, 20)
        assert completion.text == "answer 0" and client.requests_sent == 2
        path.unlink()  # nobody supervises it now: a dead endpoint fails at once
        httpd.shutdown()
        httpd.server_close()
        fresh = OpenAIPolicy(base_url, "m", max_retries=0)  # no kept-alive connection
        started = time.monotonic()
        with pytest.raises(PolicyConnectionError):
            await fresh.generate(CHAT, None, SamplingParams())
        await fresh.aclose()
        assert time.monotonic() - started < 5
        assert not await wait_until_serving(base_url, 10)
    finally:
        await client.aclose()


async def test_a_restart_wait_is_left_out_of_the_rollout_turn_deadline(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """A turn that waits 3 s for a restarting server finishes under a 2 s turn deadline."""
    monkeypatch.setenv("AGENTGYM_CACHE", str(tmp_path))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    path = state_file(base_url)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"state": "starting", "supervisor_pid": os.getpid()}))
    client = OpenAIPolicy(base_url, "m", max_retries=0, vllm_extras=False)
    engine = RolloutEngine(lambda: ToyEnv(split="eval"), client,
                           RolloutConfig(turn_timeout_s=2.0, episode_timeout_s=60))
    episode = asyncio.ensure_future(engine.run_episode({"task_index": 0}))
    await asyncio.sleep(3.0)
    httpd = _Server(("127.0.0.1", port), make_handler(FakeOpenAI()))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    path.write_text(json.dumps({"state": "ready", "supervisor_pid": os.getpid()}))
    try:
        trajectory = await asyncio.wait_for(episode, 30)
    finally:
        await engine.aclose()
        await client.aclose()
        httpd.shutdown()
        httpd.server_close()
    assert trajectory.error is None, trajectory.error
    assert trajectory.terminated and trajectory.turns[0].assistant["content"] == "answer 0"


async def test_non_json_answer_is_a_policy_error(server: tuple[str, FakeOpenAI]) -> None:
    url, _ = server
    client = policy(url, "bad")
    with pytest.raises(PolicyError, match="non-JSON"):
        await client.generate(CHAT, None, SamplingParams())
    await client.aclose()


async def test_concurrency_is_bounded_with_thousands_in_flight(
        server: tuple[str, FakeOpenAI]) -> None:
    url, state = server
    client = policy(url, "busy", max_concurrency=16)
    started = time.monotonic()
    results = await asyncio.gather(*(client.generate(CHAT, None, SamplingParams())
                                     for _ in range(2000)))
    elapsed = time.monotonic() - started
    await client.aclose()
    assert len(results) == 2000
    assert state.max_in_flight <= 16  # never more than the bound reached the server
    assert elapsed < 60


async def test_set_model_routes_new_requests(server: tuple[str, FakeOpenAI]) -> None:
    url, state = server
    client = policy(url, "text")
    client.set_model("policy-v7", 7)
    [c] = await client.generate(CHAT, None, SamplingParams())
    await client.aclose()
    assert state.bodies[-1]["model"] == "policy-v7" and c.weight_version == 7


async def test_lora_sync_posts_versioned_adapters(server: tuple[str, FakeOpenAI],
                                                  tmp_path: Any) -> None:
    url, state = server
    client = policy(url, "text")
    sync = LoRASync(f"{url}/text", client, tmp_path)
    for version in (1, 2):
        adapter = tmp_path / f"saved-{version}"
        adapter.mkdir()
        assert await sync.push(adapter) == version
    await client.aclose()
    assert client.model == "policy-v2" and client.weight_version == 2
    assert state.paths == ["/text/v1/load_lora_adapter", "/text/v1/load_lora_adapter",
                           "/text/v1/unload_lora_adapter"]
    assert state.bodies[1] == {"lora_name": "policy-v2", "lora_path": str(tmp_path / "saved-2")}
    assert state.bodies[2] == {"lora_name": "policy-v1"}


async def test_full_sync_reloads_checkpoints_and_again_after_a_restart(
        server: tuple[str, FakeOpenAI], tmp_path: Any) -> None:
    url, state = server

    class FakeServer:  # what FullWeightSync uses of a VLLMServer
        config = type("Config", (), {"model": tmp_path / "base"})()
        on_restart: list[Any] = []

    fake = FakeServer()
    client = policy(url, "text")
    sync = FullWeightSync(f"{url}/text", client, tmp_path, server=fake)
    assert await sync.push(tmp_path / "ckpt-1") == 1
    assert client.weight_version == 1 and client.model == "smollm2"
    await fake.on_restart[0](fake)  # what VLLMServer.restart does
    await client.aclose()
    assert state.paths == ["/text/collective_rpc", "/text/reset_prefix_cache"] * 2
    assert state.bodies[0] == state.bodies[2] == {
        "method": "reload_weights", "kwargs": {"weights_path": str(tmp_path / "ckpt-1")}}


async def test_a_hung_sync_raises_sync_timeout(tmp_path: Any) -> None:
    """A server that accepts the connection and never answers: the deadline fires."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = OpenAIPolicy(f"http://127.0.0.1:{port}/v1", "m")
    try:
        for sync in (LoRASync(f"http://127.0.0.1:{port}", client, tmp_path, timeout_s=0.5),
                     FullWeightSync(f"http://127.0.0.1:{port}", client, tmp_path, timeout_s=0.5)):
            started = time.monotonic()
            with pytest.raises(SyncTimeoutError, match="deadline"):
                await sync.push(tmp_path)
            assert time.monotonic() - started < 15  # the 0.5 s deadline, not a hang
            assert sync.version == 0 and client.model == "m"  # nothing half-switched
    finally:
        await client.aclose()
        listener.close()
