"""LLM-guided exploration (agentgym/guided.py): seeded guide-turn choice, decay, the guide's
turns in the policy's tokens with importance weights, guide failures as error records.

Policies and guides are real OpenAI-compatible HTTP servers (StubServer) with scripted replies.
"""

import asyncio
import json
import math

import pytest

import agentgym
from agentgym.errors import EpisodeTimeoutError
from agentgym.guided import (
    GUIDE_VERSION,
    DemonstrationGuide,
    GuidedPolicy,
    GuideSettings,
    HintedGuide,
    guide_turn_indices,
    guided_policy,
)
from agentgym.policies.openai_client import OpenAIPolicy
from agentgym.policy import SamplingParams
from agentgym.rollout import RolloutConfig, RolloutEngine
from agentgym.testing.stub_server import StubServer
from agentgym.tokens import build_token_sequence
from agentgym.types import Trajectory, Turn
from tests.gates import require_module, require_train_stack

CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "c1", "type": "function",
     "function": {"name": "calculate", "arguments": json.dumps({"expression": "6*7"})}}]}


def calculator_env():
    return agentgym.make("agentgym/Calculator-v0", split="train", demos=0, max_turns=2,
                         num_tasks=20)


def prose(request):
    return "I think it is about 12."


def run(coro):
    return asyncio.run(coro)


def test_guide_turns_are_chosen_by_a_seeded_probability():
    with StubServer(prose) as p_server, StubServer(lambda r: "guide") as g_server:
        async def choices(p, seed, episodes=400):
            guided = GuidedPolicy(OpenAIPolicy(p_server.base_url, "p"),
                                  OpenAIPolicy(g_server.base_url, "g"), p, seed=seed)
            chat = [{"role": "user", "content": "q"}]
            picks = [guided.guide_writes(chat * (1 + turn), SamplingParams(seed=s))
                     for s in range(episodes) for turn in range(2)]
            return picks

        picks = run(choices(0.3, seed=7))
        share = sum(picks) / len(picks)
        assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(picks))  # 4 sigma
        assert run(choices(0.3, seed=7)) == picks  # same seeds: the same turns
        assert run(choices(0.3, seed=8)) != picks
        assert not any(run(choices(0.0, seed=7))) and all(run(choices(1.0, seed=7)))

        async def served():  # the chosen side answers, over HTTP
            guided = GuidedPolicy(OpenAIPolicy(p_server.base_url, "p"),
                                  OpenAIPolicy(g_server.base_url, "g"), 1.0)
            texts = [(await guided.generate([{"role": "user", "content": "q"}], None,
                                            SamplingParams(seed=1)))[0] for _ in range(3)]
            guided.set_p(0.0)
            texts.append((await guided.generate([{"role": "user", "content": "q"}], None,
                                                SamplingParams(seed=1)))[0])
            await guided.aclose()
            return texts, guided

        completions, guided = run(served())
        assert [c.text for c in completions] == ["guide"] * 3 + ["I think it is about 12."]
        assert [c.weight_version for c in completions][:3] == [GUIDE_VERSION] * 3
        assert (guided.guide_turns, guided.policy_turns) == (3, 1)
        assert g_server.requests == 3


def test_p_explore_decays_per_step_and_settings_are_validated():
    settings = GuideSettings.from_dict({"p_explore": 0.5, "decay": 0.9})
    assert [round(settings.p_at(s), 6) for s in (1, 2, 3, 11)] == \
        [0.5, 0.45, 0.405, round(0.5 * 0.9 ** 10, 6)]
    assert GuideSettings(p_explore=0.3).p_at(50) == 0.3  # decay 1: constant
    with pytest.raises(ValueError, match="unknown guide settings"):
        GuideSettings.from_dict({"p_exploer": 0.5})
    with pytest.raises(ValueError, match="p_explore"):
        GuideSettings(p_explore=1.5)
    with pytest.raises(ValueError, match="decay"):
        GuideSettings(decay=0.0)
    with pytest.raises(ValueError, match="base_url"):
        GuideSettings(kind="endpoint")
    with pytest.raises(ValueError, match="kind"):
        GuideSettings(kind="oracle")
    with pytest.raises(ValueError, match="p_explore"):
        GuidedPolicy(None, None, 2.0)


def test_demonstration_guide_solves_calculator_episodes_marked_as_guide_turns():
    with StubServer(prose) as server:
        async def play(p):
            guided = guided_policy({"kind": "demonstration", "p_explore": p},
                                   OpenAIPolicy(server.base_url, "p"), calculator_env)
            engine = RolloutEngine(calculator_env, guided, RolloutConfig(
                group_size=4, sampling=SamplingParams(seed=3)))
            group = await engine.run_group("calc-train-5")
            await engine.aclose()
            await guided.aclose()
            return group

        solved = run(play(1.0))
        assert all(t.reward == 1.0 and guide_turn_indices(t) == [0, 1]
                   for t in solved.trajectories)
        assert '"calculate"' in solved.trajectories[0].turns[0].assistant["content"]
        alone = run(play(0.0))  # the policy alone: prose, no tool call, reward 0 (not an error)
        assert all(t.reward == 0.0 and t.error is None and guide_turn_indices(t) == []
                   for t in alone.trajectories)


def test_guide_failures_are_error_records_not_zeros_or_hangs():
    async def play(guide, turn_timeout_s=30.0):
        with StubServer(prose) as server:
            guided = GuidedPolicy(OpenAIPolicy(server.base_url, "p"), guide, 1.0)
            engine = RolloutEngine(calculator_env, guided, RolloutConfig(
                group_size=1, turn_timeout_s=turn_timeout_s, sampling=SamplingParams(seed=0)))
            trajectory = await engine.run_episode({"task_id": "calc-train-1"})
            await engine.aclose()
            return trajectory

    down = run(play(OpenAIPolicy("http://127.0.0.1:9/v1", "g", max_retries=0, timeout=5.0)))
    assert down.reward is None and down.error is not None
    assert down.error.type == "GuideError" and "guide failed" in down.error.message

    other_env = agentgym.make("agentgym/Calculator-v0", split="eval", demos=0, num_tasks=3)
    unknown = run(play(DemonstrationGuide(other_env)))  # no demonstration for this chat
    assert unknown.reward is None and unknown.error.type == "GuideError"

    def slow(request):
        import time
        time.sleep(3.0)
        return "too late"

    with StubServer(slow) as slow_server:
        hung = run(play(OpenAIPolicy(slow_server.base_url, "g"), turn_timeout_s=0.5))
    assert hung.reward is None and hung.error.type == EpisodeTimeoutError.__name__


def test_hinted_guide_puts_the_hint_in_the_system_prompt():
    seen = []

    def record(request):
        seen.append(request["messages"][0])
        return CALL

    with StubServer(record) as server:
        async def ask():
            guide = HintedGuide(OpenAIPolicy(server.base_url, "g"), "Call calculate first.")
            return await guide.generate([{"role": "system", "content": "Solve."},
                                         {"role": "user", "content": "6*7?"}], None,
                                        SamplingParams())

        completion = run(ask())[0]
    assert seen[0]["content"] == "Solve.\n\nCall calculate first."
    assert completion.tool_calls[0].name == "calculate"


def guided_trajectory(tokenizer, server):
    """A one-turn episode written by the guide (native tool call from an HTTP guide)."""
    chat = [{"role": "system", "content": "Solve."}, {"role": "user", "content": "6*7?"}]

    async def one():
        guided = GuidedPolicy(OpenAIPolicy(server.base_url, "p"),
                              OpenAIPolicy(server.base_url, "g"), 1.0, tokenizer=tokenizer)
        return (await guided.generate(chat, None, SamplingParams(seed=0)))[0]

    completion = run(one())
    turn = Turn(index=0, assistant=completion.to_action(),
                prompt_token_ids=completion.prompt_token_ids,
                completion_token_ids=completion.completion_token_ids,
                logprobs=completion.logprobs, weight_version=completion.weight_version)
    return chat, completion, Trajectory(env_id="e", task_id="t", messages=(), turns=(turn,))


def test_guide_turns_are_in_policy_tokens_with_behaviour_logprob_zero():
    require_module("transformers", "pip install transformers")
    from agentgym.policies.chat_tokens import render_prompt
    from agentgym.trainers.smoke import char_tokenizer

    tokenizer = char_tokenizer()
    with StubServer(lambda r: CALL) as server:
        chat, completion, trajectory = guided_trajectory(tokenizer, server)
    assert completion.text.startswith('<tool_call>\n{"name": "calculate"')
    assert list(completion.prompt_token_ids) == render_prompt(tokenizer, chat, None)
    encoded = tuple(tokenizer(completion.text, add_special_tokens=False)["input_ids"])
    assert completion.completion_token_ids == encoded + (tokenizer.convert_tokens_to_ids(
        "<|im_end|>"),)  # the guide's text, closed by the policy's end of turn
    sequence = build_token_sequence(trajectory)
    assert sequence.loss_mask == (1,) * len(completion.completion_token_ids)  # trained...
    assert sequence.logprobs == (0.0,) * len(completion.completion_token_ids)  # ...with mu = 1
    assert sequence.weight_versions == (GUIDE_VERSION,)


def test_guide_tokens_get_the_importance_weighted_gradient():
    """With log mu = 0 recorded, the GRPO loss's ratio is pi_theta itself: for A > 0 the
    gradient is A * pi * grad log pi (= A * grad pi); for A < 0 the clip zeroes it."""
    require_train_stack()
    import torch

    from agentgym.trainers.losses import clipped_policy_loss

    probs = torch.tensor([[0.02, 0.5, 0.7]])  # guide tokens: pi < 1 - epsilon
    for advantage, expected in ((1.5, -1.5 * probs), (-1.5, torch.zeros_like(probs))):
        logp = probs.log().clone().requires_grad_(True)
        loss, _ = clipped_policy_loss(logp, torch.zeros_like(logp), torch.tensor([advantage]),
                                      0.2, 0.28)
        loss.sum().backward()
        assert torch.allclose(logp.grad, expected)  # d loss / d log pi = -A * rho, rho = pi


def test_trainer_config_wraps_the_policy_and_rejects_staleness():
    require_train_stack()
    from agentgym.trainers.common import make_rollout_engine
    from agentgym.trainers.grpo import GRPOConfig

    with StubServer(prose) as server:
        policy = OpenAIPolicy(server.base_url, "p")
        config = GRPOConfig(env_id="agentgym/Calculator-v0",
                            env_kwargs={"demos": 0, "num_tasks": 4},
                            guide={"kind": "demonstration", "p_explore": 0.5, "decay": 0.9})
        engine = make_rollout_engine(config, policy, group_size=2)
        assert isinstance(engine.policy, GuidedPolicy) and engine.policy.p_explore == 0.5
        stale = GRPOConfig(env_kwargs={"demos": 0}, max_staleness=1,
                           guide={"kind": "demonstration"})
        with pytest.raises(ValueError, match="max_staleness"):
            make_rollout_engine(stale, policy, group_size=2)


def test_grpo_steps_train_on_guide_turns_with_decaying_p(tmp_path):
    """Two GRPO steps (tiny model) with an endpoint guide: step 1 (p = 1) is all guide turns,
    trained on (policy_tokens > 0, a gradient); step 2 uses p = 1 * 0.5."""
    require_train_stack()
    from agentgym.trainers.grpo import GRPOConfig, train

    def guide(request):  # a different share of the requested digit per task and call
        digit = next(c for c in request["messages"][-1]["content"] if c.isdigit())
        guide.calls += 1
        return digit * (guide.calls % 4) + "x" * (4 - guide.calls % 4)
    guide.calls = 0

    with StubServer(guide) as server:
        config = GRPOConfig(
            model="tiny", env_id="agentgym.trainers.smoke:DigitEnv", engine="hf", lora=False,
            num_generations=4, tasks_per_step=2, max_completion_length=8, max_steps=2,
            micro_batch_size=8, learning_rate=1e-3, save_steps=2, report_to=[], log_samples=8,
            output_dir=str(tmp_path), run_name="guided",
            guide={"kind": "endpoint", "base_url": server.base_url, "p_explore": 1.0,
                   "decay": 0.5, "seed": 0})
        run = train(config)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    first = [s for s in samples if s["step"] == 1]
    assert first and all(t["weight_version"] == GUIDE_VERSION
                         for s in first for t in s["turns"])
    assert rows[0]["policy_tokens"] > 0 and rows[0]["grad_norm"] > 0  # guide tokens trained
    assert rows[0]["guide_tokens"] == rows[0]["policy_tokens"]  # p = 1: all written by the guide
    second = [t["weight_version"] for s in samples if s["step"] == 2 for t in s["turns"]]
    assert 0 < second.count(GUIDE_VERSION) < len(second)  # p = 0.5 at step 2
