"""Preference pairs (chosen vs rejected answer to one prompt): mined from rollout groups, read
from and written to JSONL, and turned into the token sequences the reward model and DPO train on.

Mining (:func:`mine_pairs`): within one group (the G episodes of a task) the episode with the
highest verifiable reward is *chosen* and the one with the lowest is *rejected*; a group whose
best and worst rewards tie (no preference), a dropped group and failed episodes give nothing.

The preference JSONL (one pair per line) has two accepted forms:

* **trajectories** (what :func:`write_pairs` writes; token-in/token-out, multi-turn, tools)::

      {"task_id": "calc-train-3", "chosen": <trajectory>, "rejected": <trajectory>}

  where ``<trajectory>`` is :func:`agentgym.trajectory_io.to_json`'s object (token ids and
  logprobs included), so the sequences are exactly the ones the policy sampled;
* **chat** (human preference data, TRL's conversational form)::

      {"prompt": [{"role": "user", "content": "2+2?"}],
       "chosen": [{"role": "assistant", "content": "4"}],   # or a plain string
       "rejected": [{"role": "assistant", "content": "5"}],
       "tools": [...]}                                      # optional OpenAI tool schemas

  rendered with the tokenizer's chat template: the prompt with the generation prompt, and the
  completion as the template's continuation of it; every completion token is trained on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentgym.errors import TokenizationDriftError
from agentgym.jsonl import iter_jsonl
from agentgym.rollout import Group
from agentgym.tokens import TokenSequence, build_token_sequence
from agentgym.trajectory_io import from_json, to_json
from agentgym.types import Trajectory

__all__ = ["PreferencePair", "TokenPair", "mine_pairs", "read_pairs", "to_token_pairs",
           "write_pairs"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreferencePair:
    """Two episodes of one task, the chosen one preferred (a higher verifiable reward)."""

    task_id: str
    chosen: Trajectory
    rejected: Trajectory


@dataclass(frozen=True)
class TokenPair:
    """A preference pair as trainer input (the two sequences share their prompt)."""

    task_id: str
    chosen: TokenSequence
    rejected: TokenSequence


def mine_pairs(groups: Iterable[Group]) -> list[PreferencePair]:
    """One pair per group: best vs worst episode by env reward; ties, dropped groups and
    failed episodes (reward None) give no pair. Among equal bests (or worsts) the first in
    sample order is taken, so the result is deterministic."""
    pairs = []
    for group in groups:
        if group.dropped:
            continue
        scored = [t for t in group.trajectories if t.error is None and t.reward is not None]
        if len(scored) < 2:
            continue
        best = max(scored, key=lambda t: t.reward)  # first of equal maxima
        worst = min(scored, key=lambda t: t.reward)
        if best.reward == worst.reward:
            continue
        pairs.append(PreferencePair(group.task_id, best, worst))
    return pairs


def to_token_pairs(pairs: Iterable[PreferencePair]) -> tuple[list[TokenPair], int]:
    """(token pairs, pairs dropped because a trajectory's tokens drifted)."""
    out, drift = [], 0
    for pair in pairs:
        try:
            out.append(TokenPair(pair.task_id, build_token_sequence(pair.chosen),
                                 build_token_sequence(pair.rejected)))
        except TokenizationDriftError as exc:
            drift += 1
            logger.warning("dropping the pair of %s: %s", pair.task_id, exc)
    return out, drift


def write_pairs(pairs: Iterable[PreferencePair], path: str | Path) -> int:
    """Write pairs in the trajectory form (one line each); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as file:
        for pair in pairs:
            file.write(json.dumps({"task_id": pair.task_id, "chosen": to_json(pair.chosen),
                                   "rejected": to_json(pair.rejected)}, allow_nan=False) + "\n")
            count += 1
    return count


def _chat_completion(value: Any, line: int) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, Mapping) for m in value):
        return [dict(m) for m in value]
    raise ValueError(f"line {line}: 'chosen'/'rejected' must be a string or a non-empty list "
                     f"of chat messages, got {type(value).__name__}")


def _render(tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Any,
            generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tools=tools or None, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def chat_sequence(tokenizer: Any, prompt: Sequence[Mapping[str, Any]],
                  completion: Sequence[Mapping[str, Any]], tools: Any = None,
                  line: int = 0) -> TokenSequence:
    """The token sequence of ``prompt`` followed by ``completion`` (chat form): the prompt
    rendered with the generation prompt, then the rest of the rendered chat tokenized on its
    own (as a policy samples it after the prompt's ids)."""
    head = _render(tokenizer, prompt, tools, True)
    full = _render(tokenizer, [*prompt, *completion], tools, False)
    if not full.startswith(head) or len(full) == len(head):
        raise ValueError(f"line {line}: the chat template does not render the completion as a "
                         "continuation of the prompt")
    prompt_ids, response = _encode(tokenizer, head), _encode(tokenizer, full[len(head):])
    return TokenSequence(tuple(prompt_ids), tuple(response), (1,) * len(response),
                         (0.0,) * len(response), (None,))


def _pair_from_line(data: Mapping[str, Any], tokenizer: Any, line: int) -> TokenPair:
    missing = {"chosen", "rejected"} - set(data)
    if missing:
        raise ValueError(f"line {line}: a preference pair needs {sorted(missing)}")
    if "prompt" not in data:  # the trajectory form
        chosen, rejected = from_json(data["chosen"]), from_json(data["rejected"])
        return TokenPair(str(data.get("task_id", chosen.task_id)),
                         build_token_sequence(chosen), build_token_sequence(rejected))
    if tokenizer is None:
        raise ValueError(f"line {line}: the chat form needs a tokenizer")
    prompt, tools = list(data["prompt"]), data.get("tools")
    return TokenPair(str(data.get("task_id", f"line-{line}")),
                     chat_sequence(tokenizer, prompt, _chat_completion(data["chosen"], line),
                                   tools, line),
                     chat_sequence(tokenizer, prompt, _chat_completion(data["rejected"], line),
                                   tools, line))


def read_pairs(path: str | Path, tokenizer: Any = None) -> list[TokenPair]:
    """The pairs of a preference JSONL (either form; see the module docstring).

    Raises:
        ValueError: a line lacks a field or cannot be tokenised; the message names the line.
        FileNotFoundError: no such file.
    """
    if not Path(path).exists():
        raise FileNotFoundError(f"no preference file at {path}")
    pairs = []
    for number, (_, data) in enumerate(iter_jsonl(path), start=1):
        try:
            pairs.append(_pair_from_line(data, tokenizer, number))
        except (KeyError, TypeError, TokenizationDriftError) as exc:
            raise ValueError(f"{path}, line {number}: not a preference pair ({exc})") from exc
    if not pairs:
        raise ValueError(f"{path} holds no preference pairs")
    return pairs
