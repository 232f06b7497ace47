"""Rewards from configuration: a ``rewards:`` section that adds, reweights or replaces reward
terms on any registered environment, without a subclass.

The same list works in three places::

    agentgym.make("agentgym/Math-v0", rewards=[...])          # kwargs
    rewards: [...]                                            # training YAML (TrainerConfig)
    agentgym eval agentgym/Math-v0 ... --rewards rewards.yaml # eval (a list, or {rewards: [...]})

Each item is one term, ``{kind, name, weight, ...}``; ``name`` defaults to the kind and
``weight`` to 1 (0 logs the term without optimising it)::

    - kind: judge                  # a judge model writes a critique, mapped to a score
      base_url: http://127.0.0.1:8001/v1    # any OpenAI-compatible endpoint ...
      model: judge
      api_key_env: JUDGE_API_KEY            # ... (the variable's name, never the key)
      # engine: hf                          # ... or the embedded engine (model: smollm2)
      rubric: "Is the reply polite and correct?"   # a text -> GRADE: N/scale (prompts/grade.md)
      # rubric: [criterion, ...]           # a list -> one YES/NO verdict each (criteria.md)
      # constitution: [principle, ...]    # principles -> criteria verdicts (RLAIF)
      max_concurrent: 8                     # calls in flight; timeout_s: deadline per call
    - kind: confidence             # exp(mean logprob) of the final reply (needs logprobs)
    - kind: self_evaluation        # share of "Yes" when the policy judges its own answer
      samples: 4                   # the policy: base_url/engine keys, else the one trained
    - kind: shaping                # potential-based shaping F_t = gamma Phi(s_t+1) - Phi(s_t)
      potential: judge             # a judge's progress estimate (endpoint keys), or
      gamma: 1.0                   # "module:function" with function(messages, task) -> float
    - kind: env                    # the env's own terms, by name ("*" = every other one)
      name: exact_match
      weight: 0.5                  # reweight; weight 0 keeps it as a logged metric
      # drop: true                 # or remove it
    - kind: reward_model           # a trained Bradley-Terry reward model (r(x, y) of the episode)
      path: runs/rm/...            # its run folder (agentgym train --algorithm reward_model)

Rules: env terms not named keep their weights; a configured term whose name is an env term's
replaces it; names are unique. A ``judge`` term without ``rubric``/``constitution`` uses the
env's own judged reward (an env with ``judge_reward(judge)``, e.g. agentgym/Support-v0).
Every mistake (unknown kind or key, missing endpoint, bad weight, unknown env term) raises
``ValueError`` naming the item and the closest valid word.

Judges are :class:`~agentgym.rewards.verbal.JudgeClient` objects: bounded concurrency, a
deadline per call, one call per distinct prompt. A :class:`RewardsConfig` builds them once and
every env made with it shares them (``make`` with the same list reuses one config while envs
hold it). A failed judge is an error on the trajectory, never a 0.

**Per-turn shaping**: a ``shaping`` term is exactly
``Reward(name, potential_shaping(Phi, gamma), weight)`` (:mod:`agentgym.rewards.shaping`), the
object an env author would write. Its value, ``sum_t gamma^t F_t``, counts in the episode reward
for episode-level learners (GRPO), and the rubric records its weighted per-turn terms
``weight * gamma^t * F_t`` in ``Trajectory.turn_rewards`` (through
:class:`~agentgym.rewards.rubric.PerTurn`), which PPO adds at each turn's last policy token
instead of at the episode's end: one mechanism for configured and hand-written shaping.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import math
import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from agentgym.env import AgentEnv
from agentgym.errors import RewardError
from agentgym.policy import Policy, SamplingParams
from agentgym.rewards.reward_model import RewardModelReward
from agentgym.rewards.rubric import GroupReward, Reward, RewardFn, Rubric
from agentgym.rewards.self_feedback import SelfEvaluation, answer_confidence
from agentgym.rewards.shaping import Potential, potential_shaping
from agentgym.rewards.verbal import (
    Criterion,
    JudgeClient,
    JudgeReward,
    load_prompt,
    parse_criteria,
    parse_grade,
    parse_probability,
)
from agentgym.types import Task, Trajectory

__all__ = ["KINDS", "Endpoint", "RewardsConfig", "TermSpec", "attach_rewards", "judge_client",
           "load_rewards_file", "shared_client"]

_COMMON = ("kind", "name", "weight")
_ENDPOINT = ("base_url", "model", "api_key_env", "engine", "max_concurrent", "timeout_s",
             "max_retries", "cache_size")
KINDS: dict[str, tuple[str, ...]] = {
    "judge": (*_COMMON, *_ENDPOINT, "rubric", "constitution", "scale", "max_tokens",
              "temperature"),
    "confidence": _COMMON,
    "self_evaluation": (*_COMMON, *_ENDPOINT, "samples", "temperature"),
    "shaping": (*_COMMON, *_ENDPOINT, "potential", "gamma", "max_tokens"),
    "env": (*_COMMON, "drop"),
    "reward_model": (*_COMMON, "path", "device"),
}
"""Every term kind and the keys it accepts."""


def _closest(word: Any, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- the parsed spec ------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """Where a judge (or the policy asked for a self-evaluation) runs.

    Attributes:
        base_url: an OpenAI-compatible API root (``.../v1``), or None with ``engine``.
        model: the served model name (with ``engine: hf``: a local folder, or None for the
            prepared default SmolLM2).
        api_key_env: the name of the environment variable holding the API key.
        engine: ``"hf"`` for the embedded engine instead of ``base_url``.
        max_concurrent: calls in flight at once.
        timeout_s: deadline of one call (retries included).
        max_retries: HTTP retries after a connection error, timeout or 5xx.
        cache_size: answers remembered (identical prompts are sent once).
    """

    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    engine: str | None = None
    max_concurrent: int = 8
    timeout_s: float = 120.0
    max_retries: int = 2
    cache_size: int = 4096

    def client(self) -> JudgeClient:
        """A :class:`JudgeClient` on this endpoint (the policy is built lazily, per loop)."""
        where = self.base_url or f"the embedded {self.engine} engine"
        label = f"judge {self.model or 'smollm2'!r} at {where}"
        return JudgeClient(self._make_policy(), max_concurrent=self.max_concurrent,
                           timeout_s=self.timeout_s, cache_size=self.cache_size, label=label)

    def _make_policy(self) -> Callable[[], Policy]:
        if self.engine == "hf":
            engine: list[Policy] = []

            def embedded() -> Policy:  # one engine, whatever the loop (it owns its thread)
                if not engine:
                    from agentgym.policies.serve import make_policy  # torch: only when used

                    engine.append(make_policy("hf", self.model))
                return engine[0]

            return embedded
        api_key = os.environ.get(self.api_key_env) if self.api_key_env else None

        def http() -> Policy:
            from agentgym.policies.openai_client import OpenAIPolicy  # httpx: only when used

            assert self.base_url is not None and self.model is not None
            return OpenAIPolicy(self.base_url, self.model, api_key=api_key,
                                max_concurrency=self.max_concurrent, timeout=self.timeout_s,
                                max_retries=self.max_retries, vllm_extras=False)

        return http


@dataclass(frozen=True)
class TermSpec:
    """One validated item of a ``rewards:`` list.

    Attributes:
        kind: one of :data:`KINDS`.
        name: the component name (``"*"`` for an ``env`` rule on every unnamed env term).
        weight: its weight in the total (None for an ``env`` rule that only drops).
        options: the kind's other keys (rubric, samples, gamma...).
        endpoint: where its judge / policy runs, when the kind has one.
    """

    kind: str
    name: str
    weight: float | None
    options: Mapping[str, Any] = field(default_factory=dict)
    endpoint: Endpoint | None = None


def _number(where: str, key: str, value: Any, *, integer: bool = False,
            positive: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and positive:
        ok = value > 0
    if not ok:
        wanted = "a positive " if positive else "a finite "
        raise ValueError(f"{where}: {key} must be {wanted}{'integer' if integer else 'number'}, "
                         f"got {value!r}")
    return int(value) if integer else float(value)


def _endpoint(where: str, item: Mapping[str, Any], required: bool) -> Endpoint | None:
    """The endpoint keys of ``item``; None when it has none and none is ``required``."""
    base_url, engine = item.get("base_url"), item.get("engine")
    if base_url is None and engine is None:
        if required:
            raise ValueError(f"{where}: give base_url: (an OpenAI-compatible endpoint, "
                             "with model:) or engine: hf (the embedded engine)")
        if any(k in item for k in _ENDPOINT):
            raise ValueError(f"{where}: endpoint settings without base_url: or engine:")
        return None
    if base_url is not None and engine is not None:
        raise ValueError(f"{where}: give base_url: or engine:, not both")
    if engine is not None and engine != "hf":
        raise ValueError(f"{where}: engine must be 'hf'{_closest(engine, ['hf'])} "
                         "(for a vLLM server give its base_url:)")
    if base_url is not None and not (isinstance(base_url, str)
                                     and base_url.startswith(("http://", "https://"))):
        raise ValueError(f"{where}: base_url must be an http(s) URL, got {base_url!r}")
    if base_url is not None and not isinstance(item.get("model"), str):
        raise ValueError(f"{where}: base_url needs model: (the served model name)")
    key_env = item.get("api_key_env")
    if key_env is not None and not os.environ.get(str(key_env)):
        raise ValueError(f"{where}: the environment variable {key_env} (api_key_env) is not set")
    numbers = {k: _number(where, k, item[k], integer=k != "timeout_s",
                          positive=k in ("max_concurrent", "timeout_s"))
               for k in ("max_concurrent", "timeout_s", "max_retries", "cache_size")
               if k in item}
    if min(numbers.get("max_retries", 0), numbers.get("cache_size", 0)) < 0:
        raise ValueError(f"{where}: max_retries and cache_size must be >= 0")
    model = item.get("model")
    if model is not None and not isinstance(model, str):
        raise ValueError(f"{where}: model must be a text, got {model!r}")
    return Endpoint(base_url=base_url, model=model,
                    api_key_env=key_env, engine=engine, **numbers)  # type: ignore[arg-type]


_judges: weakref.WeakValueDictionary[Endpoint, JudgeClient] = weakref.WeakValueDictionary()


def shared_client(endpoint: Endpoint) -> JudgeClient:
    """The judge client of ``endpoint``, one per process while anybody holds it: every env and
    term on the same endpoint shares its concurrency bound and cache."""
    client = _judges.get(endpoint)
    if client is None:
        client = _judges[endpoint] = endpoint.client()
    return client


def judge_client(settings: Mapping[str, Any], where: str = "judge") -> JudgeClient:
    """The shared judge client of an endpoint given as the keys of a judge term
    (``{base_url, model, api_key_env}`` or ``{engine: hf}``, ``max_concurrent``...).

    Raises:
        ValueError: an unknown key (with the closest one) or a missing endpoint.
    """
    if not isinstance(settings, Mapping):
        raise ValueError(f"{where}: expected a mapping like {{base_url: ..., model: ...}}")
    for key in settings:
        if key not in _ENDPOINT:
            raise ValueError(f"{where}: unknown key {key!r}{_closest(key, _ENDPOINT)}; "
                             f"a judge endpoint takes {', '.join(_ENDPOINT)}")
    endpoint = _endpoint(where, settings, True)
    assert endpoint is not None
    return shared_client(endpoint)


def _criteria(where: str, key: str, value: Any) -> list[Criterion]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: {key} must be a non-empty list of texts")
    criteria = []
    for entry in value:
        if isinstance(entry, str) and entry.strip():
            criteria.append(Criterion(entry.strip()))
        elif isinstance(entry, Mapping) and isinstance(entry.get("text"), str):
            criteria.append(Criterion(entry["text"], _number(where, f"{key} weight",
                                                             entry.get("weight", 1.0))))
        else:
            raise ValueError(f"{where}: each {key} entry is a text or {{text, weight}}, "
                             f"got {entry!r}")
    return criteria


def _kind_options(where: str, kind: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and normalise the kind-specific keys of ``item``."""
    options: dict[str, Any] = {}
    if kind == "judge":
        if "rubric" in item and "constitution" in item:
            raise ValueError(f"{where}: give rubric: or constitution:, not both")
        rubric = item.get("rubric")
        if isinstance(rubric, str):
            if not rubric.strip():
                raise ValueError(f"{where}: rubric is empty")
            options["rubric"] = rubric.strip()
        elif rubric is not None:
            options["criteria"] = _criteria(where, "rubric", rubric)
        if "constitution" in item:
            options["criteria"] = _criteria(where, "constitution", item["constitution"])
        options["scale"] = _number(where, "scale", item.get("scale", 10), integer=True,
                                   positive=True)
    if kind in ("judge", "shaping"):
        options["max_tokens"] = _number(where, "max_tokens", item.get("max_tokens", 768),
                                        integer=True, positive=True)
    if kind in ("judge", "self_evaluation"):
        default = 0.0 if kind == "judge" else 1.0
        options["temperature"] = _number(where, "temperature", item.get("temperature", default))
        if options["temperature"] < 0:
            raise ValueError(f"{where}: temperature must be >= 0")
    if kind == "self_evaluation":
        options["samples"] = _number(where, "samples", item.get("samples", 4), integer=True,
                                     positive=True)
    if kind == "shaping":
        options.update(_shaping_options(where, item))
    if kind == "env" and not isinstance(item.get("drop", False), bool):
        raise ValueError(f"{where}: drop must be true or false")
    if kind == "env":
        options["drop"] = item.get("drop", False)
    if kind == "reward_model":  # a trained Bradley-Terry model (agentgym.rewards.reward_model)
        if not isinstance(item.get("path"), str) or not item["path"]:
            raise ValueError(f"{where}: reward_model needs path: (its training run folder)")
        options.update(path=item["path"], device=str(item.get("device", "auto")))
    return options


def _shaping_options(where: str, item: Mapping[str, Any]) -> dict[str, Any]:
    potential = item.get("potential")
    if potential != "judge" and not (isinstance(potential, str) and ":" in potential):
        raise ValueError(f"{where}: potential must be 'judge' (a judge's progress estimate) or "
                         f"'module:function', got {potential!r}")
    gamma = _number(where, "gamma", item.get("gamma", 1.0), positive=True)
    if gamma > 1:
        raise ValueError(f"{where}: gamma must be in (0, 1], got {gamma:g}")
    return {"potential": potential, "gamma": gamma}


def parse_term(index: int, item: Any) -> TermSpec:
    """Validate item ``index`` of a ``rewards:`` list.

    Raises:
        ValueError: what is wrong, with the closest valid kind or key.
    """
    where = f"rewards[{index}]"
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: each term is a mapping like {{kind: judge, ...}}, "
                         f"got {item!r}")
    kind = item.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{where}: unknown kind {kind!r}{_closest(kind, list(KINDS))}; "
                         f"kinds: {', '.join(KINDS)}")
    name = item.get("name", None if kind == "env" else kind)
    if not isinstance(name, str) or not name or "@" in name:
        raise ValueError(f"{where} ({kind}): name must be a non-empty text without '@'"
                         + (" (the env term to keep, reweight or drop, or '*')"
                            if kind == "env" else ""))
    where = f"{where} ({kind} {name!r})"
    for key in item:
        if key not in KINDS[kind]:
            raise ValueError(f"{where}: unknown key {key!r}{_closest(key, KINDS[kind])}; "
                             f"{kind} takes {', '.join(KINDS[kind])}")
    if kind == "env" and "weight" not in item and not item.get("drop"):
        raise ValueError(f"{where}: give weight: (0 logs it only) or drop: true")
    weight = None if kind == "env" and "weight" not in item else \
        _number(where, "weight", item.get("weight", 1.0))
    endpoint = None
    if kind != "env":
        required = kind == "judge" or (kind == "shaping" and item.get("potential") == "judge")
        endpoint = _endpoint(where, item, required) if kind != "confidence" else None
    return TermSpec(kind, name, weight, _kind_options(where, kind, item), endpoint)


# --- the config -----------------------------------------------------------------------------

class RewardsConfig:
    """A validated ``rewards:`` list and the judges it needs (built once, shared by every env
    made with this object).

    Args:
        spec: the list of term mappings (see the module docstring).

    Raises:
        ValueError: a term is wrong, or two terms share a name.
    """

    _shared: ClassVar[weakref.WeakValueDictionary[str, RewardsConfig]] = \
        weakref.WeakValueDictionary()

    def __init__(self, spec: Sequence[Mapping[str, Any]]):
        if isinstance(spec, str | bytes | Mapping) or not isinstance(spec, Sequence):
            raise ValueError("rewards must be a list of terms like [{kind: judge, ...}], "
                             f"got {type(spec).__name__}")
        self.spec = [dict(item) if isinstance(item, Mapping) else item for item in spec]
        self.terms = [parse_term(i, item) for i, item in enumerate(self.spec)]
        names = [t.name for t in self.terms]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rewards: names must be unique, {duplicates} repeat (give each "
                             "term its own name:)")
        self._clients: dict[str, JudgeClient] = {}
        self._rewards: dict[str, Any] = {}
        self._policy: Policy | None = None

    @classmethod
    def of(cls, rewards: RewardsConfig | Sequence[Mapping[str, Any]]) -> RewardsConfig:
        """``rewards`` itself, or the config of that list: the same one while any env holds
        it, so envs made from equal lists share judges, caches and concurrency bounds."""
        if isinstance(rewards, RewardsConfig):
            return rewards
        config = cls(rewards)
        key = json.dumps(config.spec, sort_keys=True, default=str)
        return cls._shared.setdefault(key, config)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its list (for Ray workers): judges are rebuilt there, unbound."""
        return (RewardsConfig, (self.spec,))

    def bind_policy(self, policy: Policy) -> None:
        """The policy that ``self_evaluation`` terms without an endpoint ask (the trainer
        binds the policy it trains). An HTTP policy is used from the event loop that plays
        the envs (the rollout engine's one loop), as its connections belong to one loop."""
        self._policy = policy
        for name in [t.name for t in self.terms if t.kind == "self_evaluation"]:
            self._rewards.pop(name, None)
            self._clients.pop(name, None)

    def client(self, term: TermSpec) -> JudgeClient:
        """The judge client of ``term`` (built on first use)."""
        if term.name not in self._clients:
            if term.endpoint is not None:
                self._clients[term.name] = shared_client(term.endpoint)
            elif self._policy is not None:
                policy = self._policy
                self._clients[term.name] = JudgeClient(lambda: policy, label="the policy")
            else:
                raise RewardError(
                    f"rewards term {term.name!r} ({term.kind}) has no policy to ask: give it "
                    "base_url:/model: or engine: hf, or train with it (the trainer binds the "
                    "policy it trains)")
        return self._clients[term.name]

    def check_env(self, env: AgentEnv, base: Rubric) -> None:
        """Raise ValueError if the list names terms that ``env`` (whose own rubric is ``base``)
        lacks, or needs a judged reward it does not offer; then build the rubric once, so a
        potential that does not import fails here."""
        if not isinstance(base, Rubric):
            raise ValueError(
                f"rewards: {env.env_id}'s rubric is a {type(base).__name__}, not a Rubric: give "
                "the rewards list to its member envs instead (agentgym/Mixture-v0: "
                "env_kwargs={member_id: {rewards: [...]}})")
        own = [r.name for r in (*base.rewards, *base.group_rewards)]
        for term in self.terms:
            if term.kind == "env" and term.name != "*" and term.name not in own:
                raise ValueError(f"rewards: {env.env_id} has no reward term {term.name!r}"
                                 f"{_closest(term.name, own)}; its terms: {', '.join(own)}")
            if term.kind == "judge" and "rubric" not in term.options \
                    and "criteria" not in term.options and not hasattr(env, "judge_reward"):
                raise ValueError(f"rewards: judge term {term.name!r} needs rubric: or "
                                 f"constitution: ({env.env_id} has no judged reward of its own)")
        self.rubric_for(base, env)

    def rubric_for(self, base: Rubric, env: AgentEnv) -> Rubric:
        """``env``'s rubric ``base`` with this config's rules and terms applied."""
        configured = {t.name: t for t in self.terms if t.kind != "env"}
        rules = {t.name: t for t in self.terms if t.kind == "env"}
        kept: list[Reward | GroupReward] = []
        for reward in (*base.rewards, *base.group_rewards):
            rule = rules.get(reward.name, rules.get("*"))
            if reward.name in configured or (rule is not None and rule.options.get("drop")):
                continue
            kept.append(reward if rule is None or rule.weight is None
                        else dataclasses.replace(reward, weight=rule.weight))
        for term in configured.values():
            kept.append(Reward(term.name, self._reward(term, env), term.weight or 0.0))
        return Rubric(kept)

    def _reward(self, term: TermSpec, env: AgentEnv) -> RewardFn:
        if term.kind == "confidence":
            return answer_confidence
        if term.kind == "shaping":
            return potential_shaping(self._potential(term), term.options["gamma"])
        if term.kind == "judge" and "rubric" not in term.options \
                and "criteria" not in term.options:
            return env.judge_reward(self.client(term))  # type: ignore[attr-defined]
        if term.name not in self._rewards:
            self._rewards[term.name] = self._build(term)
        return self._rewards[term.name]

    def _build(self, term: TermSpec) -> RewardFn:
        if term.kind == "reward_model":
            return RewardModelReward(term.options["path"], term.options["device"])
        if term.kind == "self_evaluation":
            return _LazySelfEvaluation(self, term)
        options = term.options
        sampling = SamplingParams(temperature=options["temperature"],
                                  max_tokens=options["max_tokens"])
        if "criteria" in options:
            criteria = options["criteria"]
            listing = "\n".join(f"{k}. {c.text}" for k, c in enumerate(criteria, 1))
            return JudgeReward(self.client(term), prompt=load_prompt("criteria"),
                               mapping=lambda critique: parse_criteria(critique, criteria),
                               sampling=sampling, fields={"criteria": listing})
        return JudgeReward(self.client(term), mapping=parse_grade, sampling=sampling,
                           fields={"scale": str(options["scale"]), "rubric": options["rubric"]})

    def _potential(self, term: TermSpec) -> Potential:
        if term.options["potential"] != "judge":
            return _import(term.options["potential"])
        judge = JudgeReward(self.client(term), prompt=load_prompt("progress"),
                            mapping=parse_probability,
                            sampling=SamplingParams(temperature=0.0,
                                                    max_tokens=term.options["max_tokens"]))

        async def progress(state: Sequence[Mapping[str, Any]], task: Task) -> float:
            return await judge(Trajectory(env_id="", task_id=task.id, messages=tuple(state)),
                               task)

        return progress


class _LazySelfEvaluation:
    """A :class:`SelfEvaluation` whose policy is resolved at scoring time (bound late)."""

    def __init__(self, config: RewardsConfig, term: TermSpec):
        self.config, self.term = config, term

    async def __call__(self, trajectory: Trajectory, task: Task) -> float:
        evaluation = SelfEvaluation(self.config.client(self.term),
                                    samples=self.term.options["samples"],
                                    temperature=self.term.options["temperature"])
        return await evaluation(trajectory, task)


def _import(target: str) -> Callable[..., Any]:
    """``"module:function"`` -> the function (a shaping potential)."""
    module_name, _, attr = target.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"rewards: cannot load the potential {target!r}: {exc}") from exc
    if not callable(function):
        raise ValueError(f"rewards: the potential {target!r} is not callable")
    return function


# --- attaching to an env --------------------------------------------------------------------

_configured_classes: dict[type, type] = {}


def _configured_class(cls: type[AgentEnv]) -> type[AgentEnv]:
    """``cls`` with a ``rubric`` that applies the instance's :class:`RewardsConfig`."""
    if cls not in _configured_classes:
        def rubric(self: Any) -> Rubric:
            base = super(configured, self).rubric
            return self.rewards_config.rubric_for(base, self)

        configured = type(cls.__name__, (cls,), {
            "rubric": property(rubric, doc="The env's rubric with the rewards config applied."),
            "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__})
        _configured_classes[cls] = configured
    return _configured_classes[cls]


def attach_rewards(env: AgentEnv, rewards: RewardsConfig | Sequence[Mapping[str, Any]],
                   ) -> AgentEnv:
    """Apply a ``rewards:`` list (or a :class:`RewardsConfig`) to ``env``'s rubric, in place.

    The env keeps its class's behaviour; only ``env.rubric`` changes, and
    ``env.rewards_config`` holds the config. Returns ``env``.

    Raises:
        ValueError: the list is invalid, or names env terms ``env`` does not have.
        TypeError: ``env`` is not an :class:`~agentgym.env.AgentEnv`.
    """
    if not isinstance(env, AgentEnv):
        raise TypeError(f"rewards: can only be attached to an AgentEnv, got {type(env).__name__}")
    config = RewardsConfig.of(rewards)
    cls = type(env)
    if cls in _configured_classes.values():
        cls = cls.__mro__[1]
    try:
        config.check_env(env, super(cls, env).rubric if cls is not type(env) else env.rubric)
    except ValueError:
        env.close()
        raise
    env.__class__ = _configured_class(cls)
    env.rewards_config = config  # type: ignore[attr-defined]
    return env


def load_rewards_file(path: str | Path) -> list[dict[str, Any]]:
    """The ``rewards:`` list of a YAML file: a bare list, or a mapping with a ``rewards`` key
    (a training or eval config). Validated.

    Raises:
        FileNotFoundError: no such file.
        ValueError: no list, or an invalid one.
    """
    import yaml  # only for files

    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if isinstance(data, Mapping):
        if "rewards" not in data:
            close = difflib.get_close_matches("rewards", [str(k) for k in data], n=1)
            typo = f" (is {close[0]!r} a typo of 'rewards'?)" if close else ""
            raise ValueError(f"{path}: no 'rewards' key{typo}")
        data = data["rewards"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of reward terms (or a 'rewards:' key)")
    RewardsConfig(data)
    return data
