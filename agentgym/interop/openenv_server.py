"""Any registered agentgym environment served the OpenEnv way (reset / step / state over HTTP).

``agentgym serve-env agentgym/Calculator-v0 --port 8001`` (or :func:`serve_env`) builds an
OpenEnv environment server with openenv-core's own parts: :class:`HTTPEnvServer` registers the
routes on a FastAPI app, and the wire types are subclasses of openenv-core's ``Action``,
``Observation`` and ``State``. Any OpenEnv client can then play the environment; agentgym's own
client is :mod:`agentgym.interop.openenv_client`.

The protocol is openenv-core's:

* ``/ws`` (WebSocket) is a **session**: the server builds one :class:`AgentGymEnvironment` per
  connection (holding the agentgym env), and ``reset`` / ``step`` / ``state`` messages drive
  it. One session plays one episode at a time; ``reset`` again starts the next one.
* ``POST /reset``, ``POST /step``, ``GET /state`` are openenv-core's stateless endpoints: each
  request gets a fresh environment, so ``/reset`` shows an opening observation and ``/step``
  answers 409 (no episode in that fresh environment: use a ``/ws`` session).
* ``GET /schema`` gives the action / observation / state JSON schemas, ``GET /health`` liveness,
  and ``GET /agentgym/tasks?split=eval`` (ours) the ids and opening prompts of a split, so a
  client can name tasks (answers stay on the server).

Wire types: the action is one assistant message, :class:`AgentGymAction` (``content``,
``tool_calls``; ``truncate: true`` ends the episode as truncated and scores it, what the rollout
engine does when the chat outgrows the policy's context window). The observation,
:class:`AgentGymObservation`, carries the chat so far (``messages``), the tool schemas, the
env's ``info`` (JSON-able; ``info["error"]`` is an :class:`~agentgym.errors.ErrorRecord` dict),
``terminated`` / ``truncated`` (``done`` is their or) and, at the end, the episode's turns as the
env recorded them (``episode``: parsed tool calls and tool results). ``reward`` is the env's; a
failed scoring (NaN in-process) travels as ``null`` with ``info["error"]`` set.

Bad input behaves as in-process: a malformed tool call, an unknown tool or bad arguments come
back as tool messages in the observation; an action that is not an assistant message is a
validation error (``VALIDATION_ERROR`` on ``/ws``, HTTP 422); step before reset, or a failure of
the env itself, is an error answer with the exception's class and message (``/ws``:
``EXECUTION_ERROR``; HTTP: 409 for caller errors, 500 otherwise), never a dead server. Sessions
idle longer than ``session_timeout_s`` are closed by openenv-core's reaper, which releases the
env (its sandboxes, its servers); a later message on that connection is answered with an error
saying the session expired.

openenv-core, FastAPI and uvicorn are imported by this module only (the ``interop`` extra).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from openenv.core.env_server.http_server import HTTPEnvServer
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import (
    Action,
    ConcurrencyConfig,
    EnvironmentMetadata,
    Observation,
    State,
)
from pydantic import Field

from agentgym._sync import SyncRunner
from agentgym.env import AgentEnv
from agentgym.errors import AgentGymError, EnvServerError, ErrorRecord, ResetNeededError
from agentgym.registry import make, spec
from agentgym.types import Split, Trajectory

__all__ = [
    "AgentGymAction",
    "AgentGymEnvironment",
    "AgentGymObservation",
    "AgentGymState",
    "RunningServer",
    "build_app",
    "running_server",
    "serve_env",
]

logger = logging.getLogger(__name__)


class AgentGymAction(Action):
    """One assistant message, as :meth:`agentgym.AgentEnv.step` takes it."""

    role: Literal["assistant"] = "assistant"
    content: str | None = Field(default=None, description="the assistant's text")
    tool_calls: list[dict[str, Any]] | None = Field(
        default=None, description="OpenAI tool_calls entries (arguments as a JSON string)")
    truncate: bool = Field(
        default=False, description="end the episode as truncated (out of context) and score it")

    def to_message(self) -> dict[str, Any]:
        """The assistant message dict for the agentgym env."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return message


class AgentGymObservation(Observation):
    """The chat so far and what the env said about it (see the module docstring)."""

    messages: list[dict[str, Any]] = Field(default_factory=list,
                                           description="the chat so far (OpenAI messages)")
    tools: list[dict[str, Any]] = Field(default_factory=list,
                                        description="the tool schemas offered this episode")
    info: dict[str, Any] = Field(default_factory=dict, description="the env's info, JSON-able")
    terminated: bool = False
    truncated: bool = False
    episode: dict[str, Any] | None = Field(
        default=None, description="at the end: the turns' tool calls and results, final state")


class AgentGymState(State):
    """Where the session's episode stands."""

    env_id: str = ""
    split: str | None = None
    task_id: str | None = None
    done: bool = True


def _json_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """The env's info with its records as dicts (``error`` is an ErrorRecord in-process)."""
    out = dict(info)
    if isinstance(out.get("error"), ErrorRecord):
        out["error"] = out["error"].to_dict()
    return out


def _episode_record(trajectory: Trajectory | None) -> dict[str, Any] | None:
    """The parts of a finished trajectory a client cannot rebuild from the chat."""
    if trajectory is None:
        return None
    return {
        "turns": [{"tool_calls": [dataclasses.asdict(c) for c in t.tool_calls],
                   "tool_results": [dataclasses.asdict(r) for r in t.tool_results]}
                  for t in trajectory.turns],
        "final_state": trajectory.final_state,
    }


class AgentGymEnvironment(Environment[AgentGymAction, AgentGymObservation, AgentGymState]):
    """An openenv-core ``Environment`` holding agentgym envs, one per split, built on demand.

    openenv-core builds one per ``/ws`` session (and one per stateless HTTP request). The
    async methods run the agentgym env on the server's event loop; the sync ones (for direct
    use) run them on a loop this object owns.

    Args:
        env_id: a registered agentgym id.
        env_kwargs: arguments for :func:`agentgym.make` (``split`` is the default split).
    """

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, env_id: str, env_kwargs: Mapping[str, Any] | None = None):
        super().__init__()
        self.env_id = env_id
        kwargs = dict(env_kwargs or {})
        self._default_split: Split = kwargs.pop("split", "train")
        self._env_kwargs = kwargs
        self._envs: dict[str, AgentEnv] = {}
        self._env: AgentEnv | None = None
        self._state = AgentGymState(env_id=env_id)
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = SyncRunner()

    # --- openenv-core's Environment ------------------------------------------------------

    async def reset_async(self, seed: int | None = None, episode_id: str | None = None,
                          split: Split | None = None, task_id: str | None = None,
                          task_index: int | None = None, **kwargs: Any) -> AgentGymObservation:
        """Start an episode: on ``task_id`` / ``task_index`` if given, else drawn with ``seed``."""
        self._check_open()
        self._loop = asyncio.get_running_loop()
        env = await self._env_for(split or self._default_split)
        options: dict[str, Any] = {}
        if task_id is not None:
            options["task_id"] = task_id
        if task_index is not None:
            options["task_index"] = task_index
        if self._env is not None and self._env is not env:
            await self._env.aclose()  # the other split's episode ends here
        self._env = env
        obs, info = await env.areset(seed=seed, options=options)
        self._state = AgentGymState(env_id=self.env_id, episode_id=episode_id, step_count=0,
                                    split=env.split, task_id=info.get("task_id"), done=False)
        return self._observation(obs, None, False, False, info)

    async def step_async(self, action: AgentGymAction, timeout_s: float | None = None,
                         **kwargs: Any) -> AgentGymObservation:
        """Apply one assistant message (or, with ``truncate``, end the episode as truncated)."""
        self._check_open()
        env = self._env
        if env is None or self._state.done:
            raise ResetNeededError(
                "no episode in progress in this session: send reset first (and again after an "
                "episode ends); the stateless POST /step cannot play an episode, use a /ws "
                "session")
        if action.truncate:
            trajectory = await env.atruncate()
            self._state.done = True
            reward = math.nan if trajectory.reward is None else trajectory.reward
            info = {"task_id": trajectory.task_id, "split": env.split,
                    "turn": len(trajectory.turns),
                    "reward_components": dict(trajectory.reward_components)}
            if trajectory.error is not None:
                info["error"] = trajectory.error
            return self._observation(list(trajectory.messages), reward, False, True, info,
                                     trajectory)
        try:
            obs, reward, terminated, truncated, info = await env.astep(action.to_message())
        except AgentGymError as exc:
            if exc.blame != "user":  # the env recorded the failed episode and freed it
                self._state.done = True
            raise
        self._state.step_count += 1
        done = terminated or truncated
        self._state.done = done
        return self._observation(obs, reward if done else 0.0, terminated, truncated, info,
                                 env.trajectory() if done else None)

    def reset(self, seed: int | None = None, episode_id: str | None = None,
              **kwargs: Any) -> AgentGymObservation:
        """Sync :meth:`reset_async` (for use outside a server)."""
        return self._runner.run(self.reset_async(seed=seed, episode_id=episode_id, **kwargs))

    def step(self, action: AgentGymAction, timeout_s: float | None = None,
             **kwargs: Any) -> AgentGymObservation:
        """Sync :meth:`step_async` (for use outside a server)."""
        return self._runner.run(self.step_async(action, timeout_s=timeout_s, **kwargs))

    @property
    def state(self) -> AgentGymState:
        """The session's episode: id, steps, split, task, done."""
        return self._state

    def get_metadata(self) -> EnvironmentMetadata:
        """Name and description of the served agentgym env."""
        return EnvironmentMetadata(name=self.env_id, version="agentgym",
                                   description=f"agentgym environment {self.env_id} "
                                               "(actions: assistant messages; observations: "
                                               "the chat so far)")

    def close(self) -> None:
        """Release every env of the session (their episodes' sandboxes, servers, loops).

        openenv-core calls this from a worker thread, or (stateless HTTP requests) on the
        server's loop; the envs' async resources were made on that loop, so they are released
        there.
        """
        self._closed = True
        envs, self._envs, self._env = list(self._envs.values()), {}, None
        loop = self._loop
        for env in envs:
            if loop is None or not loop.is_running():  # direct (sync) use: our runner's loop
                self._runner.run(_close_on_loop(env))
            elif _on_thread_of(loop):  # a stateless request's env, closed on the loop itself
                task = loop.create_task(_close_on_loop(env))
                _closing.add(task)
                task.add_done_callback(_closing.discard)
            else:
                asyncio.run_coroutine_threadsafe(_close_on_loop(env), loop).result(timeout=120)
        self._runner.close()

    # --- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EnvServerError(
                "this session has expired (idle past the server's session timeout, or the "
                "server shut down) and its environment was released: open a new session")

    async def _env_for(self, split: Split) -> AgentEnv:
        """The session's env of ``split``, built (and its tasks loaded) off the event loop,
        which serves every other session meanwhile."""
        if split not in self._envs:
            def build() -> AgentEnv:
                env = make(self.env_id, split=split, **self._env_kwargs)
                try:
                    env.tasks  # noqa: B018 - load them here, not on the loop
                except BaseException:
                    env.close()
                    raise
                return env

            self._envs[split] = await asyncio.to_thread(build)
        return self._envs[split]

    def _observation(self, messages: list[dict[str, Any]], reward: float | None,
                     terminated: bool, truncated: bool, info: Mapping[str, Any],
                     trajectory: Trajectory | None = None) -> AgentGymObservation:
        tools = info.get("tools") or []
        rest = {k: v for k, v in _json_info(info).items() if k != "tools"}
        return AgentGymObservation(
            messages=messages, tools=list(tools), info=rest, terminated=terminated,
            truncated=truncated, done=terminated or truncated,
            reward=None if reward is None or math.isnan(reward) else reward,
            episode=_episode_record(trajectory))


_closing: set[asyncio.Task[None]] = set()
"""Env closes scheduled on the server's loop (a reference keeps each task alive)."""


def _on_thread_of(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


async def _close_on_loop(env: AgentEnv) -> None:
    try:
        await env.aclose()
    finally:
        env.close()


def _error_handlers(app: FastAPI) -> None:
    """Failures as JSON answers with the class and message (409 for caller errors)."""

    async def agentgym_error(request: Request, exc: Exception) -> JSONResponse:
        status = 409 if getattr(exc, "blame", "infra") == "user" else 500
        return JSONResponse(status_code=status, content={
            "detail": str(exc), "error": ErrorRecord.from_exception(exc).to_dict()})

    async def any_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("env server: %s %s failed", request.method, request.url.path)
        return JSONResponse(status_code=500, content={
            "detail": f"the environment failed: {type(exc).__name__}: {exc}",
            "error": ErrorRecord.from_exception(exc).to_dict()})

    app.add_exception_handler(AgentGymError, agentgym_error)
    app.add_exception_handler(Exception, any_error)


def _task_route(app: FastAPI, env_id: str, env_kwargs: Mapping[str, Any]) -> None:
    """``GET /agentgym/tasks?split=``: ids, opening prompts and tool names of a split."""
    kwargs = {k: v for k, v in env_kwargs.items() if k != "split"}
    default_split = env_kwargs.get("split", "train")

    @functools.cache
    def listing(split: str) -> list[dict[str, Any]]:
        env = make(env_id, split=split, **kwargs)
        try:
            return [{"id": t.id, "prompt": [dict(m) for m in t.prompt], "tools": list(t.tools)}
                    for t in env.tasks]
        finally:
            env.close()

    @app.get("/agentgym/tasks", tags=["Environment Info"])
    async def tasks(split: Literal["train", "eval"] | None = None) -> dict[str, Any]:
        chosen = split or default_split
        return {"env_id": env_id, "split": chosen,
                "tasks": await asyncio.to_thread(listing, chosen)}


def build_app(env_id: str, env_kwargs: Mapping[str, Any] | None = None, *,
              max_sessions: int = 64, session_timeout_s: float | None = 600.0) -> FastAPI:
    """The FastAPI app serving ``env_id`` with openenv-core's :class:`HTTPEnvServer`.

    Args:
        env_id: a registered agentgym id (checked now, with suggestions on a typo).
        env_kwargs: arguments for :func:`agentgym.make` (``split``: the default split).
        max_sessions: concurrent ``/ws`` sessions (each holds its own env).
        session_timeout_s: a session idle this long is closed and its env released (None:
            never). openenv-core checks every ``max(timeout / 4, 5)`` seconds.
    """
    spec(env_id)
    kwargs = dict(env_kwargs or {})
    server = HTTPEnvServer(
        functools.partial(AgentGymEnvironment, env_id, kwargs),
        AgentGymAction, AgentGymObservation,
        concurrency_config=ConcurrencyConfig(max_concurrent_envs=max_sessions,
                                             session_timeout=session_timeout_s))
    app = FastAPI(title=f"agentgym {env_id} (OpenEnv protocol)")
    server.register_routes(app)
    _task_route(app, env_id, kwargs)
    _error_handlers(app)
    app.state.env_server = server
    return app


@dataclasses.dataclass
class RunningServer:
    """A server started by :func:`running_server`.

    Attributes:
        base_url: ``http://127.0.0.1:PORT``.
        app: the FastAPI app (``app.state.env_server`` is openenv-core's HTTPEnvServer).
    """

    base_url: str
    app: FastAPI

    @property
    def env_server(self) -> HTTPEnvServer:
        """openenv-core's server object (sessions: ``env_server.active_sessions``)."""
        return self.app.state.env_server


@contextmanager
def running_server(env_id: str, env_kwargs: Mapping[str, Any] | None = None, *,
                   host: str = "127.0.0.1", port: int = 0,
                   **app_kwargs: Any) -> Iterator[RunningServer]:
    """Serve ``env_id`` from a background thread (uvicorn) until the block ends.

    ``port=0`` takes a free port; the block gets a :class:`RunningServer` with the URL.
    """
    import uvicorn

    app = build_app(env_id, env_kwargs, **app_kwargs)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="websockets-sansio"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name=f"env-server-{env_id}")
    thread.start()
    try:
        _wait_started(server, thread)
        yield RunningServer(f"http://{host}:{sock.getsockname()[1]}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _wait_started(server: Any, thread: threading.Thread, timeout_s: float = 60.0) -> None:
    waited = 0.0
    while not server.started:
        if not thread.is_alive() or waited > timeout_s:
            raise EnvServerError(f"the env server did not start within {timeout_s:.0f}s")
        threading.Event().wait(0.05)
        waited += 0.05


def serve_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None, *,
              host: str = "127.0.0.1", port: int = 8001, max_sessions: int = 64,
              session_timeout_s: float | None = 600.0) -> None:
    """Serve ``env_id`` in the foreground until interrupted (``agentgym serve-env``)."""
    import uvicorn

    app = build_app(env_id, env_kwargs, max_sessions=max_sessions,
                    session_timeout_s=session_timeout_s)
    logger.info("serving %s on http://%s:%d (OpenEnv protocol, sessions on /ws)",
                env_id, host, port)
    uvicorn.run(app, host=host, port=port, log_level="info", ws="websockets-sansio")
