"""agentgym/OneShotRLVR-v0: RLVR from a single training example (Wang et al., 2025).

The recipe: pick one problem from a pool by its *historical reward variance* (the variance of
the policy's reward on that problem over a history of samples; the paper ranks examples by the
variance of their training accuracy across epochs), train on that problem alone, repeated to
fill every batch, and evaluate on a held-out set of the same family.

Here the pool is the first ``pool_size`` train problems of Math-v0 and the history is a JSON
Lines file of ``{"task_id": ..., "rewards": [...]}`` rows (or agentgym trajectory JSONL) made
offline by sampling a policy on the pool (``python -m agentgym.tasks.math.one_shot``: one
answer turn without the tool, 64 tokens, temperature 1). The
example with the highest variance wins (ties: the lowest task id); its train split is that one
task (a sampler draws it for every slot of a batch) and its eval split is Math-v0's eval split.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agentgym.jsonl import read_jsonl
from agentgym.policies.serve import make_policy
from agentgym.policy import SamplingParams
from agentgym.tasks.math.env import MathEnv
from agentgym.types import Split, Task

__all__ = ["OneShotRLVREnv", "load_history", "select_example"]

DEFAULT_HISTORY = Path(__file__).with_name("one_shot_history.jsonl")


def load_history(path: str | Path) -> dict[str, list[float]]:
    """Rewards per task id from a history file (compact rows or trajectory JSONL)."""
    rewards: dict[str, list[float]] = defaultdict(list)
    for row in read_jsonl(path):
        if "rewards" in row:
            rewards[row["task_id"]].extend(float(r) for r in row["rewards"])
        elif row.get("reward") is not None:  # a trajectory; failed ones carry no reward
            rewards[row["task_id"]].append(float(row["reward"]))
    return dict(rewards)


def select_example(history: Mapping[str, Iterable[float]]) -> tuple[str, float]:
    """The task id with the highest reward variance (population variance) and that variance."""
    scored = [(statistics.pvariance(list(r)), task_id) for task_id, r in history.items()
              if len(list(r)) >= 2]
    if not scored:
        raise ValueError("the history needs at least one task with two or more rewards")
    variance, task_id = max(scored, key=lambda vt: (vt[0], [-ord(c) for c in vt[1]]))
    return task_id, variance


class OneShotRLVREnv(MathEnv):
    """Math-v0 with a train split of one example chosen by historical reward variance.

    Args:
        history: the history file (default: the one shipped next to this module).
        example_id: skip the selection and train on this Math-v0 train task.
        **kwargs: :class:`MathEnv` arguments (datasets, calculator, budgets).
    """

    def __init__(self, *, history: str | Path | None = None, example_id: str | None = None,
                 **kwargs: Any):
        self.history_path = Path(history) if history else DEFAULT_HISTORY
        self.example_id = example_id
        super().__init__(**kwargs)

    @classmethod
    def split_sizes(cls) -> dict[str, int]:
        return {"train": 1, "eval": MathEnv.split_sizes()["eval"]}

    def chosen_example(self) -> tuple[str, float | None]:
        """(task id, its historical variance) of the training example."""
        if self.example_id is not None:
            return self.example_id, None
        if not self.history_path.exists():
            raise FileNotFoundError(
                f"no reward history at {self.history_path}; build one with "
                "`python -m agentgym.tasks.math.one_shot` or pass example_id=")
        return select_example(load_history(self.history_path))

    def load_tasks(self, split: Split) -> list[Task]:
        if split == "eval":
            return super().load_tasks("eval")
        task_id, _ = self.chosen_example()
        pool = super().load_tasks("train")
        for task in pool:
            if task.id == task_id:
                return [task]
        raise KeyError(f"example {task_id!r} is not a Math-v0 train task")


async def build_history(pool_size: int, samples: int, out: Path, model: str | None) -> None:
    """Sample the default policy ``samples`` times on each of the first ``pool_size`` problems."""
    from rich.progress import Progress

    from agentgym.rollout import RolloutConfig, RolloutEngine

    policy = make_policy("hf", model)
    config = RolloutConfig(group_size=samples, max_concurrent=samples * 2, turn_timeout_s=900,
                           sampling=SamplingParams(temperature=1.0, max_tokens=64, seed=0))
    # One turn, no tool: the history measures how often the model answers by itself.
    engine = RolloutEngine(lambda: MathEnv(max_turns=1, calculator=False), policy, config)
    task_ids = [t.id for t in MathEnv().load_tasks("train")[:pool_size]]
    with Progress() as progress:
        bar = progress.add_task("sampling the pool", total=len(task_ids))
        groups = await engine.run_groups(task_ids,
                                         on_group=lambda group: progress.advance(bar))
    with out.open("w", encoding="utf-8") as file:
        for group in groups:
            rewards = [r for r in group.rewards if r is not None]
            file.write(json.dumps({"task_id": group.task_id, "rewards": rewards}) + "\n")
    await engine.aclose()
    await policy.aclose()


def main() -> None:
    """``python -m agentgym.tasks.math.one_shot``: build the reward history offline."""
    parser = argparse.ArgumentParser(description="Build the OneShotRLVR reward history.")
    parser.add_argument("--pool-size", type=int, default=24)
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--model", default=None, help="a prepared model folder (default SmolLM2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_HISTORY)
    args = parser.parse_args()
    asyncio.run(build_history(args.pool_size, args.samples, args.out, args.model))


if __name__ == "__main__":
    main()
