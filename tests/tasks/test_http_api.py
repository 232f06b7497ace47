"""HttpAPI-v0: a real shop service on 127.0.0.1, its failure paths, and its end-state reward."""

import asyncio
import json
import math
import socket
import time
from collections import Counter

import httpx
import pytest

import agentgym
from agentgym.tasks.http_api.scenarios import split_scenarios


def request(method, path, body=None):
    arguments = {"method": method, "path": path}
    if body is not None:
        arguments["json"] = body
    return {"role": "assistant", "content": "", "tool_calls": [{
        "id": "c1", "type": "function",
        "function": {"name": "http_request", "arguments": json.dumps(arguments)}}]}


@pytest.fixture
def env():
    env = agentgym.make("agentgym/HttpAPI-v0", split="eval", num_tasks=60)
    yield env
    env.close()


def test_every_kind_of_task_occurs():
    kinds = Counter(s.kind for s in split_scenarios("train", 300, 1000))
    assert set(kinds) == {"order", "partial_stock", "skip_out_of_stock", "cancel",
                          "refund_latest", "restock"}


def test_oracle_reaches_the_goal_on_every_kind(env):
    seen = set()
    for index, task in enumerate(env.tasks):
        if task.metadata["kind"] in seen:
            continue
        seen.add(task.metadata["kind"])
        env.reset(options={"task_index": index})
        for method, path, body in task.metadata["reference"]:
            obs, reward, terminated, *_ = env.step(request(method, path, body))
            assert obs[-1]["content"].startswith("HTTP 20"), obs[-1]["content"]
        _, reward, terminated, truncated, info = env.step("Done.")
        assert (reward, terminated, truncated) == (1.0, True, False), task.metadata["kind"]
        assert info["reward_components"]["http_errors"] == 0.0
    assert len(seen) == 6


def test_doing_nothing_or_the_wrong_thing_earns_nothing(env):
    env.reset(options={"task_index": 0})
    assert env.step("I did it.")[1] == 0.0
    env.reset(options={"task_index": 0})
    env.step(request("PATCH", "/api/products/999", {"stock": 1}))
    assert env.step("Done.")[1] == 0.0


def test_failure_paths_reach_the_model(env):
    index = next(i for i, t in enumerate(env.tasks) if t.metadata["kind"] == "partial_stock")
    env.reset(options={"task_index": index})
    task = env.task
    [(_, _, body)] = task.metadata["reference"]
    product_id = body["items"][0]["product_id"]
    too_many = {"customer": body["customer"],
                "items": [{"product_id": product_id, "quantity": 1000}]}
    for action, expected in [
        (request("POST", "/api/orders", too_many), "HTTP 409"),
        (request("GET", "/api/orders/1"), "HTTP 404"),
        (request("PATCH", f"/api/products/{product_id}", {"price_cents": 9.99}), "HTTP 422"),
        (request("DELETE", "/api/orders"), "HTTP 405"),
        (request("GET", "/_admin/state"), "Error: path must be a route"),
        (request("GET", "http://example.com/api/products"), "Error: path must be a route"),
        (request("GET", "/api/../_admin/state"), "Error: path must be a route"),
    ]:
        obs, *_ = env.step(action)
        assert obs[-1]["content"].startswith(expected), (action, obs[-1]["content"])
    env.reset(options={"task_index": index})
    for action in [request("POST", "/api/orders", too_many), request(*body_to_request(body))]:
        env.step(action)
    _, reward, *_ = env.step("Ordered what was left.")
    assert reward == 1.0  # a 409 on the way does not spoil a correct end state


def body_to_request(body):
    return "POST", "/api/orders", body


def test_a_mistake_can_be_undone(env):
    index = next(i for i, t in enumerate(env.tasks) if t.metadata["kind"] == "restock")
    env.reset(options={"task_index": index})
    product = env.task.metadata["initial_state"]["products"][0]
    obs, *_ = env.step(request("POST", "/api/orders", {
        "customer": "oops", "items": [{"product_id": product["id"], "quantity": 1}]}))
    order_id = json.loads(obs[-1]["content"].split("\n", 1)[1])["id"]
    env.step(request("POST", f"/api/orders/{order_id}/cancel"))
    for method, path, body in env.task.metadata["reference"]:
        env.step(request(method, path, body))
    assert env.step("Done.")[1] == 1.0


def test_malformed_calls_never_crash(env):
    env.reset(seed=0)
    for action in ["<tool_call>{nope", request("FETCH", "/api/products"),
                   '<tool_call>{"name": "http_request", "arguments": {"path": 3}}</tool_call>']:
        obs, reward, terminated, truncated, _ = env.step(action)
        assert obs[-1]["role"] == "tool" and obs[-1]["content"].startswith("Error:")
        assert not terminated and not truncated


def test_service_is_real_and_stops_on_close():
    env = agentgym.make("agentgym/HttpAPI-v0", num_tasks=5)
    env.reset(seed=0)
    base_url = env._server.base_url
    products = httpx.get(f"{base_url}/api/products").json()
    assert len(products) == 6 and {"id", "name", "price_cents", "stock"} <= set(products[0])
    assert httpx.get(f"{base_url}/_admin/state").status_code == 403
    env.close()
    port = int(base_url.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


async def test_reading_the_end_state_never_blocks_the_event_loop(monkeypatch):
    env = agentgym.make("agentgym/HttpAPI-v0", num_tasks=5)
    await env.areset(seed=0)
    store = env._server.store
    outcome = store.outcome

    def slow_outcome():  # runs in the server's thread: the service takes 0.6 s to answer
        time.sleep(0.6)
        return outcome()

    monkeypatch.setattr(store, "outcome", slow_outcome)
    gaps: list[float] = []
    reading = asyncio.ensure_future(env.final_state())
    last = time.monotonic()
    while not reading.done():  # a heartbeat on the same loop, every 10 ms
        await asyncio.sleep(0.01)
        gaps.append(time.monotonic() - last)
        last = time.monotonic()
    assert await reading == outcome()
    assert len(gaps) >= 10 and max(gaps) < 0.3, (len(gaps), max(gaps))
    await env.aclose()


async def test_an_unreachable_service_is_a_reward_error_not_a_crash():
    env = agentgym.make("agentgym/HttpAPI-v0", num_tasks=5)
    await env.areset(seed=0)
    env._server.close()  # the service dies before the episode ends
    _, reward, terminated, _, info = await env.astep("Done.")
    assert terminated and math.isnan(reward)
    assert (info["error"].type, info["error"].blame) == ("RewardError", "infra")
    assert "could not read the shop's end state" in info["error"].message
    await env.aclose()
