"""MCP tool servers as an environment's tools (the ``mcp`` package, imported only when used).

An env that subclasses :class:`MCPToolEnv` offers, next to its own ``@tool`` methods, every tool
of one or more `Model Context Protocol <https://modelcontextprotocol.io>`_ servers, reached over
stdio (a subprocess the env starts) or streamable HTTP (a URL)::

    class Notes(MCPToolEnv):
        def load_tasks(self, split): ...
        @property
        def rubric(self): ...

    env = Notes(mcp_servers=[MCPServerSpec.stdio("python", "notes_server.py"),
                             MCPServerSpec.http("http://127.0.0.1:8931/mcp", prefix="web_")])

An MCP tool behaves like a ``@tool`` (it is a :class:`~agentgym.tools.Tool` run by the same
:class:`~agentgym.tools.ToolBox`): its ``inputSchema`` is the schema the model sees and the one
arguments are validated against before anything is sent (``additionalProperties: false`` is
added when the server leaves it open, as ``@tool`` does, so a model cannot slip in arguments the
server never declared); an unknown tool, bad arguments, a result with ``isError`` and a
JSON-RPC error answer all become a tool message the model sees; the env's ``tool_timeout_s``
bounds every call. A server that cannot be reached, does not answer the handshake within
``connect_timeout_s``, or dies mid-episode raises :class:`ToolServerError` (blame ``infra``):
the rollout engine records the episode as an error, never a hang and never a 0.

Sessions: with ``mcp_scope="env"`` (default) one session per server is opened at the env's
first reset and kept for every episode on that event loop (a stdio server is started once);
``"episode"`` opens fresh sessions at every reset and closes them when the episode ends (a new
server process per episode: clean state, more start-up cost). Either way ``close``/``aclose``
closes them. Each session lives in one background task that enters and leaves the transport's
context (anyio requires that), so sync ``reset``/``step`` calls may come from different tasks.

Deviation from ``@tool``: the tool list is read from the server, so it is known only after
the first reset (``action_space`` lists the env's own ``@tool`` names only).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TextIO

import jsonschema

from agentgym.env import AgentEnv
from agentgym.errors import ToolDefinitionError, ToolExecutionError, ToolServerError
from agentgym.tools import Tool
from agentgym.types import Task, clone_json

if TYPE_CHECKING:
    from mcp.client.session import ClientSession

__all__ = ["MCPServerSpec", "MCPTool", "MCPToolEnv", "MCPToolset", "ToolServerError"]

logger = logging.getLogger(__name__)

Scope = Literal["env", "episode"]
_NAME = re.compile(r"[^a-zA-Z0-9_-]")
_CLOSE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class MCPServerSpec:
    """Where one MCP server is and which of its tools to offer.

    Exactly one of ``command`` (stdio) and ``url`` (streamable HTTP) is set; build it with
    :meth:`stdio`, :meth:`http` or, from a config file, :meth:`from_config`.

    Attributes:
        command: the executable that serves MCP on its stdin/stdout.
        args: its arguments.
        env: extra environment variables for it (merged over the SDK's safe defaults).
        cwd: its working directory.
        url: the streamable HTTP endpoint (e.g. ``http://127.0.0.1:8000/mcp``).
        headers: HTTP headers sent with every request (e.g. an ``Authorization``).
        prefix: put in front of every tool name (keeps two servers' tools apart).
        include: offer only these tools (server-side names); None: all of them.
        connect_timeout_s: deadline for starting/reaching the server, the handshake and the
            tool listing together.
    """

    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] | None = None
    prefix: str = ""
    include: tuple[str, ...] | None = None
    connect_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if (self.command is None) == (self.url is None):
            raise ValueError("an MCP server needs exactly one of 'command' (stdio) or 'url' "
                             "(streamable HTTP)")
        if self.connect_timeout_s <= 0:
            raise ValueError("connect_timeout_s must be > 0")
        object.__setattr__(self, "args", tuple(self.args))
        if self.include is not None:
            object.__setattr__(self, "include", tuple(self.include))

    @classmethod
    def stdio(cls, command: str, *args: str, **options: Any) -> MCPServerSpec:
        """A server the env starts as ``command args...`` and talks to over stdio."""
        return cls(command=command, args=tuple(args), **options)

    @classmethod
    def http(cls, url: str, **options: Any) -> MCPServerSpec:
        """A running server reached over streamable HTTP at ``url``."""
        return cls(url=url, **options)

    @classmethod
    def from_config(cls, value: MCPServerSpec | Mapping[str, Any]) -> MCPServerSpec:
        """From a config mapping: ``{"command": ["python", "srv.py"], ...}`` (a list: the
        executable and its arguments) or ``{"url": "http://...", ...}``."""
        if isinstance(value, MCPServerSpec):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"an MCP server is a mapping with 'command' or 'url', got {value!r}")
        options = dict(value)
        command = options.pop("command", None)
        if isinstance(command, (list, tuple)):
            if not command:
                raise ValueError("an MCP server's 'command' list is empty")
            options["args"] = (*command[1:], *options.get("args", ()))
            command = command[0]
        try:
            return cls(command=command, **options)
        except TypeError as exc:
            raise ValueError(f"bad MCP server config {value!r}: {exc}") from None

    @property
    def where(self) -> str:
        """A short description for error messages."""
        return self.url or " ".join([str(self.command), *self.args])


class MCPTool(Tool):
    """One tool of an MCP server, with the server's input schema, called over its session."""

    def __init__(self, toolset: MCPToolset, index: int, remote_name: str,
                 description: str | None, input_schema: Mapping[str, Any]):
        server = toolset.servers[index]
        self.toolset, self.index, self.server = toolset, index, server
        self.remote_name = remote_name
        self.name = _NAME.sub("_", server.prefix + remote_name)[:64]
        self.inline, self._is_method, self.fn = False, False, self.__call__
        parameters = clone_json(dict(input_schema))
        if parameters.get("type", "object") == "object":
            parameters.setdefault("type", "object")
            parameters.setdefault("properties", {})
            parameters.setdefault("additionalProperties", False)
        try:
            jsonschema.Draft202012Validator.check_schema(parameters)
        except jsonschema.SchemaError as exc:
            raise ToolDefinitionError(f"MCP tool {remote_name!r} of {server.where} has an "
                                      f"invalid input schema: {exc.message}") from None
        self._validator = jsonschema.Draft202012Validator(parameters)
        self.schema = {"type": "function", "function": {
            "name": self.name, "description": description or remote_name,
            "parameters": parameters}}

    def __get__(self, instance: Any, owner: type | None = None) -> MCPTool:
        return self

    async def __call__(self, **arguments: Any) -> str:
        """Call the tool on its server; the text of its result (``isError`` raises
        :class:`ToolExecutionError`, a dead server :class:`ToolServerError`)."""
        return await self.toolset.call(self.index, self.remote_name, arguments)

    def __repr__(self) -> str:
        return f"MCPTool({self.name!r} of {self.server.where})"


def render_result(result: Any) -> str:
    """The text the model sees for an MCP ``CallToolResult`` (text blocks joined; other blocks
    named; the structured content when there is no text)."""
    parts: list[str] = []
    for block in result.content:
        kind = getattr(block, "type", "?")
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource" and hasattr(block.resource, "text"):
            parts.append(block.resource.text)
        else:
            parts.append(f"[{kind} content: {getattr(block, 'mime_type', None) or 'not shown'}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts)


class _Connection:
    """One open MCP session, owned by a background task on the loop that opened it."""

    def __init__(self, server: MCPServerSpec, errlog: TextIO | None):
        self.server, self.errlog = server, errlog
        self.loop = asyncio.get_running_loop()
        self.session: ClientSession | None = None
        self.listing: list[Any] = []
        self.dead = False
        self._stop = asyncio.Event()
        self._owner: asyncio.Task[None] | None = None

    async def open(self) -> None:
        ready: asyncio.Future[None] = self.loop.create_future()
        self._owner = asyncio.create_task(self._own(ready), name=f"mcp:{self.server.where}")
        try:
            async with asyncio.timeout(self.server.connect_timeout_s):
                await asyncio.shield(ready)
        except TimeoutError:
            await self._cancel_owner()
            raise ToolServerError(f"MCP server {self.server.where} did not answer within "
                                  f"{self.server.connect_timeout_s:g}s") from None
        except ToolServerError:
            await self._cancel_owner()
            raise

    async def _own(self, ready: asyncio.Future[None]) -> None:
        from mcp.client.session import ClientSession

        try:
            async with self._transport() as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                self.listing = await _list_tools(session)
                self.session = session
                ready.set_result(None)
                await self._stop.wait()
        except Exception as exc:  # anyio reports transport failures as exception groups
            self.dead = True
            failure = ToolServerError(f"MCP server {self.server.where} failed: "
                                      f"{_describe(exc)}")
            if not ready.done():
                ready.set_exception(failure)
            else:
                logger.warning("%s", failure)
        finally:
            self.session = None

    def _transport(self) -> Any:
        if self.server.url is not None:
            from mcp.client.streamable_http import streamable_http_client

            client = None
            if self.server.headers:
                from mcp.shared._httpx_utils import create_mcp_http_client

                client = create_mcp_http_client(headers=dict(self.server.headers))
            return streamable_http_client(self.server.url, http_client=client)
        from mcp.client.stdio import StdioServerParameters, stdio_client

        assert self.server.command is not None
        return stdio_client(StdioServerParameters(
            command=self.server.command, args=list(self.server.args),
            env=dict(self.server.env) if self.server.env else None, cwd=self.server.cwd),
            errlog=self.errlog or sys.stderr)

    async def call(self, name: str, arguments: Mapping[str, Any]) -> str:
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED

        if self.session is None or self.dead:
            raise ToolServerError(f"MCP server {self.server.where} is not connected")
        try:
            result = await self.session.call_tool(name, dict(arguments))
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                self.dead = True
                raise ToolServerError(f"MCP server {self.server.where} closed the connection "
                                      f"during {name!r}") from None
            raise ToolExecutionError(f"MCP error {exc.code}: {exc.message}") from None
        except (OSError, RuntimeError) as exc:  # transport failures that are not MCP answers
            self.dead = True
            raise ToolServerError(f"MCP server {self.server.where} failed during {name!r}: "
                                  f"{_describe(exc)}") from None
        text = render_result(result)
        if result.is_error:
            raise ToolExecutionError(text or f"{name!r} failed without a message")
        return text

    async def aclose(self) -> None:
        """Close the session from its own loop (see :meth:`MCPToolset.aclose` for others)."""
        if self._owner is None or self._owner.done():
            return
        self._stop.set()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await asyncio.shield(self._owner)
        except TimeoutError:
            logger.warning("MCP server %s did not close within %gs; cancelled",
                           self.server.where, _CLOSE_TIMEOUT_S)
            await self._cancel_owner()

    async def _cancel_owner(self) -> None:
        if self._owner is not None and not self._owner.done():
            self._owner.cancel()
            await asyncio.gather(self._owner, return_exceptions=True)


async def _list_tools(session: ClientSession) -> list[Any]:
    """Every tool of the server, following pagination."""
    from mcp_types import PaginatedRequestParams

    tools, cursor = [], None
    while True:
        page = await session.list_tools(
            params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


def _describe(exc: BaseException) -> str:
    """A one-line description of ``exc``, looking inside exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


@dataclass
class MCPToolset:
    """The tools of some MCP servers, with their sessions (see the module docstring).

    Args:
        servers: the servers (specs or config mappings).
        scope: ``"env"``: sessions kept across episodes; ``"episode"``: fresh per episode.
        errlog: where stdio servers' stderr goes (a real file; default: ``sys.stderr``).
    """

    servers: Sequence[MCPServerSpec | Mapping[str, Any]]
    scope: Scope = "env"
    errlog: TextIO | None = None

    def __post_init__(self) -> None:
        if self.scope not in ("env", "episode"):
            raise ValueError(f"mcp_scope must be 'env' or 'episode', got {self.scope!r}")
        self.servers = [MCPServerSpec.from_config(s) for s in self.servers]
        self._connections: dict[int, _Connection] = {}
        self.tools: list[MCPTool] = []

    async def open(self) -> None:
        """Connect every server not connected on this loop (all of them for ``"episode"``) and
        refresh :attr:`tools`. Raises :class:`ToolServerError` on the first that fails."""
        loop = asyncio.get_running_loop()
        for index, server in enumerate(self.servers):
            old = self._connections.get(index)
            if old is not None and old.loop is loop and not old.dead:
                continue
            if old is not None:
                await self._close_one(old)
            connection = _Connection(server, self.errlog)
            try:
                await connection.open()
            except OSError as exc:
                raise ToolServerError(f"cannot start MCP server {server.where}: {exc}") from exc
            self._connections[index] = connection
        self.tools = self._build_tools()

    def _build_tools(self) -> list[MCPTool]:
        tools: list[MCPTool] = []
        for index, connection in sorted(self._connections.items()):
            include = connection.server.include
            for listed in connection.listing:
                if include is None or listed.name in include:
                    tools.append(MCPTool(self, index, listed.name, listed.description,
                                         listed.input_schema))
        return tools

    async def call(self, index: int, name: str, arguments: Mapping[str, Any]) -> str:
        """Call ``name`` on the open session of server number ``index``."""
        connection = self._connections.get(index)
        if connection is None:
            raise ToolServerError(f"MCP server {self.servers[index].where} is not connected "
                                  "(reset first)")
        return await connection.call(name, arguments)

    async def aclose(self) -> None:
        """Close every session (idempotent)."""
        connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            await self._close_one(connection)

    async def _close_one(self, connection: _Connection) -> None:
        """Close ``connection`` on its own loop, wherever that loop is."""
        loop = connection.loop
        if loop is asyncio.get_running_loop():
            await connection.aclose()
        elif loop.is_closed():
            logger.info("MCP session of %s: its loop is closed", connection.server.where)
        elif loop.is_running():  # another thread runs it
            future = asyncio.run_coroutine_threadsafe(connection.aclose(), loop)
            await asyncio.wrap_future(future)
        else:  # an idle loop (a sync runner's between calls): run the close on it
            await asyncio.to_thread(loop.run_until_complete, connection.aclose())


class MCPToolEnv(AgentEnv):
    """An :class:`AgentEnv` whose tools include those of MCP servers.

    Args:
        mcp_servers: :class:`MCPServerSpec` objects or config mappings (``{"command": [...]}``
            or ``{"url": ...}``).
        mcp_scope: ``"env"`` (sessions kept across episodes) or ``"episode"``.
        **kwargs: :class:`AgentEnv`'s arguments.

    A subclass that overrides ``teardown_episode`` calls ``super().teardown_episode()``.
    """

    def __init__(self, *, mcp_servers: Sequence[MCPServerSpec | Mapping[str, Any]] = (),
                 mcp_scope: Scope = "env", **kwargs: Any):
        super().__init__(**kwargs)
        self.mcp = MCPToolset(mcp_servers, mcp_scope)

    def episode_tools(self, task: Task) -> Sequence[Tool]:
        """The env's ``@tool`` methods and every MCP tool (or those the task names)."""
        tools = [*self._all_tools(), *self.mcp.tools]
        return [t for t in tools if t.name in task.tools] if task.tools else tools

    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None,
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """End the previous episode, connect the MCP servers (see ``mcp_scope``), then reset."""
        await self._teardown()
        await self.mcp.open()
        try:
            return await super().areset(seed=seed, options=options)
        except BaseException:
            if self.mcp.scope == "episode":
                await self.mcp.aclose()
            raise

    async def teardown_episode(self) -> None:
        """Close the episode's MCP sessions (``mcp_scope="episode"``)."""
        if self.mcp.scope == "episode":
            await self.mcp.aclose()

    async def aclose(self) -> None:
        """End the episode and close every MCP session."""
        await super().aclose()
        await self.mcp.aclose()

    def close(self) -> None:
        """Sync close: the episode, the MCP sessions, the env's event loop."""
        if self._active:
            self._runner.run(self._teardown())
        self._runner.run(self.mcp.aclose())
        self._runner.close()
