"""Shared helpers of the eval tests: a scripted "model" behind a real OpenAI-compatible server.

:class:`Oracle` answers chat requests for several environments at once. It finds the task by the
opening messages of the chat and plays it by a fixed rule, so every reward is known in advance:

* model ``"oracle"``: the task at position ``i`` of the selected tasks is solved by every sample
  when ``i % 3 == 0``, by sample 0 only when ``i % 3 == 1`` (the sample index is read from the
  request's seed: the rollout engine sends ``seed + sample_index``), and never when ``i % 3 == 2``;
* model ``"weak"``: never solves anything.

"Solving" uses the task's own reference (ground-truth tool calls, reference API requests, the
answer), through real tool calls where the env has tools; failing uses an invalid tool call
(Calculator) or a wrong answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import agentgym
from agentgym.testing.stub_server import StubServer
from agentgym.types import Task

Reply = str | dict[str, Any]


def calls_message(calls: Sequence[tuple[str, Mapping[str, Any]]], prefix: str = "c") -> dict:
    """An assistant message with native OpenAI tool calls."""
    return {"role": "assistant", "content": "", "tool_calls": [
        {"id": f"{prefix}{i}", "type": "function",
         "function": {"name": name, "arguments": json.dumps(dict(args))}}
        for i, (name, args) in enumerate(calls)]}


def _tool_messages(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(m["role"] == "tool" for m in messages)


# --- per-env solvers: (task, chat so far, solve?) -> reply --------------------------------------

def solve_calculator(task: Task, messages: Sequence[Mapping[str, Any]], good: bool) -> Reply:
    if not _tool_messages(messages):
        if good:
            return calls_message([("calculate", {"expression": task.metadata["expression"]})])
        return calls_message([("calc", {"expression": "1 + 1"})])  # unknown tool: invalid call
    return f"<answer>{task.metadata['answer_exact'] if good else -1}</answer>"


def solve_math(task: Task, messages: Sequence[Mapping[str, Any]], good: bool) -> Reply:
    return f"<answer>{task.answer if good else -987654321}</answer>"


def solve_http_api(task: Task, messages: Sequence[Mapping[str, Any]], good: bool) -> Reply:
    if not good:
        return "Sorry, I cannot do that."
    step, reference = _tool_messages(messages), task.metadata["reference"]
    if step >= len(reference):
        return "Done."
    method, path, body = reference[step]
    args = {"method": method, "path": path, **({"json": body} if body is not None else {})}
    return calls_message([("http_request", args)], prefix=f"s{step}")


def solve_search(task: Task, messages: Sequence[Mapping[str, Any]], good: bool) -> Reply:
    if not good:
        return "<answer>Atlantis</answer>"
    if not _tool_messages(messages):
        return calls_message([("search", {"query": task.metadata["queries"][0], "k": 3})])
    return f"<answer>{task.answer[0]}</answer>"


def solve_bfcl_single(task: Task, messages: Sequence[Mapping[str, Any]], good: bool) -> Reply:
    from agentgym.tasks.bfcl.single_turn import reference_calls

    return calls_message(reference_calls(task)) if good else "I would rather not."


_PLANS: dict[str, list[list[tuple[str, dict[str, Any]]]]] = {}


def solve_bfcl_multi(task: Task, messages: Sequence[Mapping[str, Any]], good: bool) -> Reply:
    if not good or messages[-1]["role"] == "tool":
        return "Done."
    if task.id not in _PLANS:
        from agentgym.tasks.bfcl import backend

        classes = task.metadata["involved_classes"]
        instances = backend.make_instances(classes, task.metadata["initial_config"])
        owners = backend.method_owners(classes)
        _PLANS[task.id] = [[backend.bind_call(instances, owners, call) for call in turn]
                           for turn in task.answer]
    opening_users = sum(m["role"] == "user" for m in task.prompt)
    turn = sum(m["role"] == "user" for m in messages) - opening_users
    plan = _PLANS[task.id]
    if turn >= len(plan) or not plan[turn]:
        return "Done."
    return calls_message(plan[turn], prefix=f"t{turn}c")


def solve_code(task: Task, messages: Sequence[Mapping[str, Any]], good: bool) -> Reply:
    if not good:
        return "```python\ndef nothing():\n    pass\n```"
    return f"```python\n{task.metadata['prompt']}{task.answer}\n```"


SOLVERS: dict[str, Callable[[Task, Sequence[Mapping[str, Any]], bool], Reply]] = {
    "agentgym/CodeHumanEval-v0": solve_code,
    "agentgym/Calculator-v0": solve_calculator,
    "agentgym/Math-v0": solve_math,
    "agentgym/HttpAPI-v0": solve_http_api,
    "agentgym/Search-v0": solve_search,
    "agentgym/BFCLSingle-v0": solve_bfcl_single,
    "agentgym/BFCLMultiTurn-v0": solve_bfcl_multi,
}
"""Environments the oracle can play; the e2e tests run every one of them."""


def expected_pass(position: int, sample: int, model: str = "oracle") -> bool:
    """Whether the oracle solves the task at ``position`` in sample ``sample``."""
    if model != "oracle":
        return False
    return position % 3 == 0 or (position % 3 == 1 and sample == 0)


def _key(messages: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    system = next((m.get("content") or "" for m in messages if m["role"] == "system"), "")
    user = next((m.get("content") or "" for m in messages if m["role"] == "user"), "")
    return system, user


class Oracle:
    """The responder of a :class:`StubServer` (see the module docstring).

    Args:
        num_examples: how many tasks of each env's eval split the runs select (first N).
    """

    def __init__(self, env_ids: Sequence[str], num_examples: int):
        self.tasks: dict[tuple[str, str], tuple[str, int, Task]] = {}
        for env_id in env_ids:
            env = agentgym.make(env_id, split="eval")
            try:
                for position, task in enumerate(env.tasks[:num_examples]):
                    self.tasks[_key(task.prompt)] = (env_id, position, task)
            finally:
                env.close()
        self.failing: Callable[[str, int], bool] = lambda env_id, position: False

    def __call__(self, request: Mapping[str, Any]) -> Reply:
        messages = request["messages"]
        env_id, position, task = self.tasks[_key(messages)]
        sample = int(request.get("seed") or 0)
        good = expected_pass(position, sample, request.get("model", "oracle"))
        return SOLVERS[env_id](task, messages, good)

    def lookup(self, messages: Sequence[Mapping[str, Any]]) -> tuple[str, int, Task]:
        """(env id, position, task) of a chat."""
        return self.tasks[_key(messages)]


class FlakyServer(StubServer):
    """A StubServer that answers HTTP 500 to every chat request of the chosen tasks."""

    def __init__(self, oracle: Oracle, fail: Callable[[str, int], bool]):
        super().__init__(oracle)
        self.oracle, self.fail = oracle, fail

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if method == "POST" and path == "/v1/chat/completions":
            env_id, position, _ = self.oracle.lookup(json.loads(body)["messages"])
            if self.fail(env_id, position):
                return 500, b'{"error": {"message": "scripted failure"}}'
        return super().handle(method, path, body)


class StatusServer(StubServer):
    """A StubServer that answers a fixed status to /v1/models and/or chat requests."""

    def __init__(self, models_status: int = 200, chat_status: int = 200):
        super().__init__(lambda request: "hello")
        self.models_status, self.chat_status = models_status, chat_status

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        status = self.models_status if path == "/v1/models" else self.chat_status
        if status != 200:
            return status, json.dumps({"error": {"message": f"scripted {status}"}}).encode()
        return super().handle(method, path, body)


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """results.jsonl, straight from the file."""
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def only_run_dir(root: Path) -> Path:
    """The single run folder under an eval output root."""
    (metadata,) = root.rglob("metadata.json")
    return metadata.parent


def wait_until_quiet(server: StubServer, quiet_s: float = 1.0, timeout_s: float = 60.0) -> None:
    """Until the server's request count has not moved for ``quiet_s`` (requests a cancelled
    client had already sent may still be arriving on a busy machine)."""
    deadline = time.monotonic() + timeout_s
    last, since = server.requests, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if server.requests != last:
            last, since = server.requests, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
    raise AssertionError(f"the stub server kept receiving requests for {timeout_s} s")
