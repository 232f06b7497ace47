"""GRPO step time and tokens/s: agentgym's trainer vs TRL's ``GRPOTrainer``, side by side.

    .venv/bin/python benchmarks/trainer_vs_trl.py [--steps 5] [--warmup 2] [--tasks-per-step 2]
                                                  [--rounds 1] [--threads 1] [--only ours|trl]
                                                  [--device auto|cpu|cuda] [--dtype auto|...]
                                                  [--random-init FOLDER] [--max-tokens 32]

Needs TRL in the venv (``.venv/bin/pip install trl``, checked with ``--dry-run`` first so that it
keeps torch and numpy). Not a timed test: the figures depend on the machine and its load, which
is printed (``os.getloadavg``) next to them.

What is compared, in one process, one after the other (``--rounds 2`` runs ours, TRL, TRL, ours):

* model: SmolLM2-135M-Instruct, the prepared folder (``resolve_model(None)``), float32 on the
  CPU. ``--random-init FOLDER`` instead builds a seeded random-init model from the folder's
  ``config.json`` (and its tokenizer), saved once and loaded by both sides: that is how a GPU
  machine without model weights runs the SmolLM2-135M and -1.7B architectures
  (``benchmarks/gpu_check.sh``). ``--device``/``--dtype`` put both sides on the same device in
  the same dtype (``auto``: CUDA when present, bf16 there, fp32 on the CPU); on CUDA the peak
  GPU memory of each side is reported too;
* prompts: Calculator-v0's train questions as plain single-turn chats (a system prompt asking
  for ``<answer>N</answer>``, no tools), rendered by the same tokenizer and chat template. Each
  step sees the *same* prompts in the same order on both sides: the benchmark replays our
  trainer's task sampler (``default_rng(seed).integers``) to build TRL's dataset, which TRL
  reads in order (``shuffle_dataset=False``); the task ids our trainer drew are checked;
* reward: one pure function of the completion text on both sides: 1 for the right number
  plus 0.5 x the share of digit characters (dense, so groups almost never have zero variance;
  our trainer skips zero-variance groups, TRL does not, and a sparse reward would make our
  train phase look cheaper than it is);
* GRPO settings: G = 8 completions per prompt, ``tasks_per_step`` prompts per optimizer step,
  at most 32 completion tokens, temperature 1, top-p 1, no top-k, beta = 0 (no reference
  model), one optimizer step per batch (``num_iterations = 1``), DAPO token-mean loss,
  epsilon 0.2 / 0.28, std-scaled group advantages;
* optimizer: AdamW (torch), lr 1e-5, no weight decay, constant schedule, no warm-up, grad-norm
  clip 1.0; LoRA r=16, alpha=32, no dropout on q/k/v/o/gate/up/down projections (peft);
  micro-batches of 8 sequences with gradient accumulation (ours ``micro_batch_size=8``; TRL
  ``per_device_train_batch_size=8``, ``gradient_accumulation_steps = tasks_per_step``, so
  TRL also generates the whole step's batch in one ``generate`` call).

Measured for each side, over ``--steps`` steps after ``--warmup`` steps that are not timed:

* step time: the wall time between the ends of consecutive optimizer steps (everything the
  loop does: generation, scoring, forward/backward, optimizer, logging);
* completion tokens: the tokens each completion really has (up to and including EOS);
* tokens/s = completion tokens / step time;
* CPU seconds per step (``time.process_time``, all threads of the process) and tokens per
  CPU-second: on a machine shared with other jobs the wall time mostly measures how much of a
  core the scheduler granted, while the CPU time of the same work stays nearly constant;
* split: *generate* (ours: the rollout phase, ``time/generate`` in ``metrics.jsonl``; TRL: its
  ``_generate`` method: tokenising, ``model.generate``, decoding), of which *model.generate* is
  the model call alone (ours: ``HFEngine._run_batch``; TRL: ``_generate_single_turn``);
  *score* (ours: ``time/score`` + ``time/sync``; TRL: the rest of
  ``_generate_and_score_completions``: rewards, advantages, padding); *train* (the rest of the
  step: forward/backward/optimizer, plus each side's bookkeeping). The methods are wrapped on
  the instance or class in this process only; nothing in either library is edited.

Threads: ``--threads`` (default 1) sets torch's intra-op threads for both sides. On the 2-core
development machine, loaded by other jobs (load average 6-10), two OpenMP threads spin at
every barrier while their partner is descheduled: the same 8 x 32-token ``generate`` took
2.8 s or 142 s wall (5.5 or 73 CPU-s) from one call to the next, which makes any comparison
noise. With one thread the same call costs ~4 CPU-s every time. On an idle machine, pass
``--threads 2``.

Where ours is faster: the G completions of a prompt share it. Our engine prefills each
distinct prompt once and gathers its key/value cache to the G rows; our trainer runs each
distinct prompt once per micro-batch and the G responses on its cache (the same gradient; see
``trainers/batch.py``). TRL repeats the prompt G times in both. The prompt here (~63 tokens)
is twice the completion, so this is most of the difference.

Unavoidable differences:

* the samples differ (each side draws its own tokens), so completion lengths differ a little;
  tokens/s normalises for it;
* TRL samples with transformers' built-in sampler; our engine samples row by row with a
  seeded generator per row and records each token's logprob (it needs them for the
  importance ratio); TRL, on-policy with ``num_iterations = 1``, records none;
* ours runs episodes through the env/rollout engine (async, per-episode env objects,
  trajectories, a run folder with metrics and samples); TRL runs its own loop through
  ``transformers.Trainer``/accelerate. Both are each library's normal path;
* TRL's own defaults that are not GRPO/optimizer semantics are turned off to make its step as
  cheap as ours: ``gradient_checkpointing=False`` (TRL's default is True, which would cost
  TRL a recompute), ``bf16=False`` (TRL's default is True), no logging to trackers, no saves.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agentgym.env import AgentEnv
from agentgym.rewards import Reward, Rubric
from agentgym.rewards.verifiable import extract_answer, last_number
from agentgym.tasks.calculator.problems import split_problems
from agentgym.types import Split, Task, Trajectory

SYSTEM_PROMPT = ("Solve the arithmetic word problem. Reply with the final number only, "
                 "like <answer>42</answer>.")
NUM_TASKS = 64
SEED = 0
G = 8
MAX_TOKENS = 32
MICRO_BATCH = 8
LEARNING_RATE = 1e-5
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj",
                           "gate_proj"]}


@dataclass(frozen=True)
class Setup:
    """What both sides run on: the model folder, device, dtype and completion length."""

    model: str = "smollm2"
    label: str = "SmolLM2-135M-Instruct"
    device: str = "cpu"
    dtype: str = "float32"
    max_tokens: int = MAX_TOKENS
    dense: str = "digits"

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"


def resolve_setup(args: argparse.Namespace, workdir: Path) -> Setup:
    """Pick device and dtype (``auto``), and build the random-init model if asked."""
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = args.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    setup = Setup(device=device, dtype=dtype, max_tokens=args.max_tokens)
    if args.random_init:
        folder = random_init_model(Path(args.random_init), workdir / "random-init", dtype)
        label = f"random-init {Path(args.random_init).name}"
        setup = replace(setup, model=str(folder), label=label, dense="letters")
    return setup


def random_init_model(source: Path, out: Path, dtype: str) -> Path:
    """Save a seeded random-init model of ``source/config.json`` with ``source``'s tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(str(source))
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(out))
    return out


def peak_memory_gib(device: str) -> float:
    """Peak allocated GPU memory since the last reset (NaN on the CPU)."""
    import torch

    if not device.startswith("cuda"):
        return float("nan")
    return torch.cuda.max_memory_allocated() / 2**30


def reset_peak_memory(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# --- the shared task: prompts and reward ----------------------------------------------------

def text_reward(text: str, answer: float, dense: str = "digits") -> float:
    """1 for the right final number, plus 0.5 x the share of ``dense`` characters: digits for
    a trained model; lowercase letters for a random-init one, whose text has almost no digits
    (a group of equal rewards is skipped by our trainer, so it needs variance to train)."""
    given = last_number(extract_answer(text))
    correct = given is not None and math.isclose(given, answer, rel_tol=1e-6, abs_tol=1e-9)
    wanted = str.isdigit if dense == "digits" else str.islower
    share = sum(wanted(c) for c in text) / max(len(text), 1)
    return float(correct) + 0.5 * share


def load_plain_tasks(count: int = NUM_TASKS) -> list[Task]:
    """Calculator-v0's first ``count`` train questions as plain chats (no tools)."""
    problems = split_problems("train", count, train_size=2000)
    return [Task(id=f"plain-calc-{i}", split="train", answer=float(answer),
                 prompt=({"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": question}))
            for i, (question, _, answer) in enumerate(problems)]


class PlainCalculatorEnv(AgentEnv):
    """One-turn arithmetic questions without tools; reward :func:`text_reward`."""

    def __init__(self, dense: str = "digits", **kwargs: Any):
        super().__init__(max_turns=1, **kwargs)
        self.dense = dense

    def _reward(self, trajectory: Trajectory, task: Task) -> float:
        return text_reward(trajectory.final_text, float(task.answer), self.dense)

    def load_tasks(self, split: Split) -> list[Task]:
        return load_plain_tasks()

    @property
    def rubric(self) -> Rubric:
        return Rubric([Reward("score", self._reward, 1.0)])


def drawn_task_indices(steps: int, tasks_per_step: int) -> list[int]:
    """The task indices our trainer draws, step by step (replays ``grpo.one_step``'s sampler)."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    return [int(i) for _ in range(steps) for i in rng.integers(NUM_TASKS, size=tasks_per_step)]


# --- measurements ---------------------------------------------------------------------------

@dataclass
class StepTimes:
    """Per timed step: wall time, completion tokens and the phase split (seconds)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: list[float] = field(default_factory=list)
    generate: list[float] = field(default_factory=list)
    model_generate: list[float] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    train: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    peak_gib: list[float] = field(default_factory=list)

    def extend(self, other: StepTimes) -> None:
        for name in self.__dataclass_fields__:
            getattr(self, name).extend(getattr(other, name))

    def summary(self) -> dict[str, float]:
        wall = sum(self.wall)
        return {"steps": len(self.wall), "step_s": statistics.mean(self.wall),
                "step_s_median": statistics.median(self.wall),
                "tokens_per_step": statistics.mean(self.tokens),
                "tokens_per_s": sum(self.tokens) / wall,
                "cpu_s": statistics.mean(self.cpu),
                "tokens_per_cpu_s": sum(self.tokens) / sum(self.cpu),
                "generate_s": statistics.mean(self.generate),
                "model_generate_s": statistics.mean(self.model_generate),
                "score_s": statistics.mean(self.score), "train_s": statistics.mean(self.train),
                "gen_tokens_per_s": sum(self.tokens) / sum(self.generate),
                "prompt_tokens": statistics.mean(self.prompt_tokens),
                "load1": statistics.mean(self.load),
                "peak_gib": max(self.peak_gib, default=float("nan"))}


def _patch(owner: Any, name: str, make: Any) -> Any:
    """Replace ``owner.name`` by ``make(original)``; returns an undo function."""
    original = getattr(owner, name)
    setattr(owner, name, make(original))
    return lambda: setattr(owner, name, original)


# --- our trainer ----------------------------------------------------------------------------

def run_ours(warmup: int, steps: int, tasks_per_step: int, workdir: Path,
             setup: Setup) -> StepTimes:
    """Train ``warmup + steps`` steps with agentgym's GRPO; time the last ``steps``."""
    import agentgym.trainers.grpo as grpo
    from agentgym.policies.hf_engine import HFEngine
    from agentgym.rollout import RolloutEngine
    from agentgym.trainers.runs import RunDir

    ends: list[float] = []
    cpu_ends: list[float] = []
    tokens: list[int] = []
    prompts: list[float] = []
    drawn: list[str] = []
    model_gen: list[float] = [0.0]

    def wrap_step(original: Any) -> Any:
        async def one_step(*args: Any, **kwargs: Any) -> Any:
            model_gen.append(0.0)
            row = await original(*args, **kwargs)
            ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())
            return row
        return one_step

    def wrap_groups(original: Any) -> Any:
        async def run_groups(self: Any, task_ids: Any, *args: Any, **kwargs: Any) -> Any:
            drawn.extend(task_ids)
            groups = await original(self, task_ids, *args, **kwargs)
            turns = [t for g in groups for tr in g.trajectories for t in tr.turns]
            tokens.append(sum(len(t.completion_token_ids) for t in turns))
            prompts.append(statistics.mean(len(t.prompt_token_ids) for t in turns))
            return groups
        return run_groups

    def wrap_batch(original: Any) -> Any:
        def _run_batch(self: Any, batch: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(self, batch)
            finally:
                model_gen[-1] += time.perf_counter() - started
        return _run_batch

    undo = [_patch(grpo, "one_step", wrap_step),
            _patch(RolloutEngine, "run_groups", wrap_groups),
            _patch(HFEngine, "_run_batch", wrap_batch)]
    config = grpo.GRPOConfig(
        model=setup.model, env_id=f"{__name__}:PlainCalculatorEnv", engine="hf",
        env_kwargs={"dense": setup.dense},
        device=setup.device, dtype=setup.dtype,
        num_generations=G, tasks_per_step=tasks_per_step, max_completion_length=setup.max_tokens,
        temperature=1.0, top_p=1.0, learning_rate=LEARNING_RATE, warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, beta=0.0, epsilon=0.2, epsilon_high=0.28,
        loss_type="dapo", scale_rewards=True, num_iterations=1, micro_batch_size=MICRO_BATCH,
        lora=True, lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"],
        lora_dropout=LORA["lora_dropout"], lora_target_modules=list(LORA["target_modules"]),
        bf16=False, max_steps=warmup + steps, seed=SEED, output_dir=str(workdir),
        run_name=f"ours-{time.time_ns()}", save_steps=10**9, log_samples=0)
    try:
        run_path = grpo.train(config)
    finally:
        for fn in undo:
            fn()
    expected = [f"plain-calc-{i}" for i in drawn_task_indices(warmup + steps, tasks_per_step)]
    if drawn != expected:
        raise RuntimeError("our trainer drew other tasks than the benchmark replayed for TRL")
    rows = RunDir(run_path).metrics()
    out = StepTimes()
    for k in range(warmup, warmup + steps):
        t = {key[5:]: v for key, v in rows[k].items() if key.startswith("time/")}
        wall = ends[k] - ends[k - 1] if k else float("nan")
        out.wall.append(wall)
        out.cpu.append(cpu_ends[k] - cpu_ends[k - 1] if k else float("nan"))
        out.tokens.append(tokens[k])
        out.prompt_tokens.append(prompts[k])
        out.generate.append(t["generate"])
        out.model_generate.append(model_gen[k + 1])
        out.score.append(t["score"] + t["sync"])
        out.train.append(wall - t["generate"] - t["score"] - t["sync"])
    return out


# --- TRL ------------------------------------------------------------------------------------

def run_trl(warmup: int, steps: int, tasks_per_step: int, workdir: Path,
            setup: Setup) -> StepTimes:
    """Train ``warmup + steps`` steps with TRL's GRPOTrainer; time the last ``steps``."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from agentgym.policies.model_prep import resolve_model

    tasks = load_plain_tasks()
    order = drawn_task_indices(warmup + steps, tasks_per_step)
    dataset = Dataset.from_list([{"prompt": [dict(m) for m in tasks[i].prompt],
                                  "answer": float(tasks[i].answer)} for i in order])

    def reward(completions: list[Any], answer: list[float], **kwargs: Any) -> list[float]:
        return [text_reward(c[0]["content"], a, setup.dense)
                for c, a in zip(completions, answer, strict=True)]

    folder = str(resolve_model(setup.model))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, setup.dtype))
    args = GRPOConfig(
        output_dir=str(workdir / f"trl-{time.time_ns()}"), max_steps=warmup + steps,
        per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=tasks_per_step * G // MICRO_BATCH,
        num_generations=G, max_completion_length=setup.max_tokens, temperature=1.0, top_p=1.0,
        top_k=0, beta=0.0, num_iterations=1, epsilon=0.2, epsilon_high=0.28, loss_type="dapo",
        scale_rewards="group", learning_rate=LEARNING_RATE, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
        bf16=setup.bf16, fp16=False, gradient_checkpointing=False,
        use_cpu=not setup.device.startswith("cuda"),
        shuffle_dataset=False, seed=SEED, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0)
    ends: list[float] = []
    cpu_ends: list[float] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())

    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=LoraConfig(
                              task_type="CAUSAL_LM", **LORA), callbacks=[StepEnds()])
    gen_score: list[float] = []
    gen: list[float] = []
    model_gen: list[float] = []
    tokens: list[int] = []
    prompts: list[float] = []

    def timed(original: Any, sink: list[float]) -> Any:
        def call(*a: Any, **k: Any) -> Any:
            started = time.perf_counter()
            result = original(*a, **k)
            sink.append(time.perf_counter() - started)
            return result
        return call

    generate = timed(trainer._generate, gen)

    def counted_generate(prompts_: Any) -> Any:
        result = generate(prompts_)
        prompt_ids, completion_ids = result[0], result[1]
        tokens.append(sum(len(ids) for ids in completion_ids))
        prompts.append(statistics.mean(len(ids) for ids in prompt_ids))
        return result

    trainer._generate = counted_generate
    trainer._generate_single_turn = timed(trainer._generate_single_turn, model_gen)
    trainer._generate_and_score_completions = timed(trainer._generate_and_score_completions,
                                                    gen_score)
    trainer.train()
    if len(gen) != warmup + steps or len(ends) != warmup + steps:
        raise RuntimeError(f"expected one generation per step, got {len(gen)} for {len(ends)}")
    out = StepTimes()
    for k in range(warmup, warmup + steps):
        wall = ends[k] - ends[k - 1]
        out.wall.append(wall)
        out.cpu.append(cpu_ends[k] - cpu_ends[k - 1])
        out.tokens.append(tokens[k])
        out.prompt_tokens.append(prompts[k])
        out.generate.append(gen[k])
        out.model_generate.append(model_gen[k])
        out.score.append(gen_score[k] - gen[k])
        out.train.append(wall - gen_score[k])
    return out


# --- report ---------------------------------------------------------------------------------

def report(results: dict[str, StepTimes], args: argparse.Namespace, setup: Setup) -> None:
    import torch

    print(f"\n{setup.label}, G={G}, {args.tasks_per_step} prompt(s)/step "
          f"({G * args.tasks_per_step} completions), <= {setup.max_tokens} completion tokens, "
          f"LoRA r=16, {setup.dtype} on {setup.device}, torch threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}")
    cols = ["steps", "step_s", "step_s_median", "tokens_per_step", "tokens_per_s", "cpu_s",
            "tokens_per_cpu_s", "generate_s",
            "model_generate_s", "score_s", "train_s", "gen_tokens_per_s", "prompt_tokens",
            "load1", "peak_gib"]
    print(f"{'':6}" + "".join(f"{c:>17}" for c in cols))
    summaries = {name: t.summary() for name, t in results.items()}
    for name, s in summaries.items():
        print(f"{name:6}" + "".join(f"{s[c]:>17.2f}" for c in cols))
    if len(summaries) == 2:
        ours, trl = summaries["ours"], summaries["trl"]
        print(f"\ntokens/s ratio ours/TRL: {ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x "
              f"(target >= 1.5x); step time ratio TRL/ours: {trl['step_s'] / ours['step_s']:.2f}x; "
              f"tokens per CPU-second ratio: "
              f"{ours['tokens_per_cpu_s'] / trl['tokens_per_cpu_s']:.2f}x")
        for phase in ("generate_s", "model_generate_s", "train_s"):  # score_s is ~0 on both
            print(f"  {phase:17} TRL/ours {trl[phase] / ours[phase]:6.2f}x")
        if not math.isnan(ours["peak_gib"]):
            print(f"peak GPU memory: ours {ours['peak_gib']:.2f} GiB, TRL {trl['peak_gib']:.2f} "
                  f"GiB (ours/TRL {ours['peak_gib'] / trl['peak_gib']:.2f}, target <= 1)")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"summary": summaries, "raw": {n: t.__dict__ for n, t in results.items()},
             "args": vars(args), "setup": setup.__dict__}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
    parser.add_argument("--tasks-per-step", type=int, default=2, help="prompts per step")
    parser.add_argument("--rounds", type=int, default=1, help="ABBA rounds (ours, TRL, TRL, ...)")
    parser.add_argument("--only", choices=["ours", "trl"], help="run one side only")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for both sides (see the docstring)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (both sides)")
    parser.add_argument("--dtype", default="auto",
                        choices=["auto", "float32", "bfloat16", "float16"],
                        help="model dtype for both sides (auto: bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--random-init", metavar="FOLDER",
                        help="a folder with config.json + tokenizer: random-init weights from it")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS,
                        help="completion tokens at most")
    args = parser.parse_args()
    if args.warmup < 1 or (G * args.tasks_per_step) % MICRO_BATCH:
        parser.error("--warmup must be >= 1 and 8 x tasks-per-step a multiple of 8")
    import logging

    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    runners = {"ours": run_ours, "trl": run_trl}
    sides = [args.only] if args.only else ["ours", "trl"]
    results = {name: StepTimes() for name in sides}
    with tempfile.TemporaryDirectory(prefix="trainer-vs-trl-") as tmp:
        setup = resolve_setup(args, Path(tmp))
        for r in range(args.rounds):
            for name in (sides if r % 2 == 0 else sides[::-1]):
                load = os.getloadavg()[0]
                started = time.perf_counter()
                reset_peak_memory(setup.device)
                times = runners[name](args.warmup, args.steps, args.tasks_per_step, Path(tmp),
                                      setup)
                times.peak_gib = [peak_memory_gib(setup.device)]
                times.load = [(load + os.getloadavg()[0]) / 2] * len(times.wall)
                results[name].extend(times)
                print(f"round {r + 1} {name}: {time.perf_counter() - started:.0f} s total, "
                      f"steps {[round(w, 2) for w in times.wall]}, load ~{times.load[0]:.2f}",
                      flush=True)
    report(results, args, setup)


if __name__ == "__main__":
    main()
