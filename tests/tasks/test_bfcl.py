"""BFCL family: schema conversion, BFCL's AST and multi-turn checks, oracles over the real data.

Needs the ``bfcl-eval`` package (``pip install --no-deps bfcl-eval mpmath``); skipped without it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
from gates import require_module

import agentgym
from agentgym.conformance import check

require_module("bfcl_eval", "pip install --no-deps bfcl-eval (see .ci/setup.sh)")

from agentgym.tasks.bfcl import backend  # noqa: E402
from agentgym.tasks.bfcl.checker import (  # noqa: E402
    check_calls,
    check_one_call,
    multi_turn_verdicts,
    standardize_string,
)
from agentgym.tasks.bfcl.data import (  # noqa: E402
    CLASS_DOC_FILES,
    class_docs,
    load_category,
    split_of,
)
from agentgym.tasks.bfcl.multi_turn import BFCLMultiTurnEnv  # noqa: E402
from agentgym.tasks.bfcl.schemas import to_openai_schema  # noqa: E402
from agentgym.tasks.bfcl.single_turn import BFCLSingleEnv, reference_calls  # noqa: E402

MULTI = "agentgym/BFCLMultiTurn-v0"
SINGLE = "agentgym/BFCLSingle-v0"
agentgym.register(MULTI, "agentgym.tasks.bfcl.multi_turn:BFCLMultiTurnEnv")
agentgym.register(SINGLE, "agentgym.tasks.bfcl.single_turn:BFCLSingleEnv")

# Entries whose ground truth contradicts their own function docs (see README.md).
INCONSISTENT_MULTI = {"multi_turn_base_173"}
INCONSISTENT_SINGLE = {"live_simple_106-63-0", "live_simple_112-68-0", "live_multiple_507-149-4",
                       "live_multiple_862-181-3", "live_multiple_964-207-0"}


def calls_message(calls, prefix="c"):
    """An assistant message with (name, arguments) calls as native OpenAI tool calls."""
    return {"role": "assistant", "content": "", "tool_calls": [
        {"id": f"{prefix}{i}", "type": "function",
         "function": {"name": name, "arguments": json.dumps(args)}}
        for i, (name, args) in enumerate(calls)]}


# --- schemas ---------------------------------------------------------------------------------

def test_schema_conversion_maps_bfcl_types_to_json_schema():
    doc = {"name": "geo.distance", "description": "Distance.", "parameters": {
        "type": "dict", "required": ["points"], "properties": {
            "points": {"type": "array", "items": {"type": "tuple"}, "description": "pts"},
            "unit": {"type": "string", "enum": ["km", "mi"], "optional": True, "default": "km"},
            "scale": {"type": "float", "description": "s", "required": True},
            "meta": {"type": "dict", "properties": {"tag": {"type": "any"}}},
            "weird": {"type": "HashSet"}}}}
    schema = to_openai_schema(doc)
    params = schema["function"]["parameters"]
    assert schema["function"]["name"] == "geo_distance"
    assert params["properties"]["points"] == {"type": "array", "items": {"type": "array"},
                                              "description": "pts"}
    assert params["properties"]["unit"] == {"type": "string", "enum": ["km", "mi"],
                                            "default": "km"}
    assert params["properties"]["scale"] == {"type": "number", "description": "s"}
    assert params["properties"]["meta"]["properties"]["tag"] == {"type": "string"}
    assert params["properties"]["weird"] == {"type": "string"}
    assert params["required"] == ["points"] and params["additionalProperties"] is False


def test_every_multi_turn_and_default_single_turn_doc_is_valid_json_schema():
    docs = [d for c in CLASS_DOC_FILES for d in class_docs(c)]
    docs += [f for cat in ("simple_python", "multiple", "parallel", "parallel_multiple")
             for entry, _ in load_category(cat) for f in entry["function"]]
    for doc in docs:
        jsonschema.Draft202012Validator.check_schema(
            to_openai_schema(doc)["function"]["parameters"])
    assert len(docs) > 1000


# --- AST checker (single turn) ---------------------------------------------------------------

DOC = {"name": "math.area", "parameters": {"type": "dict", "required": ["width"], "properties": {
    "width": {"type": "float"}, "count": {"type": "integer"}, "flag": {"type": "boolean"},
    "unit": {"type": "string"}, "dims": {"type": "array", "items": {"type": "integer"}},
    "opts": {"type": "dict"}}}}


def one(args, **allowed):
    answer = {"math.area": {"width": [2.0], **allowed}}
    return check_one_call(DOC, ("math_area", args), answer)


@pytest.mark.parametrize("args, allowed, ok", [
    ({"width": 2}, {}, True),                                   # int accepted for float
    ({"width": 2.0}, {}, True),
    ({"width": "2"}, {}, False),                                # str is no float
    ({"width": 2, "count": 3}, {"count": [3]}, True),
    ({"width": 2, "count": 3.0}, {"count": [3]}, False),        # float is no integer
    ({"width": 2, "flag": 1}, {"flag": [True]}, False),         # int is no boolean
    ({"width": 2, "count": True}, {"count": [1]}, False),       # bool is no integer
    ({"width": 2, "unit": "Square-Meters"}, {"unit": ["square meters"]}, True),
    ({"width": 2, "unit": "sq m"}, {"unit": ["square meters"]}, False),
    ({"width": 2, "dims": [1, 2]}, {"dims": [[1, 2]]}, True),
    ({"width": 2, "dims": [2, 1]}, {"dims": [[1, 2]]}, False),  # lists are ordered
    ({"width": 2, "dims": [1, 2.5]}, {"dims": [[1, 2]]}, False),
    ({"width": 2, "opts": {"a": "X Y"}}, {"opts": [{"a": ["x y"], "b": [""]}]}, True),
    ({"width": 2, "opts": {"c": 1}}, {"opts": [{"a": ["x"]}]}, False),
    ({"width": 2}, {"unit": ["", "m"]}, True),                  # "" marks optional
    ({"width": 2}, {"unit": ["m"]}, False),                     # not optional
    ({}, {}, False),                                            # required missing
    ({"width": 2, "extra": 1}, {}, False),                      # undocumented parameter
])
def test_ast_type_and_value_rules(args, allowed, ok):
    assert one(args, **allowed).ok is ok


def test_ast_name_must_match_the_offered_name():
    assert not check_one_call(DOC, ("math.area", {"width": 2}), {"math.area": {"width": [2]}}).ok
    assert standardize_string("It's A-b_c.d/e*f^g h,") == 'it"sabcdefgh'


def test_parallel_is_order_free_and_others_count_calls():
    docs = [DOC, {"name": "b", "parameters": {"properties": {"x": {"type": "integer"}},
                                              "required": ["x"]}}]
    answers = [{"math.area": {"width": [2.0]}}, {"b": {"x": [1]}}]
    calls = [("b", {"x": 1}), ("math_area", {"width": 2})]
    assert check_calls(calls, docs, answers, "parallel_multiple").ok
    assert not check_calls(calls[:1], docs, answers, "parallel_multiple").ok
    assert not check_calls(calls + calls[:1], docs, answers, "parallel").ok
    assert check_calls(calls[1:], docs, answers[:1], "simple_python").ok
    assert not check_calls(calls, docs, answers[:1], "multiple").ok


# --- single-turn env -------------------------------------------------------------------------

def run_single_oracle(env):
    failures, count = set(), 0
    for task in env.tasks:
        env.reset(options={"task_id": task.id})
        obs, reward, terminated, truncated, info = env.step(calls_message(reference_calls(task)))
        assert terminated and not truncated
        count += 1
        if reward != 1.0:
            failures.add(task.id)
    return failures, count


@pytest.mark.parametrize("split", ["train", "eval"])
def test_single_turn_oracle_passes_every_default_entry(split):
    env = agentgym.make(SINGLE, split=split)
    failures, count = run_single_oracle(env)
    assert count == BFCLSingleEnv.split_sizes()[split]
    assert failures == set()


def test_single_turn_oracle_on_live_categories_fails_only_inconsistent_entries():
    categories = ["live_simple", "live_parallel", "live_parallel_multiple", "live_multiple"]
    failures, count = set(), 0
    for split in ("train", "eval"):
        found, n = run_single_oracle(agentgym.make(SINGLE, split=split, categories=categories))
        failures |= found
        count += n
    assert count == 258 + 16 + 24 + 1053
    assert failures == INCONSISTENT_SINGLE


@pytest.mark.parametrize("action", [
    "I would call math.factorial.",                                     # no call at all
    '<tool_call>{"name": "calculate_triangle_area", "arguments": {bad',  # malformed
    calls_message([("no_such_function", {"x": 1})]),                      # unknown function
    calls_message([("calculate_triangle_area", {"base": "10", "height": 5})]),  # wrong type
    calls_message([("calculate_triangle_area", {"base": 10, "height": 5})] * 2),  # extra call
])
def test_single_turn_wrong_answers_earn_nothing_and_end_the_episode(action):
    env = agentgym.make(SINGLE)
    env.reset(options={"task_id": "simple_python_0"})
    obs, reward, terminated, truncated, info = env.step(action)
    assert (reward, terminated, truncated) == (0.0, True, False)
    assert set(info["reward_components"]) == {"ast_match", "made_calls"}
    right = calls_message([("calculate_triangle_area", {"base": 10, "height": 5})])
    env.reset(options={"task_id": "simple_python_0"})
    obs, reward, *_ = env.step(right)
    assert reward == 1.0 and obs[-1] == {"role": "tool", "tool_call_id": "c0",
                                         "name": "calculate_triangle_area",
                                         "content": "Call recorded."}


def test_single_turn_adversarial_replies_are_near_misses_of_a_passing_answer():
    """The BFCL attacks of the conformance suite score 0, while the same calls sent properly
    (as a message, or as Hermes text with JSON) score 1: they fail for the lenience they try."""
    env = agentgym.make(SINGLE, split="eval")
    for seed in range(5):
        env.reset(seed=seed)
        task = env.task
        gold = reference_calls(task)
        hermes = "".join(f"<tool_call>{json.dumps({'name': n, 'arguments': a})}</tool_call>"
                         for n, a in gold)
        for control in (calls_message(gold), hermes):
            env.reset(seed=seed)
            assert env.step(control)[1] == 1.0, task.id
        for name, responder in env.adversarial_replies(task).items():
            env.reset(seed=seed)
            assert env.step(responder([], None))[1] == 0.0, (task.id, name)


# --- multi-turn env --------------------------------------------------------------------------

def ground_truth_plan(task):
    """The ground-truth calls of each user turn as (name, keyword arguments)."""
    classes = task.metadata["involved_classes"]
    instances = backend.make_instances(classes, task.metadata["initial_config"])
    owners = backend.method_owners(classes)
    return [[backend.bind_call(instances, owners, call) for call in turn] for turn in task.answer]


def play(env, task, plan):
    env.reset(options={"task_id": task.id})
    for index, turn in enumerate(plan):
        if turn:
            obs, reward, terminated, *_ = env.step(calls_message(turn, prefix=f"t{index}c"))
            assert not terminated and reward == 0.0
        obs, reward, terminated, truncated, info = env.step("Done.")
    assert terminated and not truncated
    return reward, info


def test_multi_turn_oracle_passes_every_consistent_entry():
    failures, count = set(), 0
    for split in ("train", "eval"):
        env = agentgym.make(MULTI, split=split)
        assert len(env.tasks) == BFCLMultiTurnEnv.split_sizes()[split]
        for task in env.tasks:
            reward, info = play(env, task, ground_truth_plan(task))
            count += 1
            if reward != 1.0:
                failures.add(task.id)
            else:
                assert info["reward_components"] == {"all_turns_pass": 1.0,
                                                     "turn_pass_fraction": 1.0}
    assert count == 200
    assert failures == INCONSISTENT_MULTI


def test_multi_turn_state_checker_detects_a_wrong_call():
    env = agentgym.make(MULTI, split="train")
    task = next(t for t in env.tasks if t.metadata["involved_classes"] == ["GorillaFileSystem"]
                and "mkdir" in json.dumps(t.answer))
    plan = ground_truth_plan(task)
    turn, index = next((t, i) for t, turn in enumerate(plan)
                       for i, (name, _) in enumerate(turn) if name == "mkdir")
    wrong = [list(calls) for calls in plan]
    wrong[turn][index] = ("mkdir", {"dir_name": "not_what_was_asked"})
    reward, info = play(env, task, wrong)
    assert reward == 0.0 and info["reward_components"]["turn_pass_fraction"] < 1.0
    verdicts = multi_turn_verdicts(env.trajectory().final_state, task.answer,
                                   [1] * len(task.answer))
    assert "state differs" in verdicts[turn].error


def test_multi_turn_verdicts_state_and_response_rules():
    turn = {"model_state": {"A": {"x": 1}}, "expected_state": {"A": {"x": 1}},
            "model_results": ["r1", "r2"], "expected_results": ["r2"]}
    record = {"turns": [turn, {**turn, "model_results": [], "expected_results": ["r1"]}]}
    assert [v.ok for v in multi_turn_verdicts(record, [["f()"], ["g()"]], [2, 1])] == [True, True]
    assert not multi_turn_verdicts(record, [["f()"], ["g()"]], [2, 0])[1].ok  # no call
    changed = {"turns": [{**turn, "model_state": {"A": {"x": 2}}}]}
    assert "state" in multi_turn_verdicts(changed, [["f()"]], [1])[0].error
    missing = {"turns": [{**turn, "expected_results": ["r3"]}]}
    assert "result" in multi_turn_verdicts(missing, [["f()"]], [1])[0].error
    assert multi_turn_verdicts({"turns": [turn]}, [["f()"], []], [1])[1].error == \
        "turn not finished"


@pytest.mark.parametrize("reply", ["", "I can't do that."])
def test_multi_turn_empty_policy_earns_nothing(reply):
    env = agentgym.make(MULTI, split="eval")
    env.reset(options={"task_index": 0})
    for _ in range(len(env.task.answer)):
        obs, reward, terminated, truncated, info = env.step(reply)
    assert terminated and reward == 0.0
    assert info["reward_components"]["all_turns_pass"] == 0.0


def test_multi_turn_malformed_calls_never_crash_the_episode():
    env = agentgym.make(MULTI, split=split_of("multi_turn_base_1"), max_turns=8)
    env.reset(options={"task_id": "multi_turn_base_1"})  # GorillaFileSystem
    bad = [
        '<tool_call>{"name": "cd", "arguments": {oops</tool_call>',                 # bad JSON
        calls_message([("rm_rf", {"path": "/"})]),                                 # unknown
        calls_message([("cd", {"folder": 3})]),                                    # wrong type
        calls_message([("cd", {"folder": "x", "timeout": 1})]),                    # extra arg
        calls_message([("_load_scenario", {})]),                                   # private
        calls_message([("cd", {"folder": "no_such_dir"})]),                        # API error
    ]
    for action in bad:
        obs, reward, terminated, truncated, _ = env.step(action)
        assert obs[-1]["role"] == "tool" and "rror" in obs[-1]["content"]
        assert not (terminated or truncated)
    obs, *_ = env.step(calls_message([("ls", {"a": True})]))
    assert "workspace" in obs[-1]["content"]


def test_backend_never_evaluates_model_text():
    instances = backend.make_instances(["MathAPI"], {})
    owners = backend.method_owners(["MathAPI"])
    assert backend.invoke(instances, owners, "add", {"a": 1, "b": 2}) == '{"result": 3}'
    for name in ("__class__", "_api_description", "eval", "__import__"):
        assert backend.invoke(instances, owners, name, {}).startswith("Error during execution")
    assert "capped" in backend.invoke(instances, owners, "power", {"base": 10, "exponent": 10**9})
    assert "capped" in backend.invoke(instances, owners, "logarithm",
                                      {"value": 2, "base": 10, "precision": 10**9})
    with pytest.raises(ValueError):
        backend.parse_call("add(a=__import__('os').system('id'), b=1)")
    assert backend.run_ground_truth(instances, owners, "add(1, b=2)") == '{"result": 3}'


# --- data, splits, registry ------------------------------------------------------------------

def test_splits_are_deterministic_and_keep_identical_questions_together():
    assert split_of("multi_turn_base_0") == split_of("multi_turn_base_0")
    assert {split_of(str(i)) for i in range(50)} == {"train", "eval"}
    questions: dict[str, set[str]] = {}
    for split in ("train", "eval"):
        for task in agentgym.make(SINGLE, split=split, categories=["multiple"]).tasks:
            questions.setdefault(json.dumps(task.prompt), set()).add(split)
    assert all(len(splits) == 1 for splits in questions.values())


@pytest.mark.parametrize("env_id", [MULTI, SINGLE])
def test_conformance(env_id):
    results = check(env_id)
    assert all(r.ok for r in results), [r for r in results if not r.ok]


def test_env_modules_import_without_bfcl_eval():
    code = ("import sys, agentgym.tasks.bfcl.multi_turn as m, agentgym.tasks.bfcl.single_turn "
            "as s; print(m.BFCLMultiTurnEnv.split_sizes(), s.BFCLSingleEnv.family, "
            "any(k.startswith('bfcl_eval') for k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().endswith("False")
