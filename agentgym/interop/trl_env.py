"""agentgym environments in TRL's ``GRPOTrainer`` through its ``environment_factory``.

TRL (1.16) plays tool-using episodes itself when given ``environment_factory``: it builds one
environment object per rollout, calls ``reset(**row)`` with the dataset row (a returned string is
appended to the last message of the row's ``prompt``), renders every public method of the
object's class except ``reset``/``get_reward`` as a tool (transformers reads the schema from the
method's signature, type hints and Google docstring), parses tool calls from the completion with
the tokenizer's ``response_template``, calls the method with the parsed arguments and shows its
string result as a tool message. Reward functions receive the rollouts' objects as
``environments=`` next to ``completions=``.

:class:`TRLAdapter` maps one registered environment onto that contract::

    adapter = TRLAdapter("agentgym/Calculator-v0", demos=2)
    trainer = GRPOTrainer(model=model, processing_class=adapter.prepare_tokenizer(tokenizer),
                          train_dataset=adapter.dataset(), reward_funcs=adapter.reward_func,
                          environment_factory=adapter.environment_factory, args=config)

* **data**: :meth:`TRLAdapter.dataset` has one row per task: ``prompt`` is the task's opening
  chat with the last message emptied, ``task_id`` names the task.
* **reset** starts the agentgym episode on that task and returns the emptied text (the task's
  question), so TRL's prompt is exactly the env's opening observation.
* **tools**: each tool of the env is a method whose signature and docstring are derived from the
  tool's JSON schema (so tools without a Python function behind them, e.g. MCP tools, work too).
  A call is one ``env.step`` with an assistant message holding that call; the env validates the
  arguments and runs the tool, and what the model sees is the env's tool message, errors
  included: a malformed or unknown argument, a wrong type or a failing tool comes back as text,
  exactly as in agentgym's own rollouts (the method accepts any keywords, so TRL's own
  ``TypeError`` path is never hit).
* **reward**: :attr:`TRLAdapter.reward_func` ends each rollout's episode with the completion's
  final reply (one more ``env.step``; or truncates it when the completion ends without a plain
  reply) and returns the reward the env's rubric computed, group components included. An episode
  that could not be scored returns ``None``, which TRL 1.16 treats as unscorable (advantage 0,
  excluded from the group baseline), never as a 0 reward; the trajectory keeps its error.

Deviations from an agentgym rollout of the same policy (all from what TRL passes to tools):

* each tool call is its own env step, so an assistant message with k calls counts k turns
  toward ``max_turns``, and the text the model wrote next to its calls is not in the env's
  trajectory (the final reply is);
* the env's token budget is estimated from text (TRL does not pass token ids to tools);
* when TRL drops a tool result because it would overflow ``max_completion_length``, the call
  has already run in the env;
* the rendered tool schema is transformers' reading of the derived signature: descriptions,
  types, enums and required arguments carry over; ``additionalProperties: false`` and defaults
  are not shown to the model (the env still enforces them);
* tools of a task that offers only some of the env's tools: TRL lists all of them; a call of one
  the task does not offer is an "unknown tool" error message.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import json
import keyword
import logging
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agentgym._sync import SyncRunner
from agentgym.errors import RewardError
from agentgym.policies.model_prep import chat_template as agentgym_chat_template
from agentgym.registry import make
from agentgym.rewards.rubric import Rubric
from agentgym.types import Task, Trajectory

__all__ = ["HERMES_RESPONSE_TEMPLATE", "AgentGymTRLEnv", "RubricReward", "TRLAdapter"]

logger = logging.getLogger(__name__)

HERMES_RESPONSE_TEMPLATE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open": "<tool_call>",
            "close_pattern": r"</tool_call>\s*",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}
"""transformers ``response_template`` for agentgym's tool-aware chat template (ChatML turns,
Hermes ``<tool_call>{json}</tool_call>`` calls): how TRL parses the policy's tool calls."""

_RESERVED = frozenset({"reset", "get_reward"})
_JSON_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool,
                               "object": dict, "array": list, "null": type(None)}


# --- tool schema -> Python signature (what transformers reads) ---

def _python_hint(schema: Mapping[str, Any]) -> Any:
    """A type hint that transformers' ``get_json_schema`` renders as ``schema`` (or close)."""
    if "enum" in schema and schema["enum"]:
        return typing.Literal[tuple(schema["enum"])]
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        hints = [_python_hint(option) for option in options]
        return hints[0] if len(hints) == 1 else typing.Union[tuple(hints)]  # noqa: UP007
    kind = schema.get("type")
    if isinstance(kind, list):
        return _python_hint({"anyOf": [{**schema, "type": k} for k in kind]})
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        return list[_python_hint(schema["items"])]
    return _JSON_TYPES.get(kind, Any)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _tool_docstring(function: Mapping[str, Any]) -> str:
    """A Google docstring carrying the schema's descriptions (every argument needs one)."""
    description = _one_line(function.get("description") or function["name"])
    properties = (function.get("parameters") or {}).get("properties") or {}
    if not properties:
        return description
    lines = [f"    {name}: {_one_line(spec.get('description') or '(undocumented)')}"
             for name, spec in properties.items()]
    return description + "\n\nArgs:\n" + "\n".join(lines)


def _tool_signature(function: Mapping[str, Any]) -> tuple[inspect.Signature, dict[str, Any]]:
    """(signature with ``self``, annotations) of a tool's JSON schema."""
    parameters = function.get("parameters") or {}
    required = set(parameters.get("required") or ())
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    annotations: dict[str, Any] = {}
    for name, spec in (parameters.get("properties") or {}).items():
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"tool {function['name']!r}: argument {name!r} is not a Python "
                             "identifier, so TRL (which reads tools from signatures) cannot "
                             "describe it")
        default = inspect.Parameter.empty if name in required else spec.get("default")
        annotations[name] = _python_hint(spec)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                        default=default, annotation=annotations[name]))
    return inspect.Signature(params), annotations


def _tool_method(schema: Mapping[str, Any]) -> Callable[..., str]:
    """A method named like the tool whose call is one env step with that tool call."""
    function = schema["function"]
    name = function["name"]

    def method(self: AgentGymTRLEnv, **arguments: Any) -> str:
        return self._call_tool(name, arguments)

    signature, annotations = _tool_signature(function)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = _tool_docstring(function)
    method.__signature__ = signature  # type: ignore[attr-defined]
    method.__annotations__ = annotations
    return method


# --- one rollout ---

class AgentGymTRLEnv:
    """One TRL rollout slot backed by one agentgym environment.

    TRL treats every public method of this class (except ``reset``) as a tool, so everything
    else here is private; :class:`TRLAdapter` builds a subclass per environment id with one
    method per tool.
    """

    _adapter: TRLAdapter

    def __init__(self) -> None:
        self._env = self._adapter._make_env()
        self._call_ids = itertools.count()
        self._chat_length = 0

    def reset(self, **row: Any) -> str:
        """Start the episode of the row's task; return its last opening message's text."""
        task_id = row.get("task_id")
        if task_id is None:
            raise ValueError("the dataset row has no 'task_id': build the training dataset with "
                             "TRLAdapter.dataset()")
        observation, _ = self._env.reset(options={"task_id": task_id})
        _check_prompt(row.get("prompt"), observation, task_id)
        self._chat_length = len(observation)
        return observation[-1].get("content") or ""

    def _running(self) -> bool:
        return self._env.task is not None and self._env.trajectory() is None

    def _call_tool(self, name: str, arguments: Mapping[str, Any]) -> str:
        """Run one tool call as an env step; the tool message text (errors included)."""
        if not self._running():
            return (f"Error: the episode is over ({self._ended_why()}); {name!r} was not run. "
                    "Reply with your final answer.")
        call = {"id": f"call_{next(self._call_ids)}", "type": "function",
                "function": {"name": name,
                             "arguments": json.dumps(dict(arguments), default=str)}}
        observation, *_ = self._env.step({"role": "assistant", "content": "",
                                          "tool_calls": [call]})
        new, self._chat_length = observation[self._chat_length + 1:], len(observation)
        return "\n".join(m.get("content") or "" for m in new if m.get("role") == "tool")

    def _ended_why(self) -> str:
        trajectory = self._env.trajectory()
        if trajectory is not None and trajectory.error is not None:
            return f"it failed: {trajectory.error.message}"
        if trajectory is not None and trajectory.truncated:
            return "its turn or token budget ran out"
        return "it has ended"

    def _finish(self, completion: Sequence[Mapping[str, Any]]) -> Trajectory | None:
        """End the episode with the completion's final reply (or truncate it); its trajectory."""
        if self._env.task is None:
            return None
        if self._running():
            last = completion[-1] if completion else None
            if last is not None and last.get("role") == "assistant" and not last.get("tool_calls"):
                self._env.step({"role": "assistant", "content": last.get("content") or ""})
            if self._running():  # no plain final reply (tool loop cut) or it asked for more
                self._env.truncate()
        return self._env.trajectory()

    def _close(self) -> None:
        self._env.close()


def _check_prompt(prompt: Any, observation: Sequence[Mapping[str, Any]], task_id: str) -> None:
    """The row's prompt must be the env's opening chat with the last message emptied."""
    if prompt is None:
        return
    expected = [(m.get("role"), m.get("content") or "") for m in observation[:-1]]
    got = [(m.get("role"), m.get("content") or "") for m in list(prompt)[:-1]]
    if got != expected or len(prompt) != len(observation):
        raise ValueError(f"the dataset row's prompt for {task_id!r} is not this env's opening "
                         "chat (was the dataset built by an adapter with other env arguments?)")


# --- the reward ---

class RubricReward:
    """The TRL reward function: each rollout's reward as the env's rubric computed it.

    TRL calls it with ``completions`` and ``environments`` (one per rollout, in the same
    order). Returns one float per rollout, or ``None`` for a rollout whose episode failed or
    could not be scored (TRL 1.16 gives it zero advantage). The per-component means of the
    batch are logged through TRL's ``log_metric`` as ``agentgym/<component>``.
    """

    __name__ = "rubric"

    def __init__(self, adapter: TRLAdapter):
        self._adapter = adapter

    def __call__(self, completions: Sequence[Sequence[Mapping[str, Any]]],
                 environments: Sequence[Any] | None = None,
                 log_metric: Callable[[str, float], None] | None = None,
                 **kwargs: Any) -> list[float | None]:
        if environments is None:
            raise ValueError("the agentgym rubric reward needs TRL's environment_factory "
                             "(GRPOTrainer(environment_factory=adapter.environment_factory))")
        trajectories = [env._finish(completion) if isinstance(env, AgentGymTRLEnv) else None
                        for env, completion in zip(environments, completions, strict=True)]
        trajectories = self._adapter._score_groups(trajectories)
        self._adapter.episodes.extend(t for t in trajectories if t is not None)
        if log_metric is not None:
            _log_components(trajectories, log_metric)
        return [_reward_of(t) for t in trajectories]


def _reward_of(trajectory: Trajectory | None) -> float | None:
    if trajectory is None:
        return None
    if trajectory.error is not None or trajectory.reward is None or math.isnan(trajectory.reward):
        logger.warning("%s %s: unscored episode (%s)", trajectory.env_id, trajectory.task_id,
                       trajectory.error.message if trajectory.error else "no reward")
        return None
    return float(trajectory.reward)


def _log_components(trajectories: Sequence[Trajectory | None],
                    log_metric: Callable[[str, float], None]) -> None:
    columns: dict[str, list[float]] = collections.defaultdict(list)
    for trajectory in trajectories:
        if trajectory is not None and trajectory.error is None:
            for name, value in trajectory.reward_components.items():
                columns[name].append(value)
    for name, values in columns.items():
        log_metric(f"agentgym/{name}", sum(values) / len(values))


# --- the adapter ---

class TRLAdapter:
    """A registered agentgym environment as TRL ``GRPOTrainer`` inputs.

    Args:
        env_id: a registered id, e.g. ``"agentgym/Calculator-v0"``.
        split: the tasks to train on (the dataset and every env instance use it).
        keep_episodes: how many finished trajectories :attr:`episodes` keeps (newest last).
        **env_kwargs: constructor arguments of the environment (e.g. ``demos=2``).

    Attributes:
        environment_factory: pass as ``GRPOTrainer(environment_factory=...)``.
        reward_func: pass as ``GRPOTrainer(reward_funcs=...)`` (named ``rubric`` in TRL's logs).
        episodes: the finished trajectories, in the order TRL scored them.
    """

    def __init__(self, env_id: str, *, split: str = "train", keep_episodes: int = 10_000,
                 **env_kwargs: Any):
        self.env_id, self.split, self.env_kwargs = env_id, split, dict(env_kwargs)
        self._probe = self._make_env()
        self._instances: list[AgentGymTRLEnv] = []
        schemas = [t.schema for t in self._probe._all_tools()]
        clashes = sorted({s["function"]["name"] for s in schemas
                          if s["function"]["name"] in _RESERVED
                          or s["function"]["name"].startswith("_")})
        if clashes:
            raise ValueError(f"{env_id}: tool names {clashes} clash with TRL's environment "
                             "protocol (reset, get_reward, private names)")
        methods = {s["function"]["name"]: _tool_method(s) for s in schemas}
        name = "".join(ch for ch in env_id.split("/")[-1].title() if ch.isalnum()) + "TRLEnv"
        self.env_class: type[AgentGymTRLEnv] = type(name, (AgentGymTRLEnv,),
                                                    {**methods, "_adapter": self})
        self.reward_func = RubricReward(self)
        self._runner = SyncRunner()
        self.episodes: collections.deque[Trajectory] = collections.deque(maxlen=keep_episodes)

    def _make_env(self) -> Any:
        return make(self.env_id, split=self.split, **self.env_kwargs)

    def environment_factory(self) -> AgentGymTRLEnv:
        """A fresh rollout slot (TRL calls this once per concurrent rollout and reuses it)."""
        instance = self.env_class()
        self._instances.append(instance)
        return instance

    @property
    def tasks(self) -> tuple[Task, ...]:
        """The tasks of the adapter's split."""
        return self._probe.tasks

    @property
    def rubric(self) -> Rubric:
        """The environment's rubric (what :attr:`reward_func` returns)."""
        return self._probe.rubric

    @property
    def tool_names(self) -> list[str]:
        """The tools TRL will offer, by name."""
        return [t.name for t in self._probe._all_tools()]

    def rows(self, limit: int | None = None) -> list[dict[str, Any]]:
        """One row per task of the split: ``prompt`` (the opening chat, last message emptied)
        and ``task_id``."""
        tasks = self.tasks if limit is None else self.tasks[:limit]
        rows = []
        for task in tasks:
            prompt = [dict(m) for m in task.prompt]
            prompt[-1] = {**prompt[-1], "content": ""}
            rows.append({"prompt": prompt, "task_id": task.id})
        return rows

    def dataset(self, limit: int | None = None) -> Any:
        """:meth:`rows` as a ``datasets.Dataset`` (TRL's training dataset)."""
        from datasets import Dataset  # optional dependency (comes with TRL)

        return Dataset.from_list(self.rows(limit))

    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        """Give agentgym's chat template its tool-call parser (TRL needs one to find calls).

        Tokenizers with a ``response_template`` already, or another chat template that TRL
        knows, are returned unchanged.
        """
        if (getattr(tokenizer, "response_template", None) is None
                and tokenizer.chat_template == agentgym_chat_template()):
            tokenizer.response_template = dict(HERMES_RESPONSE_TEMPLATE)
        return tokenizer

    def _score_groups(self, trajectories: list[Trajectory | None]) -> list[Trajectory | None]:
        """Add the rubric's group components per task (a group with a failed episode: None)."""
        rubric = self.rubric
        if not rubric.group_rewards:
            return trajectories
        groups: dict[str, list[int]] = collections.defaultdict(list)
        for index, trajectory in enumerate(trajectories):
            if trajectory is not None:
                groups[trajectory.task_id].append(index)
        out = list(trajectories)
        for task_id, indices in groups.items():
            members = [trajectories[i] for i in indices]
            if any(t.error is not None for t in members):
                for i in indices:
                    out[i] = None
                continue
            task = next(t for t in self.tasks if t.id == task_id)
            try:
                scored = self._runner.run(rubric.score_group(members, task))
            except RewardError as exc:
                logger.warning("%s %s: group reward failed (%s)", self.env_id, task_id, exc)
                scored = [None] * len(indices)
            for i, trajectory in zip(indices, scored, strict=True):
                out[i] = trajectory
        return out

    def close(self) -> None:
        """Close every environment this adapter made."""
        for instance in self._instances:
            instance._close()
        self._instances.clear()
        self._probe.close()
        self._runner.close()
