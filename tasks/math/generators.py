"""reasoning-gym generators as agentgym tasks, and their verifiers as a reward.

Each dataset is built with an explicit seed per split, so tasks are reproducible and the
splits are drawn from different seeds; eval questions that also occur in train are skipped.
Grading uses the generator's own ``score_answer`` and, as a second opinion, math-verify (which
reads answers written in prose or LaTeX); the answer is correct when either accepts it fully.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from agentgym.errors import RewardError
from agentgym.rewards.verifiable import extract_answer
from agentgym.types import Task, Trajectory

__all__ = ["DEFAULT_DATASETS", "build_tasks", "verifier_score"]

# Arithmetic-flavoured generators where a calculator helps and answers are short.
DEFAULT_DATASETS: dict[str, dict[str, Any]] = {
    "basic_arithmetic": {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 3},
    "chain_sum": {},
    "products": {},
    "gcd": {},
    "lcm": {},
    "leg_counting": {},
}
_SEED_BASE = {"train": 0, "eval": 1_000_003}


@functools.lru_cache(maxsize=64)
def _dataset(name: str, config_json: str, seed: int, size: int) -> Any:
    import reasoning_gym

    return reasoning_gym.create_dataset(name, seed=seed, size=size, **json.loads(config_json))


def _entries(name: str, config: Mapping[str, Any], split: str, size: int) -> list[dict[str, Any]]:
    seed = _SEED_BASE[split] + sum(map(ord, name))
    dataset = _dataset(name, json.dumps(dict(config), sort_keys=True), seed, size)
    return [dict(entry) for entry in dataset]


def build_tasks(split: str, datasets: Mapping[str, Mapping[str, Any]], per_dataset: int,
                system_prompt: str, train_per_dataset: int = 0) -> list[Task]:
    """``per_dataset`` tasks from each generator, interleaved.

    For eval, questions of the train split (``train_per_dataset`` per generator) are skipped.
    """
    excluded: set[str] = set()
    if split == "eval":
        train = build_tasks("train", datasets, train_per_dataset, system_prompt)
        excluded = {t.prompt[-1]["content"] for t in train}
    columns = []
    for name, config in datasets.items():
        entries = _entries(name, config, split, per_dataset * 2)
        seen: set[str] = set(excluded)
        unique = [e for e in entries if not (e["question"] in seen or seen.add(e["question"]))]
        columns.append([(name, i, e) for i, e in enumerate(unique[:per_dataset])])
    tasks = []
    for row in zip(*columns, strict=False):
        for name, i, entry in row:
            tasks.append(Task(
                id=f"{name}-{split}-{i}", split=split, answer=str(entry["answer"]),
                prompt=({"role": "system", "content": system_prompt},
                        {"role": "user", "content": entry["question"]}),
                metadata={"dataset": name, "config": dict(datasets[name]),
                          "entry": json.loads(json.dumps(entry, default=str))}))
    return tasks


def _without_question(text: str, task: Task) -> str:
    """The reply with the question's own text taken out: echoing the question (whose last
    number is sometimes the answer, e.g. "the LCM of 6, 90") is no answer."""
    question = str(task.prompt[-1]["content"]).strip()
    return text.replace(question, " ") if question else text


def _math_equal(answer: str, reference: str) -> float:
    try:
        from math_verify import parse, verify
    except ImportError as exc:
        raise RewardError("Math-v0 needs math-verify: pip install 'agentgym[math]'") from exc
    gold = parse(reference if "$" in reference else f"${reference}$")
    if not gold:
        raise RewardError(f"math-verify cannot read the reference answer {reference!r}")
    parsed = parse(answer)
    return float(bool(parsed) and verify(gold, parsed))


def verifier_score(trajectory: Trajectory, task: Task) -> float:
    """1.0 when the generator's own verifier gives the extracted answer full marks or
    math-verify finds it equal to the reference, else 0.0.

    The answer is the last ``<answer>`` span of the final reply (else the reply), after the
    question's own text is removed from the reply. Partial marks are not passed on:
    reasoning-gym's default ``score_answer`` gives ``len(oracle) / len(answer)`` to any answer
    that *contains* the oracle, so a hedged answer (``<answer>42 or 41</answer>``) would earn
    0.4 without committing to one number.
    """
    name, config = task.metadata["dataset"], task.metadata["config"]
    dataset = _dataset(name, json.dumps(config, sort_keys=True), 0, 1)
    answer = extract_answer(_without_question(trajectory.final_text, task))
    try:
        own = float(dataset.score_answer(answer or None, task.metadata["entry"]))
    except Exception as exc:  # a generator bug is an infra failure of the reward, not a 0
        raise RewardError(f"{name}.score_answer failed: {type(exc).__name__}: {exc}") from exc
    if own >= 1.0:
        return 1.0
    return _math_equal(answer, str(task.answer)) if answer else 0.0
