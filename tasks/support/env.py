"""agentgym/Support-v0: explain a back-office record to a customer; a judge grades the reply.

The customer writes about an order. The model looks the order up (``lookup_order``), reads what
its internal codes mean (``lookup_code``) and replies in plain words. There is no string to
match: the natural reward is verbal. A judge model checks the reply against five criteria
(:data:`CRITERIA`), with the record-based reference reply and the whole transcript in view;
the score is the share of criteria met. Before any judge call a verifiable gate gives 0 to an
episode that never looked up the customer's order or ends without a reply (no judge is paid
to read those, and no policy can be credited for a reply it did not ground in the record).

The judge endpoint is an argument (``judge={"base_url": ..., "model": ...}``, the keys of a
``kind: judge`` term of a ``rewards:`` section), or a ``rewards:`` judge term named
``resolution`` without a rubric. Without one, an episode that passes the gate is recorded
with a JudgeError that says how to give one (never a 0). See README.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from agentgym.env import AgentEnv
from agentgym.errors import JudgeError, ToolArgumentError
from agentgym.policy import Policy, SamplingParams
from agentgym.rewards import Criterion, JudgeReward, Reward, Rubric
from agentgym.rewards.config import judge_client
from agentgym.rewards.verbal import load_prompt, parse_criteria
from agentgym.tasks.support.data import CODES, split_cases
from agentgym.tools import tool
from agentgym.types import Split, Task, Trajectory

__all__ = ["CRITERIA", "SupportEnv"]

SYSTEM_PROMPT = (
    "You are a customer support agent for an online shop. Look up the customer's order with "
    "lookup_order, and look up any status code you do not know with lookup_code. Then reply "
    "to the customer in plain, friendly words: what happened, the date or amount they asked "
    "about, and what happens next. Never show internal codes or field names."
)

CRITERIA: tuple[Criterion, ...] = (
    Criterion("The reply states what happened to the order correctly, as the looked-up record "
              "and the reference reply say (no wrong status, date or amount).", 2.0),
    Criterion("The reply answers the question the customer actually asked (the date, amount "
              "or reason they wanted)."),
    Criterion("The reply is in plain language: no internal status codes, field names, raw "
              "timestamps or JSON."),
    Criterion("The reply tells the customer what happens next or what they can do, when the "
              "record says so."),
    Criterion("The reply is courteous and concise (under about 120 words) and invents nothing "
              "that is not in the record."),
)
"""What the judge checks; the score is the weighted share of YES verdicts."""

SPLIT_SIZES: dict[str, int] = {"train": 2000, "eval": 200}


def _order_id(text: str) -> str:
    return text.strip().lstrip("#").upper()


def looked_up(trajectory: Trajectory, task: Task) -> float:
    """1.0 if ``lookup_order`` returned the task's order (a logged metric, and the gate)."""
    wanted = task.metadata["order_id"]
    return float(any(call.name == "lookup_order" and result.error_type is None
                     and _order_id(str(call.arguments.get("order_id", ""))) == wanted
                     for turn in trajectory.turns
                     for call, result in zip(turn.tool_calls, turn.tool_results, strict=True)))


def facts_covered(trajectory: Trajectory, task: Task) -> float:
    """Share of the task's key facts (dates, amounts) found in the final reply (logged)."""
    facts = task.metadata["facts"]
    reply = trajectory.final_text.lower()
    return sum(fact.lower() in reply for fact in facts) / len(facts)


def jargon(trajectory: Trajectory, task: Task) -> float:
    """Internal codes and field names that leaked into the final reply (logged)."""
    reply = trajectory.final_text
    names = [*task.metadata["codes"], "order_id", "eta_revised", "rfd_amount", "dlv_", "exc_"]
    return float(sum(name.lower() in reply.lower() for name in names))


def num_turns(trajectory: Trajectory, task: Task) -> float:
    """Number of assistant turns (a logged metric)."""
    return float(len(trajectory.turns))


def replied(trajectory: Trajectory) -> bool:
    """The episode ended with a non-empty reply that calls no tool."""
    final = trajectory.final_message or {}
    return trajectory.terminated and bool(trajectory.final_text.strip()) \
        and not final.get("tool_calls") and "<tool_call>" not in trajectory.final_text


class GatedJudge:
    """The ``resolution`` reward: 0 without a lookup of the right order or a final reply;
    otherwise the judge's weighted share of :data:`CRITERIA` met.

    Args:
        judge: the judge policy (a :class:`~agentgym.rewards.verbal.JudgeClient`), or None:
            then a gated-in episode raises a JudgeError that says how to configure one.
    """

    def __init__(self, judge: Policy | None):
        listing = "\n".join(f"{k}. {c.text}" for k, c in enumerate(CRITERIA, 1))
        self.judge = None if judge is None else JudgeReward(
            judge, prompt=load_prompt("criteria"),
            mapping=lambda critique: parse_criteria(critique, CRITERIA),
            sampling=SamplingParams(temperature=0.0, max_tokens=768),
            fields={"criteria": listing})

    async def __call__(self, trajectory: Trajectory, task: Task) -> float:
        if not (looked_up(trajectory, task) and replied(trajectory)):
            return 0.0
        if self.judge is None:
            raise JudgeError(
                f"{trajectory.env_id} needs a judge: make(..., judge={{'base_url': URL, "
                "'model': NAME}) (env_kwargs in a training config, --env-kwargs in eval), or "
                "a rewards: term {kind: judge, name: resolution, base_url: URL, model: NAME}")
        return await self.judge(trajectory, task)


class SupportEnv(AgentEnv):
    """agentgym/Support-v0 (see the module docstring and README.md).

    Args:
        judge: the judge endpoint, as the keys of a ``kind: judge`` rewards term
            (``base_url``, ``model``, ``api_key_env`` or ``engine: hf``, ``max_concurrent``,
            ``timeout_s``...), or a ready policy; None: configure it through ``rewards:``.
        num_tasks: cap on tasks per split (default: all of ``SPLIT_SIZES``).
        **kwargs: :class:`~agentgym.env.AgentEnv` budgets (default ``max_turns=4``).
    """

    family = "support"
    reward_kind = "verbal"

    def __init__(self, *, judge: Mapping[str, Any] | Policy | None = None,
                 num_tasks: int | None = None, max_turns: int = 4, **kwargs: Any):
        self.judge = judge_client(judge) if isinstance(judge, Mapping) else judge
        self.num_tasks = num_tasks
        self._order_book: dict[str, Any] | None = None
        super().__init__(max_turns=max_turns, **kwargs)

    @classmethod
    def split_sizes(cls) -> dict[str, int]:
        """Tasks per split, without building them."""
        return dict(SPLIT_SIZES)

    def load_tasks(self, split: Split) -> list[Task]:
        count = min(SPLIT_SIZES[split], self.num_tasks or SPLIT_SIZES[split])
        cases = split_cases(split, count, SPLIT_SIZES["train"])
        return [Task(
            id=f"support-{split}-{i}", split=split, answer=case.reference,
            prompt=({"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": case.question}),
            metadata={"order_id": case.order["order_id"], "order": case.order,
                      "facts": list(case.facts), "codes": list(case.codes), "kind": case.kind})
            for i, case in enumerate(cases)]

    def _orders(self) -> dict[str, Any]:
        """The back office: every order of this env's split, by id."""
        if self._order_book is None:
            self._order_book = {t.metadata["order_id"]: t.metadata["order"] for t in self.tasks}
        return self._order_book

    def judge_reward(self, judge: Policy) -> GatedJudge:
        """This env's judged reward with ``judge`` (what a ``rewards:`` judge term without a
        rubric uses)."""
        return GatedJudge(judge)

    @property
    def rubric(self) -> Rubric:
        return Rubric([Reward("resolution", GatedJudge(self.judge), 1.0),
                       Reward("looked_up", looked_up, 0.0),
                       Reward("facts_covered", facts_covered, 0.0),
                       Reward("jargon", jargon, 0.0),
                       Reward("turns", num_turns, 0.0)])

    @tool
    def lookup_order(self, order_id: str) -> str:
        """Look up an order in the back office; returns its record as JSON.

        Args:
            order_id: the order id the customer gave, e.g. "K48213".
        """
        order = self._orders().get(_order_id(order_id))
        if order is None:
            raise ToolArgumentError(f"no order {order_id!r} (ids look like 'K48213')")
        return json.dumps(order, indent=1)

    @tool
    def lookup_code(self, code: str) -> str:
        """Look up what an internal status code means, e.g. "EXC_WEATHER_HOLD".

        Args:
            code: the code as the record writes it.
        """
        meaning = CODES.get(code.strip().upper())
        if meaning is None:
            raise ToolArgumentError(f"unknown code {code!r}")
        return meaning
