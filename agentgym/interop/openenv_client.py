"""An OpenEnv environment server, by URL, played as an agentgym environment.

``agentgym.make("agentgym/OpenEnv-v0", base_url="http://127.0.0.1:8001")`` returns an
:class:`OpenEnvClientEnv`: an :class:`~agentgym.AgentEnv` (``reset``/``step`` and their async
twins ``areset``/``astep``) whose episodes are played on the server through openenv-core's own
client (:class:`openenv.core.GenericEnvClient`, a WebSocket session). ``agentgym eval`` and
``agentgym train`` take it like any env id, with ``base_url`` in the env kwargs::

    agentgym eval agentgym/OpenEnv-v0 --env-kwargs '{"base_url": "http://127.0.0.1:8001"}' ...

One session per episode: ``areset`` closes the previous episode's session and opens a new one,
so an idle server-side timeout can only hit an episode that is really stuck.

Two kinds of server:

* **agentgym servers** (:mod:`agentgym.interop.openenv_server`): actions, observations, the
  reward and its components, ``terminated`` / ``truncated`` and the turns' tool calls and results
  cross unchanged, so an episode played through the server equals the in-process one. Tasks
  (ids and prompts) come from the server's ``GET /agentgym/tasks``; ``split`` is passed with
  each reset.
* **any other OpenEnv server**: the assistant's text is sent as the action's one text field
  (found in ``GET /schema``, or named with ``action_field``), each observation is shown to the
  model as a user message holding its JSON, ``done`` ends the episode (``terminated``), and the
  episode's reward is the sum of the step rewards. Tasks are seeds: ``num_tasks`` tasks per
  split (train ``seed-0``..., eval ``eval-seed-0``... with seeds offset by 1,000,000), and a
  reset passes the task's seed.

Without ``base_url`` the env can be built and its (seed) tasks listed, but not played.

Errors keep their in-process meaning: step before reset and an action that is not an assistant
message raise here, before anything is sent (:class:`~agentgym.errors.ResetNeededError`,
:class:`~agentgym.errors.InvalidActionError`); malformed tool calls come back from the server as
tool messages; a server that cannot be reached, answers with an error or has expired the session
raises :class:`~agentgym.errors.EnvServerError` (infra), and the episode is recorded with that
error, never scored 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from agentgym.env import AgentEnv, _normalize_action
from agentgym.errors import EnvError, EnvServerError, ErrorRecord, ResetNeededError
from agentgym.parsing import parse_assistant_message
from agentgym.rewards import Reward, Rubric
from agentgym.types import Split, Task, ToolCall, ToolResult, Trajectory, Turn, as_messages

__all__ = ["OpenEnvClientEnv"]

logger = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 1_000_000
"""Eval seed tasks of a generic server start here, so train and eval seeds never overlap."""


def _server_reward(trajectory: Trajectory, task: Task) -> float:
    """The reward the server computed (the client never re-scores)."""
    if trajectory.reward is None:
        raise EnvServerError("the server did not score this episode")
    return trajectory.reward


class OpenEnvClientEnv(AgentEnv):
    """An OpenEnv server played as an agentgym env (see the module docstring).

    Args:
        base_url: the server, ``http://host:port`` (None: tasks only, no episodes).
        split: ``"train"`` or ``"eval"``; sent with every reset.
        num_tasks: seed tasks per split for servers that do not list tasks.
        action_field: the action's text field on a generic server (default: from ``/schema``).
        connect_timeout_s: to open a session.
        message_timeout_s: for one answer (a step runs the server's tools).
        env_id: set by :func:`agentgym.make`.
    """

    family = "remote"

    def __init__(self, *, base_url: str | None = None, split: Split = "train",
                 num_tasks: int = 100, action_field: str | None = None,
                 connect_timeout_s: float = 30.0, message_timeout_s: float = 600.0,
                 env_id: str | None = None):
        super().__init__(split=split, env_id=env_id)
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.base_url = base_url.rstrip("/") if base_url else None
        self.num_tasks, self.action_field = num_tasks, action_field
        self.connect_timeout_s, self.message_timeout_s = connect_timeout_s, message_timeout_s
        self._client: Any = None
        self._native: bool | None = None  # an agentgym server (None: not asked yet)
        self._seeds: dict[str, int] = {}

    # --- what the base class asks for -----------------------------------------------------

    def load_tasks(self, split: Split) -> list[Task]:
        """The server's tasks (agentgym servers) or ``num_tasks`` seed tasks."""
        listed = self._server_tasks(split) if self.base_url else None
        self._native = listed is not None
        if listed is not None:
            return [Task(id=str(t["id"]), prompt=tuple(t.get("prompt") or ()), split=split,
                         tools=tuple(t.get("tools") or ())) for t in listed]
        offset = EVAL_SEED_OFFSET if split == "eval" else 0
        prefix = "eval-seed" if split == "eval" else "seed"
        tasks = [Task(id=f"{prefix}-{i}", prompt=(), split=split, metadata={"seed": offset + i})
                 for i in range(self.num_tasks)]
        self._seeds = {t.id: t.metadata["seed"] for t in tasks}
        return tasks

    @property
    def rubric(self) -> Rubric:
        """The server scores; this rubric only reads its reward back."""
        return Rubric([Reward("server", _server_reward)])

    # --- the episode ----------------------------------------------------------------------

    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None,
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Open a new session and start an episode on the task ``options`` names."""
        if self.base_url is None:
            raise EnvError(f"{self.env_id} needs base_url (an OpenEnv server) to play episodes")
        _seed(self, seed)
        await self._close_session()
        task = self._choose_task(options or {})
        self._task, self._turns, self._tool_turns, self._messages = task, [], [], []
        self._done, self._trajectory, self._reward_sum = False, None, 0.0
        self._tokens, self._started = 0, time.monotonic()
        try:
            payload = await self._open_and_reset(task, seed)
        except BaseException:
            self._done = True  # no episode: the next step asks for a reset, as in-process
            await self._close_session()
            raise
        self._messages, self._tools, self._info_last = self._read(payload)
        return self._observation(), self._info()

    async def astep(self, action: Any,
                    ) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        """Send one assistant message; the server runs its tools and answers."""
        if self._task is None or self._done:
            raise ResetNeededError("call reset() before step(), and again after an episode ends")
        message, policy_data = _normalize_action(action)
        payload = await self._send(self._action_payload(message))
        before = len(self._messages)
        self._messages, self._tools, self._info_last = self._read(payload, message)
        self._record_turn(message, parse_assistant_message(message), [], policy_data)
        self._tool_turns.append(self._messages[before + 1:])
        if payload.get("reward") is not None:
            self._reward_sum += float(payload["reward"])
        observation = payload.get("observation") or {}
        terminated, truncated = self._ends(payload)
        if not (terminated or truncated):
            return self._observation(), 0.0, False, False, self._info()
        reward = await self._finish_remote(terminated, truncated, payload)
        return self._observation(), reward, terminated, truncated, {
            **self._info(), "reward_components": dict(self._trajectory.reward_components),
            **({"error": self._trajectory.error} if self._trajectory.error else {}),
            **({} if self._native else {"observation": observation})}

    async def atruncate(self) -> Trajectory:
        """End the episode as truncated (the chat outgrew the policy's window) and score it."""
        if self._task is None or self._done:
            raise ResetNeededError("no running episode to truncate: call reset() first")
        if self._native:
            payload = await self._send({"truncate": True})
            self._messages, self._tools, self._info_last = self._read(payload)
            await self._finish_remote(False, True, payload)
        else:
            await self._finish_remote(False, True, {"reward": None})
        assert self._trajectory is not None
        return self._trajectory

    async def aabort(self, exc: BaseException) -> Trajectory:
        """Record the episode with ``exc`` (never a reward) and close its session."""
        if self._task is None:
            raise ResetNeededError("no episode to abort: call reset() first")
        if not self._done:
            self._done = True
            self._trajectory = Trajectory(
                env_id=self.env_id, task_id=self._task.id, messages=as_messages(self._messages),
                turns=self._remote_turns(None), error=ErrorRecord.from_exception(exc))
            await self._close_session()
        assert self._trajectory is not None
        return self._trajectory

    async def aclose(self) -> None:
        """Close the session (the server releases the episode's env)."""
        await self._close_session()

    def close(self) -> None:
        """Close the session and this env's event loop."""
        if self._client is not None:
            self._runner.run(self._close_session())
        self._runner.close()

    # --- the session ----------------------------------------------------------------------

    async def _open_and_reset(self, task: Task, seed: int | None) -> dict[str, Any]:
        from openenv.core import GenericEnvClient

        client = GenericEnvClient(base_url=self.base_url, connect_timeout_s=self.connect_timeout_s,
                                  message_timeout_s=self.message_timeout_s)
        try:
            await client.connect()
        except ConnectionError as exc:
            raise EnvServerError(f"cannot open a session on {self.base_url}: {exc}") from exc
        self._client = client
        if self._native:
            data: dict[str, Any] = {"split": self.split, "task_id": task.id}
            if seed is not None:
                data["seed"] = seed
        else:
            data = {"seed": self._seeds[task.id] if seed is None else seed}
        return await self._call("reset", data)

    async def _send(self, action: dict[str, Any]) -> dict[str, Any]:
        return await self._call("step", action)

    async def _call(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        """One message of the session; any failure becomes an EnvServerError."""
        from websockets.exceptions import ConnectionClosed

        client = self._client
        if client is None:
            raise EnvServerError("no open session (the previous one failed or was closed)")
        try:
            if kind == "reset":
                result = await client.reset(**data)
            else:
                result = await client.step(data)
        except (TimeoutError, RuntimeError, ConnectionClosed, OSError) as exc:
            detail = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
            raise EnvServerError(f"{self.base_url} {kind} failed: {detail}") from exc
        return {"observation": result.observation, "reward": result.reward, "done": result.done}

    async def _close_session(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _end_session(client, self.connect_timeout_s)

    # --- reading answers ------------------------------------------------------------------

    def _action_payload(self, message: Mapping[str, Any]) -> dict[str, Any]:
        if self._native:
            payload = {"content": message.get("content")}
            if message.get("tool_calls"):
                payload["tool_calls"] = list(message["tool_calls"])
            return payload
        return {self._text_field(): message.get("content") or ""}

    def _read(self, payload: Mapping[str, Any], sent: Mapping[str, Any] | None = None,
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        """(chat so far, tool schemas, server info) from one answer."""
        observation = payload.get("observation") or {}
        if self._native:
            return (list(as_messages(observation.get("messages") or [])),
                    list(observation.get("tools") or []), dict(observation.get("info") or {}))
        shown = {"role": "user", "content": json.dumps(observation, sort_keys=True, default=str)}
        chat = list(self._messages) + ([dict(sent)] if sent is not None else []) + [shown]
        return chat, [], {}

    def _ends(self, payload: Mapping[str, Any]) -> tuple[bool, bool]:
        observation = payload.get("observation") or {}
        if self._native:
            return bool(observation.get("terminated")), bool(observation.get("truncated"))
        return bool(payload.get("done")), False

    async def _finish_remote(self, terminated: bool, truncated: bool,
                       payload: Mapping[str, Any]) -> float:
        """Build the finished trajectory from the server's last answer; close the session."""
        assert self._task is not None
        self._done = True
        info = self._info_last
        error = ErrorRecord.from_dict(info["error"]) if info.get("error") else None
        if self._native:
            reward = payload.get("reward")
            components = {k: float(v) for k, v in (info.get("reward_components") or {}).items()}
        else:
            reward, components = self._reward_sum, {"step_rewards": self._reward_sum}
        episode = (payload.get("observation") or {}).get("episode") if self._native else None
        if reward is None and error is None:
            error = ErrorRecord.from_exception(EnvServerError("the server sent no reward"))
        self._trajectory = Trajectory(
            env_id=self.env_id, task_id=self._task.id, messages=as_messages(self._messages),
            turns=self._remote_turns(episode), terminated=terminated, truncated=truncated,
            reward=None if error is not None else float(reward),
            reward_components=components if error is None else {},
            final_state=(episode or {}).get("final_state"), error=error)
        await self._close_session()
        return math.nan if error is not None else float(reward)

    def _remote_turns(self, episode: Mapping[str, Any] | None) -> tuple[Turn, ...]:
        """The turns with the server's parsed calls and results (or, without them, the tool
        messages as results)."""
        remote = list((episode or {}).get("turns") or [])
        turns = []
        for i, turn in enumerate(self._turns):
            if i < len(remote):
                calls = tuple(ToolCall(**c) for c in remote[i]["tool_calls"])
                results = tuple(ToolResult(**r) for r in remote[i]["tool_results"])
            else:
                calls = turn.tool_calls
                results = tuple(ToolResult(m.get("tool_call_id") or "", m.get("name") or "",
                                           m.get("content") or "")
                                for m in self._tool_turns[i] if m.get("role") == "tool")
            turns.append(Turn(turn.index, turn.assistant, calls, results, turn.prompt_token_ids,
                              turn.completion_token_ids, turn.logprobs, turn.weight_version))
        return tuple(turns)

    def _info(self) -> dict[str, Any]:
        assert self._task is not None
        info = {k: v for k, v in self._info_last.items()
                if k not in ("reward_components", "error")}
        return {**info, "task_id": self._task.id, "split": self.split, "turn": len(self._turns),
                "tools": list(self._tools)}

    # --- asking the server ----------------------------------------------------------------

    def _server_tasks(self, split: Split) -> list[Mapping[str, Any]] | None:
        """The listing of an agentgym server, or None for a server without one (404)."""
        body = self._get("/agentgym/tasks", {"split": split})
        return None if body is None else list(body["tasks"])

    def _text_field(self) -> str:
        if self.action_field is None:
            schema = self._get("/schema", {}) or {}
            props = {k: v for k, v in (schema.get("action", {}).get("properties") or {}).items()
                     if k != "metadata" and v.get("type") == "string"}
            if len(props) != 1:
                raise EnvError(f"{self.base_url}: cannot tell which action field takes the "
                               f"assistant's text (string fields: {sorted(props)}); pass "
                               "action_field= in the env kwargs")
            self.action_field = next(iter(props))
        return self.action_field

    def _get(self, path: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """GET a JSON document (None on 404), as an EnvServerError when the server fails."""
        import httpx

        try:
            response = httpx.get(f"{self.base_url}{path}", params=dict(params),
                                 timeout=self.connect_timeout_s)
        except httpx.HTTPError as exc:
            raise EnvServerError(f"cannot reach {self.base_url}{path}: {exc}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise EnvServerError(f"{self.base_url}{path} answered {response.status_code}: "
                                 f"{response.text[:300]}")
        return response.json()


async def _end_session(client: Any, timeout_s: float) -> None:
    """Close a session the way openenv-core's server expects: send ``close`` and let the server
    close the connection, then close ours. (``EnvClient.close`` closes at once, and the server,
    still releasing the env, then fails to close a connection that is gone and logs a
    traceback for every episode.)"""
    from websockets.exceptions import WebSocketException

    ws = client._ws  # the EnvClient's connection; subclasses of EnvClient use it the same way
    if ws is not None:
        try:
            await ws.send(json.dumps({"type": "close"}))
            await asyncio.wait_for(ws.wait_closed(), timeout=timeout_s)
        except (TimeoutError, WebSocketException, OSError) as exc:
            logger.debug("closing an OpenEnv session: %s", exc)
    await client.close()


def _seed(env: AgentEnv, seed: int | None) -> None:
    """Seed the env's RNG the way ``gymnasium.Env.reset`` does."""
    super(AgentEnv, env).reset(seed=seed)
