"""SFT: the loss against a hand computation, the masks of replayed chats, the batch order, and a
killed run that resumes to the same state (the shared offline loop of trainers/offline.py)."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from gates import TRAIN_INSTALL, require_module, require_train_stack

torch = require_module("torch", TRAIN_INSTALL)

import agentgym  # noqa: E402
from agentgym.tokens import TokenSequence  # noqa: E402
from agentgym.trainers.config import load_config  # noqa: E402
from agentgym.trainers.models import load_weights  # noqa: E402
from agentgym.trainers.offline import (  # noqa: E402
    batch_indices,
    chat_sequence,
    eos_ids_of,
    replay,
    sequence_nll,
    share_prefix,
)
from agentgym.trainers.runs import PAUSE_AFTER_CHECKPOINT, RunDir  # noqa: E402
from agentgym.trainers.sft import SFTConfig, train  # noqa: E402
from agentgym.trainers.smoke import DigitEnv, char_tokenizer, tiny_model  # noqa: E402
from agentgym.trajectory_io import TrajectoryWriter  # noqa: E402

DIGIT_ENV = "agentgym.trainers.smoke:DigitEnv"


def seq(prompt, response, mask):
    return TokenSequence(tuple(prompt), tuple(response), tuple(mask), (0.0,) * len(response), ())


def hand_nll(model, sequences):
    """-sum of log p over masked tokens / masked tokens, one full forward per sequence."""
    total, count = 0.0, 0
    for s in sequences:
        ids = torch.tensor([list(s.prompt_ids) + list(s.response_ids)])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        for j, (token, m) in enumerate(zip(s.response_ids, s.loss_mask, strict=True)):
            if m:
                total -= float(logp[len(s.prompt_ids) + j - 1, token])
                count += 1
    return total / count


def test_sft_loss_is_the_masked_token_mean_nll():
    model = tiny_model(char_tokenizer(), seed=1)
    batch = [seq([1, 5, 6, 7], [8, 9, 10, 2], [1, 1, 0, 1]),
             seq([1, 5, 11], [12, 13, 2], [0, 1, 1]),
             seq([1, 5, 6, 14], [15, 2], [1, 1])]
    with torch.no_grad():
        # micro-batches of 2 + 1 rows: their shares sum to the batch's token mean
        first, _ = sequence_nll(model, batch[:2], batch, pad_id=0)
        second, _ = sequence_nll(model, batch[2:], batch, pad_id=0)
        expected = hand_nll(model, batch)
        assert float(first + second) == pytest.approx(expected, rel=1e-5)
        # one sequence alone: only its three masked tokens count (5 - 2 masked out)
        alone, _ = sequence_nll(model, batch[:1], batch[:1], pad_id=0)
        assert float(alone) == pytest.approx(hand_nll(model, batch[:1]), rel=1e-5)
        # moving the unshared prompt tail into the response (mask 0) changes nothing
        shared = share_prefix(batch)
        assert {s.prompt_ids for s in shared} == {(1, 5)}
        assert shared[0].response_ids == (6, 7, 8, 9, 10, 2)
        assert shared[0].loss_mask == (0, 0, 1, 1, 0, 1)
        again, _ = sequence_nll(model, shared, shared, pad_id=0)
        assert float(again) == pytest.approx(expected, rel=1e-5)


def test_share_prefix_keeps_prompts_that_share_nothing():
    batch = [seq([1, 2], [3], [1]), seq([4, 2], [3], [1])]
    assert share_prefix(batch) == batch


def test_batch_order_is_a_seeded_permutation_per_epoch():
    steps = [batch_indices(10, 4, step, seed=3) for step in range(1, 6)]  # 20 = two epochs
    stream = [i for s in steps for i in s]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != list(range(10))  # shuffled
    assert batch_indices(10, 4, 3, seed=3) == steps[2]  # a function of (seed, step) alone
    assert batch_indices(10, 4, 1, seed=4) != steps[0]
    assert batch_indices(5, 2, 2, seed=0, shuffle=False) == [2, 3]
    with pytest.raises(ValueError, match="no examples"):
        batch_indices(0, 4, 1, seed=0)


def test_replayed_demonstration_masks_only_the_assistant_tokens():
    require_train_stack()
    from transformers import AutoTokenizer

    from agentgym.policies.model_prep import prepare_model

    tokenizer = AutoTokenizer.from_pretrained(prepare_model())
    env = agentgym.make("agentgym/Calculator-v0", split="train", demos=2, max_turns=2)
    task = env.tasks[3]

    async def go():
        return await chat_sequence(env, task.id, env.demonstrate(task), tokenizer,
                                   eos_ids_of(None, tokenizer))

    sequence, trajectory = asyncio.run(go())
    env.close()
    assert trajectory.reward == 1.0
    answer = task.metadata["answer_exact"]
    trained = tokenizer.decode([t for t, m in zip(sequence.response_ids, sequence.loss_mask,
                                                  strict=True) if m])
    masked = tokenizer.decode([t for t, m in zip(sequence.response_ids, sequence.loss_mask,
                                                 strict=True) if not m])
    expression = task.metadata["expression"]
    call = f'{{"name": "calculate", "arguments": {{"expression": "{expression}"}}}}'
    assert trained == f"<tool_call>\n{call}\n</tool_call><|im_end|><answer>{answer}</answer>" \
                      "<|im_end|>"
    assert masked == f"\n<|im_start|>user\n<tool_response>\n{answer}\n</tool_response>" \
                     "<|im_end|>\n<|im_start|>assistant\n"
    # the prompt is what the embedded engine renders for the task (question last)
    assert tokenizer.decode(sequence.prompt_ids).endswith(
        f"{task.prompt[-1]['content']}<|im_end|>\n<|im_start|>assistant\n")


def test_replay_refuses_a_chat_of_another_prompt():
    env = agentgym.make("agentgym/Calculator-v0", split="train", demos=0)
    other = agentgym.make("agentgym/Calculator-v0", split="train", demos=2)
    task = other.tasks[0]
    with pytest.raises(ValueError, match="does not start with the prompt"):
        asyncio.run(replay(env, task.id, other.demonstrate(task)))
    env.close()
    other.close()


# --- end to end on the smoke setting (tiny model, DigitEnv) ----------------------------------

def digit_file(path, count=30):
    """A trajectory JSONL of DigitEnv chats that answer with the digit, without token ids."""
    env = DigitEnv(split="train")

    async def write():
        with TrajectoryWriter(path) as writer:
            for task in env.tasks[:count]:
                chat = [*task.prompt, {"role": "assistant", "content": str(task.answer) * 6}]
                writer.write(await replay(env, task.id, chat))

    asyncio.run(write())
    env.close()
    return path


def smoke_overrides(tmp_path, data):
    return {"model": "tiny", "env_id": DIGIT_ENV, "lora": False, "engine": "hf",
            "data": [str(data)], "min_reward": 0.9, "learning_rate": 3e-3, "batch_size": 8,
            "micro_batch_size": 4, "max_steps": 6, "save_steps": 2, "report_to": [],
            "output_dir": str(tmp_path)}


def state_of(run, step):
    model = tiny_model(char_tokenizer())
    load_weights(model, run / "checkpoints" / f"step_{step}" / "model", lora=False)
    return model.state_dict()


def killed_and_resumed(algorithm, config_cls, train_fn, overrides, tmp_path, kill_at=4):
    """Train straight, then again in a subprocess SIGKILLed once its step-``kill_at``
    checkpoint exists, resumed here; returns (straight run, resumed run)."""
    steps = overrides["max_steps"]
    straight = train_fn(load_config(config_cls, None, {**overrides, "run_name": "straight"}))
    args = [sys.executable, "-m", "agentgym.trainers.cli", "--algorithm", algorithm,
            "--run_name", "killed"]
    for key, value in overrides.items():
        args += [f"--{key}", repr(value) if isinstance(value, list | dict) else str(value)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1",  # same numerics
                                    PAUSE_AFTER_CHECKPOINT: str(kill_at)})
    killed = tmp_path / "killed"
    deadline = time.time() + 900  # a failure detector: a busy machine trains slowly
    while not (killed / "checkpoints" / f"step_{kill_at}" / "state.json").exists():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.time() < deadline, f"no step-{kill_at} checkpoint in time"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "checkpoints" / f"step_{steps}").exists()
    resumed = train_fn(load_config(config_cls, killed / "config.yaml"), resume=killed)
    assert resumed == killed
    a, b = RunDir(straight).metrics(), RunDir(killed).metrics()
    assert [r["step"] for r in b] == list(range(1, steps + 1))
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-6)
    sa, sb = state_of(straight, steps), state_of(killed, steps)
    for key in sa:
        assert torch.allclose(sa[key], sb[key], atol=1e-6), key
    return straight, killed


def test_sft_on_a_trajectory_file_learns_and_resumes_after_a_kill(tmp_path):
    data = digit_file(tmp_path / "digits.jsonl")
    straight, _ = killed_and_resumed("sft", SFTConfig, train,
                                     smoke_overrides(tmp_path, data), tmp_path)
    rows = RunDir(straight).metrics()
    assert rows[-1]["loss"] < 0.85 * rows[0]["loss"], [r["loss"] for r in rows]
    for key in ("loss", "grad_norm", "tokens", "examples", "epoch", "time/train",
                "learning_rate"):
        assert key in rows[-1], key
    assert rows[0]["examples"] == 30 and rows[0]["tokens"] == 8 * 7  # 6 digits + end token
    initial = tiny_model(char_tokenizer()).state_dict()
    final = state_of(straight, 6)
    assert sum(not torch.equal(initial[k], final[k]) for k in final) >= len(final) // 2


def test_sft_without_examples_is_a_clear_error(tmp_path):
    data = digit_file(tmp_path / "digits.jsonl", count=3)
    config = load_config(SFTConfig, None, {**smoke_overrides(tmp_path, data),
                                           "min_reward": 2.0})
    with pytest.raises(ValueError, match="no training examples"):
        train(config)
    config = load_config(SFTConfig, None, {**smoke_overrides(tmp_path, data),
                                           "data": ["demonstrations"]})
    with pytest.raises(ValueError, match="has no demonstrations"):
        train(config)


@pytest.mark.parametrize("env_id", ["agentgym/Calculator-v0", "agentgym/HttpAPI-v0",
                                    "agentgym/BFCLSingle-v0", "agentgym/CodeHumanEval-v0"])
def test_demonstrations_replay_to_full_reward(env_id):
    if env_id == "agentgym/CodeHumanEval-v0":
        from gates import require_docker

        require_docker()
    env = agentgym.make(env_id, split="train")
    tasks = env.tasks[:: max(1, len(env.tasks) // 6)][:6]  # spread over kinds/categories

    async def go():
        try:
            return [await replay(env, task.id, env.demonstrate(task)) for task in tasks]
        finally:
            await env.aclose()

    for task, trajectory in zip(tasks, asyncio.run(go()), strict=True):
        assert trajectory.error is None, (task.id, trajectory.error)
        assert trajectory.terminated and trajectory.reward == 1.0, (task.id, trajectory.messages)
        assert trajectory.turns[0].tool_calls or env_id.endswith("HumanEval-v0")


def test_the_base_env_has_no_demonstrations():
    env = DigitEnv(split="train")
    assert env.demonstrate(env.tasks[0]) is None
