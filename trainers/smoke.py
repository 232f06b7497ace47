"""The smoke setting: a tiny random-init model, a character tokenizer and a learnable task.

Used by ``trainers/configs/smoke.yaml`` and the learning test: everything is built from code
(no download, no model file), trains in well under three minutes on two CPU cores, and the
reward rises visibly when the trainer works.

* :func:`char_tokenizer` -- one token per character (digits, letters, punctuation) plus the
  chat-template specials, with a minimal ChatML template.
* :func:`tiny_model` -- a 2-layer Llama with 64-dim hidden states (about 100k parameters).
* :class:`DigitEnv` -- "Repeat the digit 7." Reward = the share of the reply's characters that
  are the requested digit: dense and verifiable, so a random policy starts near 0.03 and a
  learning one climbs towards 1.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING, Any

from agentgym.env import AgentEnv
from agentgym.rewards import Reward, Rubric
from agentgym.types import Split, Task, Trajectory

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = ["DigitEnv", "char_tokenizer", "digit_share", "tiny_model"]

SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>"]
CHARS = string.digits + string.ascii_lowercase + string.ascii_uppercase + " .,:!?\n"
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A fast tokenizer with one token per character and the ChatML specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + list(CHARS) + ["<unk>"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>",
                                        eos_token="<|im_end|>", unk_token="<unk>",
                                        additional_special_tokens=SPECIALS[1:])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised 2-layer Llama sized for ``tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def digit_share(trajectory: Trajectory, task: Task) -> float:
    """Share of the final reply's characters that are the requested digit (0 if empty)."""
    text = trajectory.final_text
    return text.count(str(task.answer)) / len(text) if text else 0.0


_PHRASES = ("Repeat the digit {d}.", "Say {d}.", "Write {d} many times.", "Digit {d}, please.")


class DigitEnv(AgentEnv):
    """Ask for a digit; reward its share of the reply. Single turn, no tools."""

    family = "toy"

    def __init__(self, **kwargs: Any):
        super().__init__(max_turns=1, **kwargs)

    @classmethod
    def split_sizes(cls) -> dict[str, int]:
        return {"train": 30, "eval": 10}

    def load_tasks(self, split: Split) -> list[Task]:
        phrases = _PHRASES[:3] if split == "train" else _PHRASES[3:]
        return [Task(id=f"digit-{split}-{p}-{d}", split=split, answer=d,
                     prompt=({"role": "user", "content": phrase.format(d=d)},))
                for p, phrase in enumerate(phrases) for d in range(10)]

    @property
    def rubric(self) -> Rubric:
        return Rubric([Reward("digit_share", digit_share)])
