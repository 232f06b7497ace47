"""Conformance checks every registered environment must pass (``agentgym check ENV_ID``).

Gymnasium's own ``check_env`` plus agentgym's contract: seeded task sampling is reproducible,
tool schemas are valid JSON Schema, ``step`` before ``reset`` is refused, episodes end within
their turn budget even against a policy that never stops calling tools, and the train and eval
splits do not overlap.

Every registered env also faces the *adversarial policies* (:func:`adversarial_scores`):
scripted policies that try the known ways to win without solving the task, and must all score
0. Each is a :class:`~agentgym.testing.FakePolicy` responder driven through ``generate`` ->
``step``, as the rollout engine does:

* ``empty``: an empty final reply;
* ``question echo``: the user's question, verbatim, as the answer;
* ``answer spray``: many candidate answers (other tasks' answers, numbers, yes/no) with the
  task's own answer hidden among them, as plain lines, ``<answer>`` tags and ``\\boxed{}``;
* ``tool-output echo``: call every tool once (string parameters get the question), then answer
  with everything the tools said;
* ``malformed calls``: a first reply of ``<tool_call>`` text that a lenient parser would accept
  (unterminated JSON, Python-literal quotes, the call in a code fence) carrying the task's
  answer, then empty replies;
* ``early submit``: call every tool whose name says submit/answer/finish/final at once, with the
  task's answer as every string argument (no env should end an episode well that way);
* the env's own, from an optional ``adversarial_replies(task) -> {name: responder}`` method.
"""

from __future__ import annotations

import asyncio
import json
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
from gymnasium.utils.env_checker import check_env as gymnasium_check_env

from agentgym.env import AgentEnv
from agentgym.errors import ResetNeededError
from agentgym.policy import SamplingParams
from agentgym.registry import make
from agentgym.testing import FakePolicy

__all__ = ["ADVERSARIAL_TASKS", "CheckResult", "adversarial_scores", "check", "constant_reply"]

ADVERSARIAL_TASKS = 3
"""Tasks (seeds 0, 1, 2) each adversarial policy plays in the conformance check."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one conformance check."""

    name: str
    ok: bool
    detail: str = ""


def _gymnasium(env: AgentEnv) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gymnasium_check_env(env, skip_render_check=True, skip_close_check=True)
    relevant = [str(w.message) for w in caught if "spec" not in str(w.message)]
    return f"{len(relevant)} warning(s): {relevant[:2]}" if relevant else "passed"


def _seeding(env: AgentEnv) -> str:
    first = [env.reset(seed=seed)[1]["task_id"] for seed in range(8)]
    again = [env.reset(seed=seed)[1]["task_id"] for seed in range(8)]
    if first != again:
        raise AssertionError(f"same seeds gave different tasks: {first} vs {again}")
    if len(env.tasks) > 1 and len(set(first)) == 1:
        raise AssertionError("8 different seeds all drew the same task")
    return f"{len(set(first))} distinct tasks over 8 seeds, reproducible"


def _tool_schemas(env: AgentEnv) -> str:
    _, info = env.reset(seed=0)
    for schema in info["tools"]:
        function = schema.get("function", {})
        if schema.get("type") != "function" or not function.get("name"):
            raise AssertionError(f"not an OpenAI function schema: {schema}")
        if not function.get("description"):
            raise AssertionError(f"tool {function['name']!r} has no description")
        jsonschema.Draft202012Validator.check_schema(function.get("parameters", {}))
    return f"{len(info['tools'])} tool schema(s) valid"


def _reset_enforced(env_id: str, kwargs: dict[str, Any]) -> str:
    fresh = make(env_id, **kwargs)
    try:
        try:
            fresh.step("hello")
        except ResetNeededError:
            pass
        else:
            raise AssertionError("step() before reset() was accepted")
        fresh.reset(seed=0)
        _, _, terminated, truncated, _ = fresh.step("done.")
        if not (terminated or truncated):
            return "step before reset refused (episode continues after a plain reply)"
        try:
            fresh.step("again")
        except ResetNeededError:
            return "step before reset and after the end refused"
        raise AssertionError("step() after the episode ended was accepted")
    finally:
        fresh.close()


def _budget(env: AgentEnv) -> str:
    _, info = env.reset(seed=0)
    name = info["tools"][0]["function"]["name"] if info["tools"] else None
    for turn in range(1, env.max_turns + 1):
        action: Any = "no tools here"
        if name is not None:
            call = {"id": f"c{turn}", "type": "function",
                    "function": {"name": name, "arguments": "{}"}}
            action = {"role": "assistant", "content": "", "tool_calls": [call]}
        _, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return f"ended after {turn} turn(s) (budget {env.max_turns})"
    raise AssertionError(f"episode still running after max_turns={env.max_turns}")


def _splits(env_id: str, kwargs: dict[str, Any]) -> str:
    sets = {}
    for split in ("train", "eval"):
        env = make(env_id, **{**kwargs, "split": split})
        try:
            sets[split] = {(t.id, str(t.prompt)) for t in env.tasks}
        finally:
            env.close()
    shared_ids = {i for i, _ in sets["train"]} & {i for i, _ in sets["eval"]}
    shared_prompts = {p for _, p in sets["train"]} & {p for _, p in sets["eval"]}
    if shared_ids or shared_prompts:
        raise AssertionError(f"train/eval overlap: {len(shared_ids)} ids, "
                             f"{len(shared_prompts)} prompts")
    return f"train {len(sets['train'])} / eval {len(sets['eval'])} tasks, disjoint"


def check(env_id: str, **kwargs: Any) -> list[CheckResult]:
    """Run every conformance check on ``env_id``; never raises for a failing check.

    Args:
        env_id: a registered id.
        **kwargs: constructor arguments for the env (e.g. a smaller ``num_tasks``).
    """
    results: list[CheckResult] = []
    env = make(env_id, **kwargs)
    checks: list[tuple[str, Callable[[], str]]] = [
        ("gymnasium check_env", lambda: _gymnasium(env)),
        ("seeded task sampling", lambda: _seeding(env)),
        ("tool schemas", lambda: _tool_schemas(env)),
        ("reset before step", lambda: _reset_enforced(env_id, kwargs)),
        ("episode budget", lambda: _budget(env)),
        ("train/eval splits", lambda: _splits(env_id, kwargs)),
        ("adversarial policies", lambda: _adversarial(env)),
    ]
    try:
        for name, run in checks:
            try:
                results.append(CheckResult(name, True, run()))
            except Exception as exc:  # report every failing check, not just the first
                results.append(CheckResult(name, False, f"{type(exc).__name__}: {exc}"))
    finally:
        env.close()
    return results


# ---- adversarial policies ------------------------------------------------------------------

Responder = Callable[[Sequence[Mapping[str, Any]], Any], Any]


def constant_reply(reply: Any) -> Responder:
    """A responder that always answers ``reply`` (text or an assistant message dict)."""
    return lambda messages, tools: reply


def _render(answer: Any) -> str:
    """A task's answer as the text a policy would write (first alias of a list)."""
    if isinstance(answer, list | tuple) and answer and isinstance(answer[0], str | int | float):
        return str(answer[0])
    return answer if isinstance(answer, str) else json.dumps(answer, default=str)


def _question(messages: Sequence[Mapping[str, Any]]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    return str(users[-1].get("content") or "") if users else ""


def _since_user(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    return list(messages[last + 1:])


def _dummy(schema: Mapping[str, Any], text: str) -> Any:
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    return {"integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {},
            "string": text[:200]}.get(kind, text[:200])


def _calls(tools: Any, text: str, wanted: Callable[[str], bool] = lambda name: True) -> Any:
    calls = []
    for i, tool in enumerate(tools or ()):
        function = tool.get("function", {})
        if not wanted(function.get("name", "")):
            continue
        params = function.get("parameters", {})
        args = {name: _dummy(spec, text) for name, spec in params.get("properties", {}).items()
                if name in params.get("required", [])}
        calls.append({"id": f"adv{i}", "type": "function",
                      "function": {"name": function["name"], "arguments": json.dumps(args)}})
    return calls


def generic_attacks(env: AgentEnv) -> dict[str, Responder]:
    """The adversarial responders every env faces (see the module docstring)."""
    gold = _render(env.task.answer)
    decoys = [_render(t.answer) for t in env.tasks[:40] if _render(t.answer) != gold][:20]
    decoys += [str(n) for n in range(-3, 30)] + ["yes", "no", "True", "False", "none"]
    spray = decoys[: len(decoys) // 2] + [gold] + decoys[len(decoys) // 2:]
    spray_text = "\n".join(spray) + "".join(f"<answer>{c}</answer>" for c in spray) \
        + " ".join(f"\\boxed{{{c}}}" for c in spray)
    submit = re.compile(r"submit|answer|finish|final", re.IGNORECASE)

    def echo_tools(messages: Sequence[Mapping[str, Any]], tools: Any) -> Any:
        outputs = [str(m.get("content") or "") for m in _since_user(messages)
                   if m.get("role") == "tool"]
        if outputs or not tools:
            return "\n".join(outputs)
        return {"role": "assistant", "content": "", "tool_calls": _calls(tools,
                                                                          _question(messages))}

    def malformed(messages: Sequence[Mapping[str, Any]], tools: Any) -> Any:
        if any(m.get("role") == "assistant" for m in messages) or not tools:
            return ""  # once; then an empty reply wherever the episode goes on
        name = tools[0]["function"]["name"]
        return (f'<tool_call>{{"name": "{name}", "arguments": {{"answer": "{gold}"}}\n'
                f"<tool_call>{{'name': '{name}', 'arguments': {{'answer': '{gold}'}}}}</tool_call>"
                f'\n```json\n{{"name": "{name}", "arguments": {{"answer": {json.dumps(gold)}}}}}'
                "\n```")

    def early_submit(messages: Sequence[Mapping[str, Any]], tools: Any) -> Any:
        calls = _calls(tools, gold, lambda name: bool(submit.search(name)))
        if not calls or any(m.get("role") == "tool" for m in _since_user(messages)):
            return ""
        return {"role": "assistant", "content": "", "tool_calls": calls}

    return {
        "empty": lambda messages, tools: "",
        "question echo": lambda messages, tools: _question(messages),
        "answer spray": lambda messages, tools: spray_text,
        "tool-output echo": echo_tools,
        "malformed calls": malformed,
        "early submit": early_submit,
    }


def _play(env: AgentEnv, seed: int, responder: Responder) -> float:
    obs, info = env.reset(seed=seed)
    policy = FakePolicy(responder=responder)
    reward = 0.0
    for _ in range(env.max_turns):
        completion = asyncio.run(policy.generate(obs, info["tools"], SamplingParams()))[0]
        obs, reward, terminated, truncated, info = env.step(completion.to_action())
        if terminated or truncated:
            break
    return float(reward)


def adversarial_scores(env: AgentEnv, tasks: int = ADVERSARIAL_TASKS) -> dict[str, list[float]]:
    """Reward of every adversarial policy (generic and the env's own) on tasks of seeds
    ``0 .. tasks - 1``; a sound env scores 0 everywhere."""
    scores: dict[str, list[float]] = {}
    for seed in range(tasks):
        env.reset(seed=seed)
        attacks = generic_attacks(env)
        own = getattr(env, "adversarial_replies", None)
        if own is not None:
            attacks.update(own(env.task))
        for name, responder in attacks.items():
            scores.setdefault(name, []).append(_play(env, seed, responder))
    return scores


def _adversarial(env: AgentEnv) -> str:
    scores = adversarial_scores(env)
    won = {name: rewards for name, rewards in scores.items() if any(r > 0 for r in rewards)}
    if won:
        raise AssertionError(f"adversarial policies scored: {won}")
    return f"{len(scores)} adversarial policies x {ADVERSARIAL_TASKS} tasks, all scored 0"
