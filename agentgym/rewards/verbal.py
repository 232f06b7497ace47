"""Verbal rewards: a judge model writes a critique of the episode, and a mapping turns it into
a score.

Following "RL from verbal rewards", the reward is ``r = g(s, a, s', f)``: the judge sees the task
(s), the assistant's actions and tool results (a, s') and writes a natural-language critique
``f``; ``g`` maps the critique to a number. Three mappings ship:

* :func:`parse_grade` -- the critique ends in ``GRADE: N/M``; the score is N/M.
* :func:`parse_criteria` -- one ``CRITERION k: YES|NO`` verdict per rubric criterion; the score
  is the weighted share of YES. With principles as criteria this is constitutional / RLAIF
  judging (:func:`constitutional_reward`).
* :func:`parse_probability` -- the critique ends in ``PROBABILITY: p`` (a judged probability of
  success, also used as a progress estimate for potential-based shaping).

A judge call that fails, or a reply the mapping cannot read, raises
:class:`~agentgym.errors.JudgeError`: the trajectory is recorded as an error, never scored 0.
The prompts are the Markdown files in ``prompts/`` next to this module.

:class:`JudgeClient` wraps a judge policy for use at scale: at most ``max_concurrent`` calls in
flight, a deadline per call, and one call per distinct request (identical prompts, e.g. G equal
replies in a GRPO group, share the first call's answer; a failed call is not cached).
``agentgym.rewards.config`` builds one per judge term of a ``rewards:`` section.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from agentgym.errors import AgentGymError, JudgeError
from agentgym.policy import Completion, Policy, SamplingParams
from agentgym.types import Task, Trajectory

__all__ = ["DEFAULT_RUBRIC", "Criterion", "JudgeClient", "JudgeReward", "constitutional_reward",
           "load_prompt", "parse_criteria", "parse_grade", "parse_probability",
           "render_transcript"]

logger = logging.getLogger(__name__)

DEFAULT_RUBRIC = ("Judge whether the final answer is correct and complete, and whether the "
                  "tools were used sensibly.")
"""The ``{rubric}`` of the grade prompt when the caller gives none."""

_GRADE = re.compile(r"GRADE\s*:\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_VERDICT = re.compile(r"CRITERION\s+(\d+)\s*:\s*(YES|NO)\b", re.IGNORECASE)
_PROBABILITY = re.compile(r"PROBABILITY\s*:\s*([01](?:\.\d+)?|\.\d+)", re.IGNORECASE)


def load_prompt(name: str) -> str:
    """The judge prompt template ``prompts/<name>.md``."""
    return resources.files("agentgym.rewards").joinpath(f"prompts/{name}.md").read_text("utf-8")


def render_transcript(messages: Sequence[Mapping[str, Any]], max_chars: int = 12000) -> str:
    """The episode as plain text for a judge (tool calls and results included).

    Long transcripts keep their start and end (the task and the final answer matter most).
    """
    lines = []
    for message in messages:
        role = message.get("role", "?")
        if role == "system":
            continue
        label = f"tool {message.get('name', '')}".strip() if role == "tool" else role
        text = message.get("content") or ""
        for call in message.get("tool_calls") or []:
            function = call.get("function", call)
            text += f"\n[calls {function.get('name')}({function.get('arguments')})]"
        lines.append(f"[{label}] {text.strip()}")
    transcript = "\n".join(lines)
    if len(transcript) > max_chars:
        half = max_chars // 2
        transcript = transcript[:half] + "\n[... transcript shortened ...]\n" + transcript[-half:]
    return transcript


def parse_grade(critique: str) -> float:
    """Score from the last ``GRADE: N/M`` line, in [0, 1]."""
    matches = _GRADE.findall(critique)
    if not matches:
        raise JudgeError("the judge's reply has no 'GRADE: N/M' line")
    value, scale = (float(x) for x in matches[-1])
    if scale <= 0 or not 0 <= value <= scale:
        raise JudgeError(f"grade {value:g}/{scale:g} is out of range")
    return value / scale


def parse_probability(critique: str) -> float:
    """Score from the last ``PROBABILITY: p`` line, in [0, 1]."""
    matches = _PROBABILITY.findall(critique)
    if not matches:
        raise JudgeError("the judge's reply has no 'PROBABILITY: p' line")
    value = float(matches[-1])
    if not 0 <= value <= 1:
        raise JudgeError(f"probability {value:g} is outside [0, 1]")
    return value


@dataclass(frozen=True)
class Criterion:
    """One judged criterion (or constitutional principle) and its weight."""

    text: str
    weight: float = 1.0


def parse_criteria(critique: str, criteria: Sequence[Criterion]) -> float:
    """Weighted share of ``CRITERION k: YES`` verdicts; every criterion needs a verdict."""
    verdicts: dict[int, bool] = {}
    for number, verdict in _VERDICT.findall(critique):
        verdicts[int(number)] = verdict.upper() == "YES"  # the last verdict per criterion wins
    missing = [k for k in range(1, len(criteria) + 1) if k not in verdicts]
    if missing:
        raise JudgeError(f"the judge gave no verdict for criteria {missing}")
    total = sum(c.weight for c in criteria)
    if total <= 0:
        raise JudgeError("criteria weights must sum to a positive number")
    return sum(c.weight for k, c in enumerate(criteria, 1) if verdicts[k]) / total


class JudgeReward:
    """A reward function (``await fn(trajectory, task)``) backed by a judge model.

    Args:
        judge: any policy (an OpenAI-compatible endpoint, the embedded engine...).
        prompt: a template with ``{task}``, ``{reference}``, ``{transcript}`` (and ``{scale}``
            or ``{criteria}``); default: the ``grade`` prompt.
        mapping: critique -> score; default :func:`parse_grade`.
        sampling: judge sampling (default greedy, 768 tokens).
        fields: extra template fields.

    Attributes:
        last_critique: the most recent critique (for logging).
    """

    def __init__(self, judge: Policy, *, prompt: str | None = None,
                 mapping: Callable[[str], float] = parse_grade,
                 sampling: SamplingParams | None = None, fields: Mapping[str, str] | None = None):
        self.judge, self.mapping = judge, mapping
        self.template = prompt if prompt is not None else load_prompt("grade")
        self.sampling = sampling or SamplingParams(temperature=0.0, max_tokens=768)
        self.fields = {"scale": "10", "rubric": DEFAULT_RUBRIC, **(fields or {})}
        self.last_critique: str | None = None

    def build_prompt(self, trajectory: Trajectory, task: Task) -> str:
        """The judge's user message for this episode."""
        question = "\n".join(str(m.get("content") or "") for m in task.prompt
                             if m.get("role") == "user")
        reference = "(none)" if task.answer is None else str(task.answer)
        return self.template.format(task=question, reference=reference,
                                    transcript=render_transcript(trajectory.messages),
                                    **self.fields)

    async def critique(self, trajectory: Trajectory, task: Task) -> str:
        """The judge's critique of the episode.

        Raises:
            JudgeError: the judge call failed or returned nothing.
        """
        messages = [{"role": "user", "content": self.build_prompt(trajectory, task)}]
        try:
            completions = await self.judge.generate(messages, None, self.sampling)
        except JudgeError:
            raise
        except AgentGymError as exc:
            raise JudgeError(f"judge call failed: {type(exc).__name__}: {exc}") from exc
        if not completions or not completions[0].text.strip():
            raise JudgeError("the judge returned an empty reply")
        self.last_critique = completions[0].text
        return completions[0].text

    async def __call__(self, trajectory: Trajectory, task: Task) -> float:
        return self.mapping(await self.critique(trajectory, task))


def constitutional_reward(judge: Policy, principles: Sequence[Criterion | str],
                          sampling: SamplingParams | None = None) -> JudgeReward:
    """RLAIF: the judge checks the episode against weighted principles (criteria verdicts)."""
    criteria = [p if isinstance(p, Criterion) else Criterion(p) for p in principles]
    listing = "\n".join(f"{k}. {c.text}" for k, c in enumerate(criteria, 1))
    return JudgeReward(judge, prompt=load_prompt("criteria"),
                       mapping=lambda critique: parse_criteria(critique, criteria),
                       sampling=sampling, fields={"criteria": listing})


class JudgeClient:
    """A judge policy with bounded concurrency, a deadline per call and a request cache.

    It is itself a :class:`~agentgym.policy.Policy`, so :class:`JudgeReward` takes it as is.

    * Concurrency: at most ``max_concurrent`` calls in flight per event loop (the rollout engine
      runs every episode of a process on one loop, so that is the process's bound).
    * Deadline: a call (retries included) that takes longer than ``timeout_s`` raises
      :class:`~agentgym.errors.JudgeError`.
    * Cache: identical requests (same messages, tools and sampling) are sent once; callers that
      ask while the first call is in flight wait for it. Answers are kept (LRU, ``cache_size``);
      failures are not, so a later identical request tries again.

    Args:
        make_policy: builds the underlying policy (an ``OpenAIPolicy``, the embedded engine).
            Called once per event loop, because HTTP connection pools belong to one loop.
        max_concurrent: calls in flight at once.
        timeout_s: deadline of one call, in seconds.
        cache_size: answers kept (0 turns the cache off, in-flight sharing stays).
        label: how errors name this judge (e.g. its URL and model).

    Attributes:
        calls: requests sent to the underlying policy (cache misses).
        hits: requests answered from the cache or by sharing an in-flight call.
    """

    def __init__(self, make_policy: Callable[[], Policy], *, max_concurrent: int = 8,
                 timeout_s: float = 120.0, cache_size: int = 4096, label: str = "judge"):
        if max_concurrent < 1 or timeout_s <= 0 or cache_size < 0:
            raise ValueError("max_concurrent >= 1, timeout_s > 0 and cache_size >= 0 required")
        self.make_policy, self.label = make_policy, label
        self.max_concurrent, self.timeout_s, self.cache_size = max_concurrent, timeout_s, cache_size
        self.calls = self.hits = 0
        self._answers: OrderedDict[str, tuple[Completion, ...]] = OrderedDict()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = \
            weakref.WeakKeyDictionary()

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState(self.make_policy(),
                                                   asyncio.Semaphore(self.max_concurrent))
        return state

    async def generate(self, messages: Sequence[Mapping[str, Any]],
                       tools: Sequence[Mapping[str, Any]] | None,
                       sampling: SamplingParams) -> list[Completion]:
        """The judge's completions for this request (cached; see the class docs).

        Raises:
            JudgeError: the call failed or ran past ``timeout_s``.
        """
        key = json.dumps([list(messages), tools, asdict(sampling)], sort_keys=True, default=str)
        if key in self._answers:
            self._answers.move_to_end(key)
            self.hits += 1
            return list(self._answers[key])
        state = self._state()
        pending = state.in_flight.get(key)
        if pending is not None:
            self.hits += 1
            return list(await asyncio.shield(pending))
        task = asyncio.ensure_future(self._call(state, messages, tools, sampling))
        state.in_flight[key] = task
        try:
            answer = await asyncio.shield(task)
        finally:
            state.in_flight.pop(key, None)
        if self.cache_size:
            self._answers[key] = answer
            while len(self._answers) > self.cache_size:
                self._answers.popitem(last=False)
        return list(answer)

    async def _call(self, state: _LoopState, messages: Sequence[Mapping[str, Any]],
                    tools: Sequence[Mapping[str, Any]] | None,
                    sampling: SamplingParams) -> tuple[Completion, ...]:
        async with state.semaphore:
            self.calls += 1
            try:
                async with asyncio.timeout(self.timeout_s):
                    return tuple(await state.policy.generate(messages, tools, sampling))
            except TimeoutError:
                raise JudgeError(f"{self.label} gave no answer within {self.timeout_s:g} s"
                                 ) from None
            except AgentGymError as exc:
                raise JudgeError(f"{self.label} failed: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        """Close the underlying policy of the running loop (idempotent)."""
        state = self._loops.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state.policy.aclose()


@dataclass
class _LoopState:
    """What a :class:`JudgeClient` keeps per event loop."""

    policy: Policy
    semaphore: asyncio.Semaphore
    in_flight: dict[str, asyncio.Future[tuple[Completion, ...]]] = field(default_factory=dict)
