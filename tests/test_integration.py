"""Real episodes end to end: the embedded engine (SmolLM2) playing a real env through the
rollout engine, with token-level data that the trainer can use as is."""

import asyncio

from gates import TRAIN_INSTALL, require_module

require_module("transformers", TRAIN_INSTALL)

import agentgym  # noqa: E402
from agentgym.policy import SamplingParams  # noqa: E402
from agentgym.rollout import RolloutConfig, RolloutEngine  # noqa: E402
from agentgym.tokens import build_token_sequence  # noqa: E402


def test_embedded_engine_plays_calculator_with_token_in_token_out():
    from agentgym.policies.hf_engine import HFEngine

    policy = HFEngine.from_pretrained(None, max_batch_size=8)
    policy.set_weights_version(7)
    config = RolloutConfig(group_size=2, max_concurrent=4, turn_timeout_s=300,
                           sampling=SamplingParams(temperature=1.0, max_tokens=48, seed=1))
    engine = RolloutEngine(lambda: agentgym.make("agentgym/Calculator-v0", split="eval",
                                                 max_turns=2), policy, config)

    async def play():
        try:
            return await engine.run_groups(["calc-eval-0", "calc-eval-1"])
        finally:
            await engine.aclose()
            await policy.aclose()

    groups = asyncio.run(play())
    trajectories = [t for g in groups for t in g.trajectories]
    assert len(trajectories) == 4
    for trajectory in trajectories:
        assert trajectory.error is None, trajectory.error
        assert trajectory.reward in (0.0, 1.0)
        assert set(trajectory.reward_components) == {"correct", "used_tool", "valid_tool_call",
                                                     "turns"}
        sequence = build_token_sequence(trajectory)  # the template has the prefix property
        assert sequence.num_policy_tokens == sum(len(t.completion_token_ids)
                                                 for t in trajectory.turns)
        assert len(sequence.logprobs) == len(sequence.response_ids)
        assert all(lp <= 0.0 for lp in sequence.logprobs)
        assert set(sequence.weight_versions) == {7}
        if len(trajectory.turns) > 1:  # tool output sits between the turns, masked out
            assert 0 in sequence.loss_mask
    # the same seed gives the two samples of a group different (seed + index) streams
    texts = [tuple(t.final_text for t in g.trajectories) for g in groups]
    assert any(a != b for a, b in texts)
