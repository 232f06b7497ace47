"""An LLM as a world model of an environment's tools: ``p(s_{t+1} | s_t, a_t) = f_LLM(s_t, a_t)``.

A tool call is the action a_t; its result is the part of the next state the world decides. The
simulator asks a model to predict that result from the tool's schema, the call and the episode
so far, instead of running the tool::

    env = agentgym.make("agentgym/Calculator-v0",
                        simulate_tools={"base_url": "http://127.0.0.1:8001/v1", "model": "m"})
    env = agentgym.make("agentgym/Calculator-v0", simulate_tools={"engine": "hf"})  # SmolLM2

``simulate_tools`` takes the endpoint keys of a judge (:mod:`agentgym.rewards.config`:
``base_url``/``model``/``api_key_env`` or ``engine: hf``, ``max_concurrent``, ``timeout_s``,
``max_retries``, ``cache_size``) plus ``max_tokens`` (prediction length, default 256) and
``history_chars`` (how much of the episode the prompt carries, default 6000). Predictions are
greedy, so identical requests are answered once (the judge client's cache).

What stays real: the env's tasks, prompts, turn/token budgets, the tool schemas and their
argument validation (a call with bad arguments is still rejected, as the real env would), and the
reward, computed by the env's own rubric on the simulated episode. Envs whose reward reads the
answer (Calculator, Math, Search) score simulated episodes meaningfully; envs whose reward reads
the world's end state (HttpAPI's shop) do not, because nothing changed the real world.

Marking: a simulated env's ``info`` carries ``simulated: True`` and its rubric logs a weight-0
component ``simulated = 1.0``, so every trajectory, results row and eval summary of a simulated
episode says so. A failed or empty prediction raises :class:`SimulatorError` (blamed on infra):
the episode becomes an error record, never a made-up tool result.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agentgym.env import AgentEnv
from agentgym.errors import AgentGymError, SimulatorError
from agentgym.policy import Policy, SamplingParams
from agentgym.rewards.config import judge_client
from agentgym.rewards.rubric import Reward, Rubric
from agentgym.rewards.verbal import render_transcript
from agentgym.tools import Tool, ToolBox
from agentgym.types import Task, ToolCall, Trajectory

__all__ = ["SIMULATED_COMPONENT", "SimulatedToolBox", "SimulatorError", "ToolSimulator",
           "simulate_tools"]

SIMULATED_COMPONENT = "simulated"
"""The weight-0 reward component that marks a simulated episode (value 1.0)."""

_OWN_KEYS = ("max_tokens", "history_chars")

SYSTEM_PROMPT = (
    "You are a simulator of a software tool. Given the tool's JSON schema, the conversation so "
    "far and one call of the tool, predict exactly what the tool returns. Reply with the tool's "
    "output only: no explanation, no quotes, no code fences.")


class ToolSimulator:
    """Predicts tool results with a model.

    Args:
        model: the predicting policy (a :class:`~agentgym.rewards.verbal.JudgeClient` or any
            :class:`~agentgym.policy.Policy`).
        max_tokens: prediction length cap.
        history_chars: the episode transcript in the prompt is cut to this many characters.
        label: how errors name the simulator.
    """

    def __init__(self, model: Policy, *, max_tokens: int = 256, history_chars: int = 6000,
                 label: str = "tool simulator"):
        if max_tokens < 1 or history_chars < 200:
            raise ValueError("simulate_tools: max_tokens >= 1 and history_chars >= 200 required")
        self.model, self.label = model, label
        self.sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        self.history_chars = history_chars
        self.settings: dict[str, Any] = {}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | ToolSimulator) -> ToolSimulator:
        """A simulator from ``simulate_tools=`` settings (see the module docstring).

        Raises:
            ValueError: an unknown key (with the closest one), a missing endpoint, a bad number.
        """
        if isinstance(settings, ToolSimulator):
            return settings
        if not isinstance(settings, Mapping):
            raise ValueError("simulate_tools: expected a mapping like {base_url: ..., model: ...} "
                             f"or {{engine: hf}}, got {type(settings).__name__}")
        own = {k: settings[k] for k in _OWN_KEYS if k in settings}
        for key, value in own.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"simulate_tools: {key} must be an integer, got {value!r}")
        endpoint = {k: v for k, v in settings.items() if k not in _OWN_KEYS}
        client = judge_client(endpoint, where="simulate_tools")
        simulator = cls(client, label=client.label.replace("judge", "tool simulator", 1), **own)
        simulator.settings = dict(settings)
        return simulator

    def build_messages(self, schema: Mapping[str, Any], call: ToolCall,
                       history: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
        """The prompt: the tool's schema, the episode so far and the call to answer."""
        user = (f"Tool schema:\n{json.dumps(schema.get('function', schema), sort_keys=True)}\n\n"
                f"Conversation so far:\n{render_transcript(history, self.history_chars)}\n\n"
                f"Call: {call.name}({json.dumps(dict(call.arguments), sort_keys=True)})\n\n"
                "The tool's output:")
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    async def predict(self, schema: Mapping[str, Any], call: ToolCall,
                      history: Sequence[Mapping[str, Any]]) -> str:
        """The predicted output of ``call``.

        Raises:
            SimulatorError: the model failed, ran past its deadline, or answered nothing.
        """
        try:
            completions = await self.model.generate(
                self.build_messages(schema, call, history), None, self.sampling)
        except AgentGymError as exc:
            raise SimulatorError(f"{self.label} failed on {call.name!r}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        text = completions[0].text.strip() if completions else ""
        if not text:
            raise SimulatorError(f"{self.label} returned an empty prediction for {call.name!r}")
        return _strip_fences(text)


def _strip_fences(text: str) -> str:
    """The prediction without a surrounding Markdown code fence (small models add one)."""
    if text.startswith("```") and text.endswith("```") and len(text) > 6:
        body = text[3:-3]
        first, _, rest = body.partition("\n")
        return (rest if first.strip().isalnum() or not first.strip() else body).strip()
    return text


class SimulatedToolBox(ToolBox):
    """A :class:`~agentgym.tools.ToolBox` whose calls are answered by a :class:`ToolSimulator`.

    Parsing, unknown tools and argument validation work as in the real toolbox (they are the
    interface, not the world); only running the tool is replaced by a prediction. The env's
    tool timeout does not apply (the simulator has its own deadline, and a timeout must not
    reach the model as a tool error).

    Args:
        tools: the episode's tools (for names and schemas; never run).
        simulator: the world model.
        history: returns the episode's messages so far (the env's chat).
        **kwargs: :class:`~agentgym.tools.ToolBox` settings (output cap).
    """

    def __init__(self, tools: Sequence[Tool], simulator: ToolSimulator,
                 history: Callable[[], Sequence[Mapping[str, Any]]], **kwargs: Any):
        super().__init__(tools, **kwargs)
        self.simulator, self.history = simulator, history

    async def _call(self, selected: Tool, call: ToolCall) -> Any:
        return await self.simulator.predict(selected.schema, call, self.history())


def _simulated(trajectory: Trajectory, task: Task) -> float:
    """1.0: the episode's tool results were predicted by a world model (a logged marker)."""
    return 1.0


_simulated_classes: dict[type, type] = {}


def _simulated_class(cls: type[AgentEnv]) -> type[AgentEnv]:
    """``cls`` whose episodes answer tool calls with the instance's ``tool_simulator``."""
    if cls in _simulated_classes:
        return _simulated_classes[cls]

    async def areset(self: Any, *, seed: int | None = None,
                     options: dict[str, Any] | None = None) -> Any:
        obs, info = await super(simulated, self).areset(seed=seed, options=options)
        real = self._toolbox
        self._toolbox = SimulatedToolBox(list(real.tools.values()), self.tool_simulator,
                                         lambda: self._messages, timeout_s=real.timeout_s,
                                         max_output_chars=real.max_output_chars)
        return obs, {**info, "simulated": True}

    def _info(self: Any) -> dict[str, Any]:
        return {**super(simulated, self)._info(), "simulated": True}

    def rubric(self: Any) -> Rubric:
        base = super(simulated, self).rubric
        return Rubric([*base.rewards, *base.group_rewards,
                       Reward(SIMULATED_COMPONENT, _simulated, 0.0)])

    simulated = type(cls.__name__, (cls,), {
        "areset": areset, "_info": _info,
        "rubric": property(rubric, doc="The env's rubric plus the weight-0 'simulated' mark."),
        "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})
    _simulated_classes[cls] = simulated
    return simulated


def simulate_tools(env: AgentEnv, settings: Mapping[str, Any] | ToolSimulator) -> AgentEnv:
    """Make ``env`` answer tool calls with a world model's predictions, in place; returns it.

    ``agentgym.make(id, simulate_tools=settings)`` calls this. See the module docstring for
    the settings, what stays real and how simulated episodes are marked.

    Raises:
        ValueError: invalid settings (the env is closed).
        TypeError: ``env`` is not an :class:`~agentgym.env.AgentEnv`.
    """
    if not isinstance(env, AgentEnv):
        raise TypeError(f"simulate_tools needs an AgentEnv, got {type(env).__name__}")
    try:
        simulator = ToolSimulator.from_settings(settings)
    except ValueError:
        env.close()
        raise
    if type(env) not in _simulated_classes.values():
        env.__class__ = _simulated_class(type(env))
    env.tool_simulator = simulator  # type: ignore[attr-defined]
    return env
