"""The policy's entropy over completion tokens (tiny model, fp32): the chunked selective log-softmax's entropy equals
a dense reference from the full logits, leaves the log-probs and their gradients unchanged, carries no gradient,
and the learner's `entropy` metric is its token mean over the batch."""

from __future__ import annotations

import math

import pytest
import torch

from learner.algorithms import GRPO
from learner.config import GRPOConfig, LoraConfig, ModelConfig
from learner.learner import Learner
from learner.policy import completion_logprobs, completion_positions, dense_completion_logprobs, pad_sequences
from rollout.engines.base import SamplingParams
from rollout.engines.hf import HFEngine

pytestmark = pytest.mark.integration

TEMPERATURE = 0.8


def test_entropy_matches_the_dense_reference(tiny_model_dir):
    cfg = GRPOConfig(lr=1e-2, lora=LoraConfig(r=4, alpha=8), logprob_chunk_tokens=5)
    learner = Learner(tiny_model_dir, ModelConfig(device="cpu"), cfg, seed=0, total_steps=1, max_new_tokens=6,
                      temperature=TEMPERATURE)
    model, tok = learner.model, learner.tokenizer
    torch.manual_seed(0)
    with torch.no_grad():  # a non-zero adapter, so the LoRA path is exercised
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    prompts = [tok(p)["input_ids"] for p in ("12+34=", "987+6=", "5+55=", "1+1=")]
    groups = HFEngine(model=model, tokenizer=tok).generate(
        prompts, SamplingParams(n=4, temperature=TEMPERATURE, max_new_tokens=6, seed=0))
    flat = [c for g in groups for c in g]
    ids, att, mask = pad_sequences([c.prompt_ids for c in flat], [c.token_ids for c in flat], tok.pad_token_id)
    plen, t_max = [len(c.prompt_ids) for c in flat], mask.shape[1]
    assert len({len(c.token_ids) for c in flat}) > 1  # completions of several lengths: the mask matters

    with torch.no_grad():  # the reference: every position's full logits, in float64
        logits = model(input_ids=ids, attention_mask=att).logits.double() / TEMPERATURE
        picked = logits.gather(1, completion_positions(plen, t_max, ids.shape[1])[..., None].expand(
            -1, -1, logits.shape[-1]))
        reference = -(picked.softmax(-1) * picked.log_softmax(-1)).sum(-1)
    vocab = logits.shape[-1]

    plain = completion_logprobs(model, ids, att, plen, t_max, TEMPERATURE, chunk_tokens=5)
    (plain * mask).sum().backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    logp, entropy = completion_logprobs(model, ids, att, plen, t_max, TEMPERATURE, chunk_tokens=5, with_entropy=True)
    assert not entropy.requires_grad and logp.requires_grad
    (logp * mask).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    assert ((entropy - reference) * mask).abs().max().item() < 1e-5
    assert torch.equal(logp.detach(), plain.detach()) and grads.keys() == plain_grads.keys() and grads
    assert all(torch.allclose(grads[k], plain_grads[k], atol=1e-7) for k in grads)
    with torch.no_grad():
        dense_logp, dense_entropy = dense_completion_logprobs(model, ids, att, plen, t_max, TEMPERATURE,
                                                              with_entropy=True)
    assert ((dense_entropy - reference) * mask).abs().max().item() < 1e-5
    assert ((dense_logp - plain.detach()) * mask).abs().max().item() < 1e-5

    expected = float((reference * mask).sum() / mask.sum())
    assert 0 < expected < math.log(vocab)
    stats = learner.step(GRPO(learner.cfg).make_batch(groups, [float(i % 2) for i in range(len(flat))]))
    assert stats["entropy"] == pytest.approx(expected, rel=1e-5)
