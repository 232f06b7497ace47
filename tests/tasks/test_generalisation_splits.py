"""HttpAPI-v0's language-conditioned generalisation splits: held-out paraphrases and held-out
compositions, disjoint from train, deterministic, solvable, and run by ``agentgym eval``."""

from __future__ import annotations

import re

import pytest

import agentgym
from agentgym.digests import task_line
from agentgym.eval.evaluation import evaluate
from agentgym.tasks.http_api.generalisation import _named
from agentgym.tasks.http_api.scenarios import PARAPHRASES, TEMPLATES
from agentgym.testing.stub_server import StubServer

ENV = "agentgym/HttpAPI-v0"
HELD_OUT = ("eval_paraphrase", "eval_composition")


def tasks_of(split, num_tasks=None):
    env = agentgym.make(ENV, split=split, num_tasks=num_tasks)
    try:
        return env.tasks
    finally:
        env.close()


@pytest.fixture(scope="module")
def splits():
    return {split: tasks_of(split) for split in ("train", "eval", *HELD_OUT)}


def instruction(task):
    return task.prompt[-1]["content"]


def fixed_phrases(template):
    """The template's literal text between its fields, longest first."""
    return sorted((p.strip() for p in re.split(r"\{\w+\}", template) if len(p.strip()) > 8),
                  key=len, reverse=True)


def test_held_out_splits_are_full_sized_and_deterministic(splits):
    for split in HELD_OUT:
        assert len(splits[split]) == 200
        assert len({instruction(t) for t in splits[split]}) == 200
        again = tasks_of(split, num_tasks=20)
        assert [task_line(t) for t in again] == [task_line(t) for t in splits[split][:20]]
        assert all(t.split == split and t.id.startswith(f"shop-{split}-") for t in again)


def test_train_contains_no_held_out_instruction_phrasing_or_composition(splits):
    train_texts = {instruction(t) for t in splits["train"]}
    for split in HELD_OUT:
        assert not train_texts & {instruction(t) for t in splits[split]}
    joined = "\n".join(train_texts)
    for kind, template in PARAPHRASES.items():  # no paraphrase wording anywhere in train
        assert fixed_phrases(template), kind
        for phrase in fixed_phrases(template):
            assert phrase not in joined, (kind, phrase)
    assert all("+" not in t.metadata["kind"] for t in splits["train"])  # single actions only
    assert "Do two things" not in joined


def test_paraphrases_are_the_eval_tasks_reworded(splits):
    for plain, reworded in zip(splits["eval"], splits["eval_paraphrase"], strict=True):
        assert reworded.answer == plain.answer
        assert reworded.metadata == plain.metadata
        assert instruction(reworded) != instruction(plain)
        kind = plain.metadata["kind"]
        assert fixed_phrases(PARAPHRASES[kind])[0] in instruction(reworded)
        assert fixed_phrases(TEMPLATES[kind])[0] not in instruction(reworded)


def test_compositions_combine_two_train_kinds_about_disjoint_things(splits):
    kinds = set(TEMPLATES)
    pairs = set()
    for task in splits["eval_composition"]:
        first, second = task.metadata["kind"].split("+")
        assert first != second and {first, second} <= kinds
        pairs.add((first, second))
        text = instruction(task)
        part_a, part_b = text.split(" 2) ")
        (products_a, customers_a), (products_b, customers_b) = _named(part_a), _named(part_b)
        assert not products_a & products_b and not customers_a & customers_b, text
        assert len(task.metadata["reference"]) >= 2
    assert len(pairs) >= 15  # most of the 30 ordered pairs of 6 kinds occur


def test_an_unknown_split_names_the_valid_ones():
    with pytest.raises(ValueError, match="eval_composition"):
        agentgym.make(ENV, split="eval_compositoin")


def oracle(env_split):
    """A StubServer responder that plays each task's reference solution (its demonstration)."""
    env = agentgym.make(ENV, split=env_split, num_tasks=3)
    chats = {instruction(t): env.demonstrate(t) for t in env.tasks}
    env.close()

    def respond(request):
        messages = request["messages"]
        user = next(m["content"] for m in messages if m["role"] == "user")
        turn = sum(m["role"] == "assistant" for m in messages)
        replies = [m for m in chats[user] if m["role"] == "assistant"]
        return replies[turn]["content"]

    return respond


@pytest.mark.parametrize("split", HELD_OUT)
def test_agentgym_eval_runs_a_held_out_split_and_the_references_solve_it(split, tmp_path):
    with StubServer(oracle(split)) as server:
        result = evaluate(ENV, "oracle", base_url=server.base_url, out=tmp_path, split=split,
                          num_examples=3, max_concurrent=1)
    rows = result.rows
    assert len(rows) == 3
    assert all(r["task_id"].startswith(f"shop-{split}-") for r in rows)
    assert all(r["reward"] == 1.0 for r in rows), rows
    assert result.metadata["settings"]["split"] == split
