"""The environment contract: a multi-turn, tool-using chat episode as a ``gymnasium.Env``.

An episode is one task. ``reset`` returns the opening chat; every ``step`` takes one assistant
message, runs the tool calls it contains and returns the chat so far::

    obs, info = env.reset(seed=0)   # obs: [{"role": "system", ...}, {"role": "user", ...}]
    obs, reward, terminated, truncated, info = env.step(
        '<tool_call>{"name": "calculate", "arguments": {"expression": "6*7"}}</tool_call>')
    obs, reward, terminated, truncated, info = env.step("The answer is 42.")

* observation: the chat so far, a list of OpenAI message dicts (a fresh copy every call).
* action: one assistant message, a string or a dict with ``content`` and/or ``tool_calls``. The
  dict may also carry what the policy returned for the turn (``prompt_token_ids``,
  ``completion_token_ids``, ``logprobs``, ``weight_version``); the env keeps them on the
  :class:`~agentgym.types.Turn` so the trainer never re-tokenises.
* ``terminated``: the episode reached its end (a reply without tool calls, or a tool that ends
  it). ``truncated``: a budget ran out first (turns, policy tokens, wall time).
* reward: 0.0 until the last step, then the rubric's total. If scoring fails (a judge or sandbox
  fault, or the end state could not be read) the reward is NaN and ``info["error"]`` (an
  :class:`~agentgym.errors.ErrorRecord`) says why: a failure is never a silent 0.
* info: ``task_id``, ``split``, ``turn``, ``tools`` (the schemas), and at the end
  ``reward_components`` (and ``error`` when scoring failed).

The async twins ``areset``/``astep`` hold the one implementation; ``reset``/``step`` run them on
an event loop the env owns. A task author subclasses :class:`AgentEnv` and writes ``load_tasks``,
``rubric`` and some ``@tool`` methods; the hooks ``setup_episode``, ``teardown_episode``,
``on_reply`` and ``final_state`` cover resources, multi-user-turn dialogues and state checks.
Every hook is ``async def`` and runs on the event loop that plays many episodes at once, so a
hook never blocks: it awaits async I/O (``httpx.AsyncClient``) or moves blocking work to a thread
(``await asyncio.to_thread(...)``).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import gymnasium

from agentgym._sync import SyncRunner
from agentgym.errors import AgentGymError, ErrorRecord, InvalidActionError, ResetNeededError
from agentgym.parsing import ParsedReply, parse_assistant_message
from agentgym.rewards.rubric import Rubric
from agentgym.spaces import AssistantMessageSpace, ChatSpace
from agentgym.tools import Tool, ToolBox
from agentgym.types import Split, Task, ToolResult, Trajectory, Turn, as_messages

__all__ = ["AgentEnv", "estimate_tokens"]

logger = logging.getLogger(__name__)

_TURN_KEYS = ("prompt_token_ids", "completion_token_ids", "logprobs", "weight_version")


def estimate_tokens(text: str) -> int:
    """Rough token count (4 characters a token) for policies that do not report token ids."""
    return math.ceil(len(text) / 4)


def _normalize_action(action: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an action into (assistant message dict, per-turn policy data)."""
    if isinstance(action, str):
        return {"role": "assistant", "content": action}, {}
    if not isinstance(action, Mapping):
        raise InvalidActionError(
            f"an action is an assistant message (str or dict), got {type(action).__name__}")
    if action.get("role", "assistant") != "assistant":
        raise InvalidActionError(f"an action must have role 'assistant', got {action['role']!r}")
    content = action.get("content")
    if content is not None and not isinstance(content, str):
        raise InvalidActionError("an action's 'content' must be a string or None")
    message: dict[str, Any] = {"role": "assistant", "content": content or ""}
    if action.get("tool_calls"):
        if not isinstance(action["tool_calls"], list):
            raise InvalidActionError("an action's 'tool_calls' must be a list")
        message["tool_calls"] = action["tool_calls"]
    return message, {k: action[k] for k in _TURN_KEYS if k in action}


class AgentEnv(gymnasium.Env):
    """Base class of every agentgym environment (see the module docstring for the contract).

    Args:
        split: which tasks to draw from, ``"train"`` or ``"eval"``.
        max_turns: assistant messages per episode before it is truncated.
        max_tokens: policy tokens per episode before it is truncated (counted from the token
            ids the policy reports, else estimated from text).
        max_seconds: wall time per episode before it is truncated (None: no limit).
        tool_timeout_s: wall-clock limit of one tool call; the model cannot change it.
        max_tool_output_chars: tool output beyond this is cut, with a marker.
        env_id: the registered id (set by :func:`agentgym.make`).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}
    family: ClassVar[str] = "other"
    """Task family shown by ``agentgym envs`` (search, code, api, math, ...)."""
    reward_kind: ClassVar[str] = "verifiable"
    """``verifiable``, ``verbal`` or ``self-feedback``."""
    extra_splits: ClassVar[tuple[str, ...]] = ()
    """Held-out eval splits beyond ``train`` and ``eval`` (e.g. ``eval_paraphrase``); each is
    disjoint from ``train`` and digested like the others."""

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        for name in ("setup_episode", "teardown_episode", "on_reply", "final_state"):
            hook = cls.__dict__.get(name)
            if hook is not None and not inspect.iscoroutinefunction(hook):
                raise TypeError(
                    f"{cls.__name__}.{name} must be 'async def': the rollout engine awaits it "
                    "on a shared event loop (run blocking work with 'await asyncio.to_thread')")

    def __init__(self, *, split: Split = "train", max_turns: int = 8, max_tokens: int = 8192,
                 max_seconds: float | None = None, tool_timeout_s: float = 30.0,
                 max_tool_output_chars: int = 8000, env_id: str | None = None):
        if split not in ("train", "eval", *self.extra_splits):
            raise ValueError(f"split must be one of {['train', 'eval', *self.extra_splits]}, "
                             f"got {split!r}")
        if max_turns < 1 or max_tokens < 1:
            raise ValueError("max_turns and max_tokens must be >= 1")
        self.split: Split = split
        self.max_turns, self.max_tokens, self.max_seconds = max_turns, max_tokens, max_seconds
        self.tool_timeout_s, self.max_tool_output_chars = tool_timeout_s, max_tool_output_chars
        self.env_id = env_id or type(self).__name__
        self.observation_space = ChatSpace()
        self.action_space = AssistantMessageSpace(tuple(t.name for t in self._all_tools()))
        self._tasks: tuple[Task, ...] | None = None
        self._runner = SyncRunner()
        self._task: Task | None = None
        self._done = True
        self._active = False
        self._trajectory: Trajectory | None = None

    # --- what a task author writes --------------------------------------------------------

    def load_tasks(self, split: Split) -> Sequence[Task]:
        """Return every task of ``split`` (called once per env, cached)."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_tasks(split)")

    @property
    def rubric(self) -> Rubric:
        """The reward of a finished episode."""
        raise NotImplementedError(f"{type(self).__name__} must define a rubric")

    def episode_tools(self, task: Task) -> Sequence[Tool]:
        """Tools offered in an episode: every ``@tool`` of the env, or those the task names."""
        tools = self._all_tools()
        return [t for t in tools if t.name in task.tools] if task.tools else tools

    async def setup_episode(self, task: Task) -> None:
        """Acquire per-episode resources (a sandbox, a fresh API state). Default: nothing."""

    async def teardown_episode(self) -> None:
        """Release what ``setup_episode`` acquired; called once per episode, even on errors."""

    async def on_reply(self, reply: ParsedReply) -> list[dict[str, Any]] | None:
        """A reply without tool calls arrived: return messages to continue, or None to end."""
        return None

    async def final_state(self) -> Any:
        """A JSON-able snapshot of the world at episode end, for state-checking rewards.

        Awaited once when the episode ends, before scoring (and, best effort, when it fails, for
        the record). Like every hook it must not block the event loop. Raise an
        :class:`~agentgym.errors.AgentGymError` (e.g. :class:`~agentgym.errors.RewardError`)
        when the state cannot be read: the episode is then recorded with that error, unscored.
        Default: None.
        """
        return None

    def demonstrate(self, task: Task) -> list[dict[str, Any]] | None:
        """A solved chat of ``task`` from a reference solution, or None (default: the env has
        none).

        The chat is the task's prompt followed by the reference assistant turns and the
        tool/user messages they get, as a rollout would record it. Replaying its assistant
        messages through the env (:func:`agentgym.trainers.offline.replay`) scores the full
        reward; SFT trains on it (``trainers/sft.py``). Must not block (no I/O): envs whose
        solution needs the world's state compute it from the task's data.
        """
        return None

    @classmethod
    def split_sizes(cls) -> dict[str, int] | None:
        """Tasks per split if known without loading them (shown by ``agentgym envs``)."""
        return None

    def corpus_digest(self) -> str | None:
        """sha256 of the data the tools read beyond the tasks (a search corpus), or None.

        Recorded next to the task digests (:mod:`agentgym.digests`), so a dependency upgrade
        that changes a versioned env's corpus fails a test. Default: None (no such data).
        """
        return None

    # --- public API -----------------------------------------------------------------------

    @property
    def tasks(self) -> tuple[Task, ...]:
        """The tasks of this env's split (loaded on first use)."""
        if self._tasks is None:
            tasks = tuple(self.load_tasks(self.split))
            if not tasks:
                raise ValueError(f"{self.env_id} has no {self.split!r} tasks")
            self._tasks = tasks
        return self._tasks

    @property
    def task(self) -> Task | None:
        """The current episode's task (None before the first reset)."""
        return self._task

    def trajectory(self) -> Trajectory | None:
        """The last finished episode's trajectory (None while an episode is running)."""
        return self._trajectory

    def end_episode(self) -> None:
        """Let a tool end the episode (e.g. ``submit_answer``): the step terminates after it."""
        self._end_requested = True

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Start an episode (sync wrapper of :meth:`areset`)."""
        return self._runner.run(self.areset(seed=seed, options=options))

    def step(self, action: Any) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        """Take one assistant message (sync wrapper of :meth:`astep`)."""
        return self._runner.run(self.astep(action))

    def truncate(self) -> Trajectory:
        """End the running episode as truncated and score it (sync wrapper of :meth:`atruncate`)."""
        return self._runner.run(self.atruncate())

    def close(self) -> None:
        """Release the episode's resources and the env's event loop (idempotent)."""
        if self._active:
            self._runner.run(self._teardown())
        self._runner.close()

    async def aclose(self) -> None:
        """Async close for code that drives the env from its own loop."""
        await self._teardown()

    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None,
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Start an episode on a task chosen by ``options`` (``task_id`` or ``task_index``) or
        drawn with the env's seeded RNG."""
        super().reset(seed=seed)
        await self._teardown()
        task = self._choose_task(options or {})
        self._task, self._messages = task, list(as_messages(task.prompt))
        self._turns: list[Turn] = []
        self._tokens, self._started = 0, time.monotonic()
        self._done, self._end_requested, self._trajectory = False, False, None
        self._toolbox = ToolBox(self.episode_tools(task), timeout_s=self.tool_timeout_s,
                                max_output_chars=self.max_tool_output_chars)
        self._active = True
        try:
            await self.setup_episode(task)
        except BaseException:
            self._done = True
            await self._teardown()
            raise
        return self._observation(), self._info()

    async def astep(self, action: Any,
                    ) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        """Apply one assistant message: run its tool calls, or end / continue the dialogue."""
        if self._task is None or self._done:
            raise ResetNeededError("call reset() before step(), and again after an episode ends")
        message, policy_data = _normalize_action(action)
        try:
            reply = parse_assistant_message(message)
            self._messages.append(message)
            self._count_tokens(message, policy_data)
            results = [await self._toolbox.execute(call) for call in reply.tool_calls]
            self._messages.extend(r.to_message() for r in results)
            self._record_turn(message, reply, results, policy_data)
            terminated = await self._advance(reply)
        except AgentGymError as exc:  # infra failure mid-episode: record it, free resources
            if exc.blame == "model":
                raise
            await self._fail(exc)
            raise
        truncated = not terminated and self._budget_exhausted()
        if not (terminated or truncated):
            return self._observation(), 0.0, False, False, self._info()
        reward, extra = await self._finish(terminated, truncated)
        return self._observation(), reward, terminated, truncated, {**self._info(), **extra}

    # --- internals ------------------------------------------------------------------------

    def _all_tools(self) -> list[Tool]:
        names = [n for n in dir(type(self)) if isinstance(getattr(type(self), n, None), Tool)]
        return [getattr(self, n) for n in names]

    def _choose_task(self, options: Mapping[str, Any]) -> Task:
        tasks = self.tasks
        if "task_id" in options:
            for task in tasks:
                if task.id == options["task_id"]:
                    return task
            raise KeyError(f"{self.env_id} ({self.split}) has no task {options['task_id']!r}")
        if "task_index" in options:
            return tasks[int(options["task_index"]) % len(tasks)]
        return tasks[int(self.np_random.integers(len(tasks)))]

    def _count_tokens(self, message: Mapping[str, Any], policy_data: Mapping[str, Any]) -> None:
        ids = policy_data.get("completion_token_ids")
        self._tokens += len(ids) if ids is not None else estimate_tokens(
            (message.get("content") or "") + str(message.get("tool_calls") or ""))

    def _record_turn(self, message: dict[str, Any], reply: ParsedReply,
                     results: list[ToolResult], policy_data: Mapping[str, Any]) -> None:
        self._turns.append(Turn(
            index=len(self._turns), assistant=dict(message), tool_calls=reply.tool_calls,
            tool_results=tuple(results),
            prompt_token_ids=tuple(policy_data.get("prompt_token_ids") or ()),
            completion_token_ids=tuple(policy_data.get("completion_token_ids") or ()),
            logprobs=tuple(policy_data.get("logprobs") or ()),
            weight_version=policy_data.get("weight_version")))

    async def _advance(self, reply: ParsedReply) -> bool:
        """True if the episode ends here; otherwise add the env's follow-up messages."""
        if self._end_requested:
            return True
        if reply.tool_calls:
            return False
        follow_up = await self.on_reply(reply)
        if follow_up is None:
            return True
        self._messages.extend(as_messages(follow_up))
        return False

    def _budget_exhausted(self) -> bool:
        over_time = (self.max_seconds is not None
                     and time.monotonic() - self._started > self.max_seconds)
        return len(self._turns) >= self.max_turns or self._tokens >= self.max_tokens or over_time

    def _base_trajectory(self, terminated: bool, truncated: bool) -> Trajectory:
        """The episode so far, without its final state."""
        assert self._task is not None
        return Trajectory(env_id=self.env_id, task_id=self._task.id,
                          messages=as_messages(self._messages), turns=tuple(self._turns),
                          terminated=terminated, truncated=truncated)

    async def _finish(self, terminated: bool, truncated: bool) -> tuple[float, dict[str, Any]]:
        """Score the episode, release its resources, and return (reward, final info)."""
        assert self._task is not None
        trajectory = self._base_trajectory(terminated, truncated)
        try:
            trajectory = dataclasses.replace(trajectory, final_state=await self.final_state())
            score = await self.rubric.score(trajectory, self._task)
        except AgentGymError as exc:
            if exc.blame == "user":
                raise
            error = ErrorRecord.from_exception(exc)
            self._trajectory = dataclasses.replace(trajectory, error=error)
            await self._teardown()
            return math.nan, {"reward_components": {}, "error": error}
        finally:
            self._done = True
        self._trajectory = dataclasses.replace(
            trajectory, reward=score.reward, reward_components=dict(score.components),
            turn_rewards=score.turn_rewards)
        await self._teardown()
        return score.reward, {"reward_components": dict(score.components)}

    async def _fail(self, exc: BaseException) -> None:
        trajectory = dataclasses.replace(self._base_trajectory(False, False),
                                         error=ErrorRecord.from_exception(exc))
        self._done = True
        try:
            trajectory = dataclasses.replace(trajectory, final_state=await self.final_state())
        except AgentGymError as state_exc:  # the episode already failed with exc: keep that
            logger.warning("%s: no final state for the failed episode (%s: %s)", self.env_id,
                           type(state_exc).__name__, state_exc)
        finally:
            self._trajectory = trajectory
            await self._teardown()

    async def aabort(self, exc: BaseException) -> Trajectory:
        """End the running episode because of a failure outside the env (policy down, timeout).

        The partial trajectory is kept with ``error`` set (never a reward), and the episode's
        resources are released. Returns that trajectory.
        """
        if self._task is None:
            raise ResetNeededError("no episode to abort: call reset() first")
        if not self._done:
            await self._fail(exc)
        assert self._trajectory is not None
        return self._trajectory

    async def atruncate(self) -> Trajectory:
        """End the running episode as truncated from outside the env, and score it.

        The rollout engine calls this when the chat no longer fits the policy's context window
        (:class:`~agentgym.errors.ContextWindowError`): a budget ran out, like the env's own
        turn/token budgets, so the episode is scored on what happened. Returns the trajectory.
        """
        if self._task is None or self._done:
            raise ResetNeededError("no running episode to truncate: call reset() first")
        await self._finish(False, True)
        assert self._trajectory is not None
        return self._trajectory

    async def _teardown(self) -> None:
        if self._active:
            self._active = False
            await self.teardown_episode()

    def _observation(self) -> list[dict[str, Any]]:
        return list(as_messages(self._messages))

    def _info(self) -> dict[str, Any]:
        assert self._task is not None
        return {"task_id": self._task.id, "split": self.split, "turn": len(self._turns),
                "tools": self._toolbox.schemas}
