"""Every exception agentgym raises, in one place.

Failures are classified where they happen, so that whoever catches them (the rollout engine, the
trainer, ``agentgym eval``) can decide without guessing. Each class carries ``blame``:

* ``"model"``  -- the policy did something wrong (malformed tool call, unknown tool, bad
  arguments, code that crashed). These become observations the model sees and learns from;
  they never end an episode by themselves.
* ``"infra"``  -- something outside the model failed (sandbox, policy server, judge, timeout of
  our own machinery). A trajectory with an infra error is recorded as data and excluded from
  training; it is never scored 0.
* ``"user"``   -- the caller misused the library (unknown env id, step before reset, a bad
  ``@tool`` definition). Raised straight to the caller with a message that says how to fix it.

A failure that is recorded rather than raised (on a trajectory, in an env's ``info``, in a row of
an eval run) is an :class:`ErrorRecord`, built by one constructor,
:meth:`ErrorRecord.from_exception`. Code that needs a detail (who is to blame, the HTTP status)
reads a field of the record; nobody parses the message back.

The tree::

    AgentGymError
    ├── RegistryError                      user
    │   ├── UnknownEnvError                user   (names the closest registered ids)
    │   └── EntryPointError                user   (a "module:Class" that does not import)
    ├── EnvError                           user
    │   ├── ResetNeededError               user   (step before reset / after the episode ended)
    │   └── InvalidActionError             user   (an action that is not an assistant message)
    ├── ToolError                          model
    │   ├── ToolDefinitionError            user   (a function @tool cannot describe)
    │   ├── ToolParseError                 model  (bad JSON, no name, not an object)
    │   ├── UnknownToolError               model
    │   ├── ToolArgumentError              model  (missing / extra / wrong-typed arguments)
    │   └── ToolExecutionError             model  (the tool raised something else)
    ├── SandboxError                       infra
    │   ├── SandboxUnavailableError        infra  (no engine, no permission, no image)
    │   └── SandboxCrashedError            infra  (container or runner died)
    ├── PolicyError                        infra
    │   ├── PolicyConnectionError          infra  (cannot reach the server)
    │   ├── PolicyHTTPError                infra  (non-2xx answer; carries the status)
    │   │   └── ContextWindowError         model  (the chat outgrew the model's window:
    │   │                                          the rollout ends the episode as truncated)
    │   ├── TokenizationDriftError         infra  (chat template rewrote earlier turns)
    │   └── GuideError                     infra  (an exploration guide proposed no turn)
    ├── RewardError                        infra
    │   └── JudgeError                     infra  (judge call failed or reply unparseable)
    ├── WorkerLostError                    infra  (a Ray env worker died mid-episode)
    ├── EnvServerError                     infra  (an env served over HTTP failed, could not
    │                                              be reached, or its session expired)
    ├── ToolServerError                    infra  (an MCP tool server is down, slow or died)
    ├── SimulatorError                     infra  (a world model gave no usable tool result)
    └── AgentGymTimeoutError (TimeoutError) infra
        ├── ToolTimeoutError               model  (the model's code ran past its deadline)
        ├── AcquireTimeoutError            infra  (no sandbox free in time)
        ├── EpisodeTimeoutError            infra
        └── SyncTimeoutError               infra  (weight sync missed its deadline)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

Blame = Literal["model", "infra", "user"]

__all__ = [
    "AcquireTimeoutError",
    "AgentGymError",
    "AgentGymTimeoutError",
    "Blame",
    "ContextWindowError",
    "EntryPointError",
    "EnvError",
    "EnvServerError",
    "EpisodeTimeoutError",
    "GuideError",
    "ErrorRecord",
    "InvalidActionError",
    "JudgeError",
    "PolicyConnectionError",
    "PolicyError",
    "PolicyHTTPError",
    "RegistryError",
    "ResetNeededError",
    "RewardError",
    "SandboxCrashedError",
    "SandboxError",
    "SandboxUnavailableError",
    "SimulatorError",
    "SyncTimeoutError",
    "TokenizationDriftError",
    "ToolArgumentError",
    "ToolDefinitionError",
    "ToolError",
    "ToolExecutionError",
    "ToolParseError",
    "ToolServerError",
    "ToolTimeoutError",
    "UnknownEnvError",
    "UnknownToolError",
    "WorkerLostError",
]


class AgentGymError(Exception):
    """Base class of every agentgym error. ``blame`` says who caused it (see module docs).

    Attributes:
        status_code: the HTTP status of the answer that caused the error, for errors that come
            from one (:class:`PolicyHTTPError`); None otherwise.
    """

    blame: ClassVar[Blame] = "infra"
    status_code: int | None = None


@dataclass(frozen=True)
class ErrorRecord:
    """A failure kept as data: on a trajectory, in an env's ``info``, in an eval results row.

    Build one with :meth:`from_exception` where the failure is caught; store it with
    :meth:`to_dict` and read it back with :meth:`from_dict`.

    Attributes:
        type: the exception's class name, e.g. ``"PolicyHTTPError"``.
        blame: ``"model"``, ``"infra"`` or ``"user"`` (module docs); an exception that is not an
            :class:`AgentGymError` (a bug in a tool or env) is ``"infra"``.
        message: the exception's message.
        status_code: the HTTP status when the exception carried one, else None.
    """

    type: str
    blame: Blame
    message: str
    status_code: int | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorRecord:
        """The record of ``exc``: its class name, blame, message and HTTP status."""
        if isinstance(exc, AgentGymError):
            return cls(type(exc).__name__, exc.blame, str(exc), exc.status_code)
        return cls(type(exc).__name__, "infra", str(exc))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict with every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorRecord:
        """Read :meth:`to_dict` output back; dicts written before ``status_code`` existed (only
        ``type``, ``blame`` and ``message``) load with ``status_code=None``."""
        status = data.get("status_code")
        return cls(type=str(data["type"]), blame=data.get("blame", "infra"),
                   message=str(data.get("message", "")),
                   status_code=None if status is None else int(status))


# --- registry -------------------------------------------------------------------------------


class RegistryError(AgentGymError):
    """Registering, looking up or instantiating an environment failed."""

    blame = "user"


class UnknownEnvError(RegistryError, KeyError):
    """No environment is registered under the requested id.

    Attributes:
        env_id: the id that was asked for.
        suggestions: registered ids that look close to it, best first.
    """

    def __init__(self, env_id: str, suggestions: list[str]):
        self.env_id = env_id
        self.suggestions = suggestions
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"No environment registered as {env_id!r}.{hint}")

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return str(self.args[0])


class EntryPointError(RegistryError):
    """An entry point ``"module:attr"`` could not be imported or is not callable."""


# --- environments ---------------------------------------------------------------------------


class EnvError(AgentGymError):
    """An environment was driven outside its contract."""

    blame = "user"


class ResetNeededError(EnvError):
    """``step`` was called before ``reset`` or after the episode ended."""


class InvalidActionError(EnvError, TypeError):
    """The action is not an assistant message (a string or a dict with content/tool_calls)."""


# --- tools ----------------------------------------------------------------------------------


class ToolError(AgentGymError):
    """A tool call went wrong. Model-caused ones are shown to the model as a tool message."""

    blame = "model"


class ToolDefinitionError(ToolError, TypeError):
    """``@tool`` cannot build a schema for a function (missing hint, unsupported type)."""

    blame = "user"


class ToolParseError(ToolError):
    """The model's tool call could not be parsed (bad JSON, no name, arguments not an object)."""


class UnknownToolError(ToolError):
    """The model called a tool that this environment does not offer."""


class ToolArgumentError(ToolError):
    """The arguments do not match the tool's schema (missing, extra or wrong-typed)."""


class ToolExecutionError(ToolError):
    """The tool itself raised (anything but an agentgym error) while running a well-formed call.

    :class:`~agentgym.tools.ToolBox` raises it from the tool's exception, so the model sees the
    original class name and message.
    """


# --- sandboxes ------------------------------------------------------------------------------


class SandboxError(AgentGymError):
    """The code sandbox failed (not the code inside it: that is an ExecResult)."""


class SandboxUnavailableError(SandboxError):
    """No usable sandbox backend: engine not running, no permission, or image missing."""


class SandboxCrashedError(SandboxError):
    """A sandbox container or its runner died and could not serve the call."""


# --- policies -------------------------------------------------------------------------------


class PolicyError(AgentGymError):
    """The policy (model server or embedded engine) failed to produce a completion."""


class PolicyConnectionError(PolicyError):
    """The policy server could not be reached."""


class PolicyHTTPError(PolicyError):
    """The policy server answered with a non-2xx status (kept in ``status_code``)."""

    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code


class ContextWindowError(PolicyHTTPError):
    """The prompt no longer fits the model's context window (vLLM answers 400).

    A property of the episode, not a broken server: the rollout engine ends the episode as
    truncated (a context budget) and scores what happened.

    Attributes:
        max_model_len: the model's window in tokens, when the server said it.
    """

    blame = "model"

    def __init__(self, message: str, status_code: int = 400, max_model_len: int | None = None):
        super().__init__(message, status_code)
        self.max_model_len = max_model_len


class TokenizationDriftError(PolicyError):
    """The chat template re-rendered earlier turns differently, so token ids no longer line up."""


# --- rewards --------------------------------------------------------------------------------


class RewardError(AgentGymError):
    """A reward function could not score a trajectory (never turned into a silent 0)."""


class JudgeError(RewardError):
    """A judge model call failed or its reply could not be mapped to a score."""


# --- distributed rollouts -------------------------------------------------------------------


class WorkerLostError(AgentGymError):
    """The env worker (a Ray actor) playing an episode died or became unreachable; the
    episode is resampled on another worker (see :mod:`agentgym.ray_rollout`)."""


class EnvServerError(AgentGymError):
    """An environment played over HTTP (the OpenEnv protocol, :mod:`agentgym.interop`) failed:
    the server could not be reached, answered with an error, or closed the idle session."""


class ToolServerError(AgentGymError):
    """An MCP tool server (:mod:`agentgym.interop.mcp_tools`) is unreachable, did not answer in
    time, or died."""


class SimulatorError(AgentGymError):
    """The world model (:mod:`agentgym.world_model`) gave no usable prediction (endpoint down,
    deadline, empty reply): the episode is recorded with this error, never with a fake tool
    result."""


class GuideError(PolicyError):
    """The exploration guide (:mod:`agentgym.guided`) could not propose a turn: an infra failure
    of the episode, not a 0."""


# --- timeouts -------------------------------------------------------------------------------


class AgentGymTimeoutError(AgentGymError, TimeoutError):
    """A deadline passed."""


class ToolTimeoutError(AgentGymTimeoutError):
    """A tool call (e.g. the model's code) ran past its deadline. The model sees this."""

    blame = "model"


class AcquireTimeoutError(AgentGymTimeoutError):
    """No sandbox became free within the acquire timeout."""


class EpisodeTimeoutError(AgentGymTimeoutError):
    """An episode ran past its wall-clock deadline."""


class SyncTimeoutError(AgentGymTimeoutError):
    """A weight sync to the policy server missed its deadline."""
