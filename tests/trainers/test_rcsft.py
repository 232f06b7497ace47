"""Return-conditioned SFT: the return labels, where they go in the chat, the conditioned policy,
and a killed run that resumes to the same state."""

import asyncio
import json

import pytest
from gates import TRAIN_INSTALL, require_module

require_module("torch", TRAIN_INSTALL)

from test_sft import DIGIT_ENV, killed_and_resumed  # noqa: E402

from agentgym.policy import SamplingParams  # noqa: E402
from agentgym.testing import FakePolicy  # noqa: E402
from agentgym.trainers.offline import eos_ids_of, replay  # noqa: E402
from agentgym.trainers.rcsft import (  # noqa: E402
    RCSFTConfig,
    ReturnConditionedPolicy,
    label_transform,
    labelled_sequences,
    return_label,
    target_return,
    train,
)
from agentgym.trainers.smoke import DigitEnv, char_tokenizer  # noqa: E402


def test_return_labels_round_and_parse_back():
    assert return_label(1) == "[return-to-go: 1.0]"
    assert return_label(0.26, decimals=1) == "[return-to-go: 0.3]"
    assert return_label(0.26, decimals=2) == "[return-to-go: 0.26]"
    assert target_return({"[return-to-go: 0.3]": 4, "[return-to-go: 1.0]": 1}) == 1.0


def test_the_label_goes_before_the_question_only():
    chat = [{"role": "system", "content": "sys"}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "more?"}]
    out = label_transform("[return-to-go: 1.0]", prompt_length=2)(chat)
    assert out[1]["content"] == "[return-to-go: 1.0]\n2+2?"
    assert [m["content"] for i, m in enumerate(out) if i != 1] == ["sys", "4", "more?"]
    assert chat[1]["content"] == "2+2?"  # the input is not modified
    assert label_transform("x", prompt_length=5)(chat[:2]) == chat[:2]
    with pytest.raises(ValueError):
        label_transform("x", prompt_length=0)


def test_the_conditioned_policy_sees_the_target_label():
    inner = FakePolicy(["ok"])
    policy = ReturnConditionedPolicy(inner, target=1.0, prompt_length=1)
    chat = [{"role": "user", "content": "Say 3."}]
    asyncio.run(policy.generate(chat, None, SamplingParams()))
    assert inner.requests[0][0][0]["content"] == "[return-to-go: 1.0]\nSay 3."


def test_labelled_sequences_carry_each_trajectory_return_in_the_prompt():
    env = DigitEnv(split="train")
    tokenizer = char_tokenizer()
    tasks = env.tasks[:2]

    async def go():
        played = [await replay(env, tasks[0].id, [*tasks[0].prompt, {
                      "role": "assistant", "content": str(tasks[0].answer) * 4}]),
                  await replay(env, tasks[1].id, [*tasks[1].prompt, {
                      "role": "assistant", "content": "ab"}])]
        return await labelled_sequences(played, env, tokenizer, eos_ids_of(None, tokenizer), 1)

    sequences, labels = asyncio.run(go())
    env.close()
    assert labels == {"[return-to-go: 1.0]": 1, "[return-to-go: 0.0]": 1}
    prompts = [tokenizer.decode(s.prompt_ids) for s in sequences]
    assert "[return-to-go: 1.0]\nSay" not in prompts[0]  # '[' is not in the char vocabulary
    assert prompts[0].count("<unk>") >= 2 and "return" in prompts[0] and "1.0" in prompts[0]
    assert "0.0" in prompts[1]
    assert [sum(s.loss_mask) for s in sequences] == [5, 3]  # the reply and its end token


def test_rcsft_resumes_after_a_kill(tmp_path):
    overrides = {"model": "tiny", "env_id": DIGIT_ENV, "lora": False, "engine": "hf",
                 "max_completion_length": 12, "rollout_tasks": 8, "num_generations": 2,
                 "learning_rate": 3e-3, "batch_size": 8, "micro_batch_size": 8,
                 "max_steps": 6, "save_steps": 2, "report_to": [], "output_dir": str(tmp_path)}
    straight, killed = killed_and_resumed("rcsft", RCSFTConfig, train, overrides, tmp_path)
    for run in (straight, killed):
        labels = json.loads((run / "rcsft" / "labels.json").read_text())
        assert sum(labels["labels"].values()) == 16
        assert labels["target_return"] == target_return(labels["labels"])
    assert (straight / "rcsft" / "trajectories.jsonl").read_text() == \
        (killed / "rcsft" / "trajectories.jsonl").read_text()
