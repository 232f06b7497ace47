"""Tools: plain Python functions the model can call, described by an OpenAI JSON schema.

``@tool`` reads the function's type hints and Google-style docstring once and builds the schema::

    @tool
    def calculate(expression: str) -> str:
        '''Evaluate an arithmetic expression exactly.

        Args:
            expression: the expression, e.g. "12 * (3 + 4)".
        '''

Functions may be sync or async, and may be methods of an env (``self`` is bound when the tool is
looked up on the instance, so a tool can use the episode's sandbox or HTTP client).

The schema is the whole interface: arguments the schema does not declare are rejected
(``additionalProperties: false``), so a model can never pass, say, ``timeout=9999`` to a tool and
override a limit the env sets. Running a call never raises for model mistakes: bad arguments,
unknown tools and exceptions inside the tool become a :class:`~agentgym.types.ToolResult` whose
text explains the error. Infra failures (an :class:`~agentgym.errors.AgentGymError` blamed on
infra, e.g. a dead sandbox) propagate, because the model did nothing wrong.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import json
import re
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jsonschema

from agentgym.errors import (
    AgentGymError,
    ToolArgumentError,
    ToolDefinitionError,
    ToolExecutionError,
    ToolParseError,
    ToolTimeoutError,
    UnknownToolError,
)
from agentgym.parsing import format_tool_error, neutralize_special_tokens
from agentgym.types import ToolCall, ToolResult, clone_json

__all__ = ["Tool", "ToolBox", "tool"]

_PRIMITIVES: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    dict: {"type": "object"},
    list: {"type": "array"},
    Any: {},
}


def _type_schema(hint: Any, where: str) -> dict[str, Any]:
    """JSON schema of one type hint; raises ToolDefinitionError for what JSON cannot carry."""
    if hint in _PRIMITIVES:
        return dict(_PRIMITIVES[hint])
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: nullable X
            inner = _type_schema(options[0], where)
            return {"anyOf": [inner, {"type": "null"}]}
        return {"anyOf": [_type_schema(a, where) for a in args]}
    if origin in (list, tuple, Sequence) and args:
        return {"type": "array", "items": _type_schema(args[0], where)}
    if origin in (dict, Mapping):
        return {"type": "object"}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [member.value for member in hint]}
    raise ToolDefinitionError(f"{where}: type {hint!r} has no JSON schema; use str, int, float, "
                              "bool, list[...], dict, Literal[...], an Enum or X | None")


_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Returns|Raises|Yields|Example|Examples|"
                      r"Note|Notes):\s*$")


def _parse_google_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {arg: description}) from a Google-style docstring."""
    lines = inspect.cleandoc(doc or "").splitlines()
    description: list[str] = []
    args: dict[str, str] = {}
    section, current = None, None
    for line in lines:
        header = _SECTION.match(line)
        if header:
            section, current = header.group(1), None
            continue
        if section is None:
            description.append(line)
        elif section in ("Args", "Arguments", "Parameters") and line.strip():
            entry = re.match(r"^\s{0,8}(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
            if entry and (current is None or len(line) - len(line.lstrip()) <= 4):
                current = entry.group(1).lstrip("*")
                args[current] = entry.group(2).strip()
            elif current is not None:
                args[current] = f"{args[current]} {line.strip()}".strip()
    return "\n".join(description).strip(), args


def _build_schema(fn: Callable[..., Any], name: str) -> dict[str, Any]:
    """The OpenAI function schema of ``fn`` (``self`` and ``cls`` skipped)."""
    description, arg_docs = _parse_google_docstring(fn.__doc__ or "")
    if not description:
        raise ToolDefinitionError(f"tool {name!r} needs a docstring: the model reads it")
    hints = typing.get_type_hints(fn)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.name in ("self", "cls"):
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(f"tool {name!r}: *args/**kwargs cannot be described")
        if param.name not in hints:
            raise ToolDefinitionError(f"tool {name!r}: parameter {param.name!r} needs a type hint")
        prop = _type_schema(hints[param.name], f"tool {name!r}, parameter {param.name!r}")
        if param.name in arg_docs:
            prop["description"] = arg_docs[param.name]
        if param.default is param.empty:
            required.append(param.name)
        else:
            prop["default"] = param.default
        properties[param.name] = prop
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required,
                           "additionalProperties": False},
        },
    }


class Tool:
    """A callable the model may use, with its schema and argument validation.

    Attributes:
        name: the name the model calls it by.
        schema: the OpenAI ``{"type": "function", "function": {...}}`` schema.
    """

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None, inline: bool = False):
        self.fn = fn
        self.name = name or fn.__name__
        self.inline = inline
        params = list(inspect.signature(fn).parameters)
        self._is_method = bool(params) and params[0] == "self"
        self.schema = _build_schema(fn, self.name)
        self._validator = jsonschema.Draft202012Validator(self.schema["function"]["parameters"])
        functools.update_wrapper(self, fn)

    def __get__(self, instance: Any, owner: type | None = None) -> Tool:
        """Bind to an env instance when used as a method decorator (a plain function tool
        stored as a class attribute stays unbound)."""
        if instance is None or not self._is_method:
            return self
        bound = object.__new__(Tool)
        bound.__dict__.update(self.__dict__)
        bound.fn = self.fn.__get__(instance, owner)
        return bound

    def validate(self, arguments: Mapping[str, Any]) -> None:
        """Raise ToolArgumentError naming every schema violation of ``arguments``."""
        errors = sorted(self._validator.iter_errors(dict(arguments)), key=lambda e: list(e.path))
        if errors:
            detail = "; ".join(
                (f"{'.'.join(map(str, e.path))}: " if e.path else "") + e.message for e in errors)
            raise ToolArgumentError(f"invalid arguments for {self.name!r}: {detail}")

    async def __call__(self, **arguments: Any) -> Any:
        """Run the tool. Sync functions run in a worker thread so the event loop stays free,
        unless the tool is ``inline`` (fast and non-blocking: then a thread hop would cost more
        than the call)."""
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(**arguments)
        if self.inline:
            return self.fn(**arguments)
        return await asyncio.to_thread(self.fn, **arguments)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None,
         inline: bool = False) -> Any:
    """Decorator: turn a typed, documented function into a :class:`Tool`.

    Usable bare (``@tool``) or with options (``@tool(name="search", inline=True)``).

    Args:
        fn: the function.
        name: the name the model sees (default: the function's name).
        inline: run a sync function on the event loop instead of a worker thread; only for
            fast, non-blocking functions (bounded arithmetic, dict lookups). The env's timeout
            cannot interrupt an inline call.
    """
    if fn is None:
        return lambda f: Tool(f, name=name, inline=inline)
    return Tool(fn, name=name, inline=inline)


def _render_output(value: Any) -> str:
    """Tool return value -> tool message text."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


class ToolBox:
    """The tools of one episode, by name, with the one place calls are executed.

    Args:
        tools: the tools to offer.
        timeout_s: wall-clock limit for one call, set by the env (never by the model).
        max_output_chars: longer outputs are cut, with a marker saying so.
    """

    def __init__(self, tools: Sequence[Tool], *, timeout_s: float | None = 30.0,
                 max_output_chars: int = 8000):
        self.tools = {t.name: t for t in tools}
        if len(self.tools) != len(tools):
            raise ToolDefinitionError(f"duplicate tool names in {[t.name for t in tools]}")
        self.timeout_s = timeout_s
        self.max_output_chars = max_output_chars

    @property
    def schemas(self) -> list[dict[str, Any]]:
        """Fresh copies of every tool's schema, in offer order."""
        return [clone_json(t.schema) for t in self.tools.values()]

    def _truncate(self, text: str) -> str:
        if len(text) <= self.max_output_chars:
            return text
        cut = len(text) - self.max_output_chars
        return text[: self.max_output_chars] + f"\n[... output truncated: {cut} more characters]"

    async def execute(self, call: ToolCall) -> ToolResult:
        """Run one call; model mistakes become an error result, infra failures propagate."""
        started = time.perf_counter()
        try:
            output = await self._run(call)
            text, error_type = _render_output(output), None
        except AgentGymError as exc:
            if exc.blame != "model":
                raise
            text, error_type = format_tool_error(exc), type(exc).__name__
        return ToolResult(call_id=call.id, name=call.name or "?",
                          content=neutralize_special_tokens(self._truncate(text)),
                          error_type=error_type, duration_s=time.perf_counter() - started)

    async def _run(self, call: ToolCall) -> Any:
        if call.error is not None:
            raise ToolParseError(call.error)
        selected = self.tools.get(call.name)
        if selected is None:
            offered = ", ".join(self.tools) or "none"
            raise UnknownToolError(f"unknown tool {call.name!r}; available tools: {offered}")
        selected.validate(call.arguments)
        try:
            return await self._call(selected, call)
        except AgentGymError:
            raise
        except Exception as exc:  # the tool's own bug or a bad input it could not handle
            raise ToolExecutionError(f"{type(exc).__name__}: {exc}") from exc

    async def _call(self, selected: Tool, call: ToolCall) -> Any:
        if selected.inline:  # cannot be interrupted; a deadline would only add overhead
            return await selected(**call.arguments)
        deadline = asyncio.timeout(self.timeout_s)
        try:
            async with deadline:
                return await selected(**call.arguments)
        except TimeoutError:
            if not deadline.expired():  # a TimeoutError raised by the tool itself
                raise
            raise ToolTimeoutError(f"{call.name!r} timed out after {self.timeout_s:g}s") from None
