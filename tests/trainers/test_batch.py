"""Shared-prompt batches: the same logprobs, values and gradients as one forward per sequence."""

from gates import TRAIN_INSTALL, require_module

torch = require_module("torch", TRAIN_INSTALL)

from agentgym.tokens import TokenSequence  # noqa: E402
from agentgym.trainers.batch import pack, policy_logprobs, response_hidden  # noqa: E402
from agentgym.trainers.losses import token_logprobs  # noqa: E402
from agentgym.trainers.smoke import char_tokenizer, tiny_model  # noqa: E402


def sequences(tokenizer):
    """Two groups (prompts of different lengths), replies of different lengths and masks."""
    ids = tokenizer.convert_tokens_to_ids
    short, long_ = tuple(ids(list("Say 7."))), tuple(ids(list("Please say 42 now.")))
    spec = [(short, "77:ok7", [1, 1, 0, 0, 0, 1]), (short, "ab", [1, 1]),
            (long_, "4", [1]), (short, "7a7:okb", [1, 1, 1, 0, 0, 0, 1]),
            (long_, "42 and", [1, 1, 1, 1, 1, 1])]
    return [TokenSequence(p, tuple(ids(list(r))), tuple(m), tuple(-0.1 * (i + 1) for i in
                                                                  range(len(r))), (0, 0))
            for p, r, m in spec]


def one_by_one(model, seqs, temperature):
    """Reference: every sequence on its own, prompt and response in one unpadded forward."""
    out = []
    for seq in seqs:
        ids = torch.tensor([list(seq.prompt_ids) + list(seq.response_ids)])  # [1, L]
        logits = model(input_ids=ids).logits[:, len(seq.prompt_ids) - 1:-1]  # [1, R, V]
        out.append(token_logprobs(logits, ids[:, len(seq.prompt_ids):], temperature)[0])
    return out


def test_pack_stores_each_distinct_prompt_once():
    tokenizer = char_tokenizer()
    batch = pack(sequences(tokenizer), [1.0, -1.0, 0.5, 0.0, 2.0], tokenizer.pad_token_id)
    assert batch.prompt_ids.shape[0] == 2 and len(batch) == 5
    assert batch.prompt_of.tolist() == [0, 0, 1, 0, 1]
    assert batch.mask[1].tolist() == [1, 1, 0, 0, 0, 0, 0]  # right-padded to R = 7
    assert batch.response_attention.sum(dim=1).tolist() == [6, 2, 1, 7, 6]
    sub = batch.select(torch.tensor([2, 4]))  # only the long prompt is left
    assert sub.prompt_ids.shape == (1, 18) and sub.prompt_of.tolist() == [0, 0]


def test_shared_prompt_logprobs_and_gradients_match_separate_forwards():
    tokenizer = char_tokenizer()
    seqs = sequences(tokenizer)
    model = tiny_model(tokenizer, seed=3)
    batch = pack(seqs, [1.0, -1.0, 0.5, 0.0, 2.0], tokenizer.pad_token_id)

    logp, _ = policy_logprobs(model, batch, temperature=0.7)
    (logp * batch.mask).sum().backward()
    shared_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    reference = one_by_one(model, seqs, temperature=0.7)
    masked = [r * torch.tensor(s.loss_mask) for r, s in zip(reference, seqs, strict=True)]
    sum(m.sum() for m in masked).backward()
    for row, ref in enumerate(reference):
        assert torch.allclose(logp[row, :len(ref)], ref, atol=1e-5), row
    for shared, p in zip(shared_grads, model.parameters(), strict=True):
        assert torch.allclose(shared, p.grad, atol=1e-5, rtol=1e-4)


def test_selected_micro_batches_give_the_same_logprobs():
    tokenizer = char_tokenizer()
    model = tiny_model(tokenizer, seed=1)
    batch = pack(sequences(tokenizer), [0.0] * 5, tokenizer.pad_token_id)
    with torch.no_grad():
        whole, _ = policy_logprobs(model, batch, 1.0)
        index = torch.tensor([4, 1])
        part, _ = policy_logprobs(model, batch.select(index), 1.0)
    mask = batch.mask[index]
    assert torch.allclose(whole[index] * mask, part * mask, atol=1e-5)


def test_hidden_states_line_up_with_the_logits():
    tokenizer = char_tokenizer()
    model = tiny_model(tokenizer, seed=2)
    seqs = sequences(tokenizer)
    batch = pack(seqs, [0.0] * 5, tokenizer.pad_token_id)
    with torch.no_grad():
        hidden = response_hidden(model, batch)  # [B, R, H]
        relogp = token_logprobs(model.get_output_embeddings()(hidden), batch.targets)
        reference = one_by_one(model, seqs, 1.0)
    assert hidden.shape[:2] == batch.targets.shape
    for row, ref in enumerate(reference):
        assert torch.allclose(relogp[row, :len(ref)], ref, atol=1e-5), row
