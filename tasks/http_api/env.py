"""agentgym/HttpAPI-v0: drive a live, stateful shop API over HTTP to reach a goal state.

The env starts a real HTTP service on 127.0.0.1 (random port) on first reset and stops it on
close; every episode resets the shop to the task's starting state. The agent's one tool,
``http_request``, reaches only that service's ``/api/`` routes. When the agent replies without a
tool call the episode ends, and the env reads the end state back from the service (with the same
async client, so it never blocks the event loop other episodes run on). See
README.md for the reward spec and version log.
"""

from __future__ import annotations

import json as jsonlib
from typing import Any, Literal

import httpx

from agentgym.env import AgentEnv
from agentgym.errors import RewardError
from agentgym.rewards import Reward, Rubric, final_state_match
from agentgym.tasks.http_api.generalisation import composition_scenarios, paraphrase_scenarios
from agentgym.tasks.http_api.scenarios import split_scenarios
from agentgym.tasks.http_api.server import ShopServer, dispatch, routes_for
from agentgym.tasks.http_api.store import Store
from agentgym.tools import tool
from agentgym.types import Split, Task, Trajectory, as_messages

SYSTEM_PROMPT = (
    "You operate a shop through its JSON HTTP API, using the http_request tool. Routes: "
    "GET /api/products, GET|PATCH /api/products/{id} (body: price_cents and/or stock, "
    "integers), GET /api/orders?customer=NAME, GET /api/orders/{id}, POST /api/orders "
    '(body: {"customer": NAME, "items": [{"product_id": ID, "quantity": N}]}), '
    "POST /api/orders/{id}/cancel, POST /api/orders/{id}/refund. Prices are integer cents. "
    "Look ids up; never guess them. When the task is done, reply with a short summary and no "
    "tool call."
)
SPLIT_SIZES: dict[str, int] = {"train": 1000, "eval": 200, "eval_paraphrase": 200,
                               "eval_composition": 200}
_HELD_OUT = {"eval_paraphrase": paraphrase_scenarios, "eval_composition": composition_scenarios}
MAX_BODY_CHARS = 4000


def http_errors(trajectory: Trajectory, task: Task) -> float:
    """How many API calls answered 4xx/5xx (a logged metric)."""
    return float(sum(r.content.startswith(("HTTP 4", "HTTP 5"))
                     for turn in trajectory.turns for r in turn.tool_results))


def api_calls(trajectory: Trajectory, task: Task) -> float:
    """How many API calls the agent made (a logged metric)."""
    return float(sum(len(turn.tool_calls) for turn in trajectory.turns))


class HttpAPIEnv(AgentEnv):
    """A shop API to operate; reward 1 when its end state matches the task's goal state.

    Args:
        num_tasks: cap on tasks per split.
        **kwargs: :class:`~agentgym.env.AgentEnv` budgets (default ``max_turns=12``,
            ``tool_timeout_s=10``).
    """

    family = "api"
    reward_kind = "verifiable"
    extra_splits = ("eval_paraphrase", "eval_composition")

    def __init__(self, *, num_tasks: int | None = None, max_turns: int = 12,
                 tool_timeout_s: float = 10.0, **kwargs: Any):
        self.num_tasks = num_tasks
        self._server: Any = None
        self._client: Any = None
        super().__init__(max_turns=max_turns, tool_timeout_s=tool_timeout_s, **kwargs)

    @classmethod
    def split_sizes(cls) -> dict[str, int]:
        return dict(SPLIT_SIZES)

    def load_tasks(self, split: Split) -> list[Task]:
        count = min(SPLIT_SIZES[split], self.num_tasks or SPLIT_SIZES[split])
        tasks = []
        draw = _HELD_OUT.get(split)
        scenarios = (draw(count, SPLIT_SIZES["train"]) if draw is not None
                     else split_scenarios(split, count, SPLIT_SIZES["train"]))
        for i, scenario in enumerate(scenarios):
            tasks.append(Task(
                id=f"shop-{split}-{i}", split=split,
                answer={"final_state": scenario.expected_outcome()},
                prompt=({"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": scenario.instruction}),
                metadata={"kind": scenario.kind, "initial_state": scenario.initial_state,
                          "reference": [list(r) for r in scenario.reference]}))
        return tasks

    @property
    def rubric(self) -> Rubric:
        return Rubric([Reward("goal_state", final_state_match, 1.0),
                       Reward("api_calls", api_calls, 0.0),
                       Reward("http_errors", http_errors, 0.0)])

    async def setup_episode(self, task: Task) -> None:
        if self._server is None:
            self._server = ShopServer()
            self._client = httpx.AsyncClient(base_url=self._server.base_url, timeout=5.0)
        self._server.store.reset(task.metadata["initial_state"])

    async def final_state(self) -> Any:
        """The judged shop state, read back from the live service.

        Raises:
            RewardError: the service did not answer, or answered with an error status.
        """
        try:
            response = await self._client.get(
                "/_admin/state", headers={"X-Admin-Token": self._server.admin_token})
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:  # ValueError: a body that is not JSON
            raise RewardError(f"could not read the shop's end state: "
                              f"{type(exc).__name__}: {exc}") from exc

    def demonstrate(self, task: Task) -> list[dict[str, Any]]:
        """The prompt, a product lookup, then the reference requests one turn each, and a
        short summary; the tool messages are the service's answers, computed on a copy of
        the starting state through the server's own routes (no I/O)."""
        store = Store(task.metadata["initial_state"])
        routes = routes_for(store)
        chat = list(as_messages(task.prompt))
        for method, path, body in [("GET", "/api/products", None),
                                   *(tuple(r) for r in task.metadata["reference"])]:
            arguments = {"method": method, "path": path, **({"json": body} if body else {})}
            call = jsonlib.dumps({"name": "http_request", "arguments": arguments})
            status, payload = dispatch(routes, method, path, body)
            result = jsonlib.dumps(payload, separators=(",", ":"))[:MAX_BODY_CHARS]
            chat += [{"role": "assistant", "content": f"<tool_call>\n{call}\n</tool_call>"},
                     {"role": "tool", "name": "http_request",
                      "content": f"HTTP {status}\n{result}"}]
        chat.append({"role": "assistant", "content": "Done: the requested changes are made."})
        return chat

    @tool
    async def http_request(self, method: Literal["GET", "POST", "PATCH", "DELETE"], path: str,
                           json: dict | None = None) -> str:
        """Send one request to the shop API and return the status line and JSON body.

        Args:
            method: the HTTP method.
            path: the route, starting with /api/, e.g. "/api/orders?customer=alice".
            json: the JSON request body, for POST and PATCH.
        """
        if not path.startswith("/api/") or ".." in path or "://" in path:
            return "Error: path must be a route of this shop starting with /api/"
        response = await self._client.request(method, path, json=json)
        try:
            body = jsonlib.dumps(response.json(), separators=(",", ":"))[:MAX_BODY_CHARS]
        except ValueError:
            body = response.text[:MAX_BODY_CHARS]
        return f"HTTP {response.status_code}\n{body}"

    def close(self) -> None:
        super().close()
        self._stop_server()

    async def aclose(self) -> None:
        await super().aclose()
        if self._client is not None:
            await self._client.aclose()
        self._stop_server()

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            self._client = None
