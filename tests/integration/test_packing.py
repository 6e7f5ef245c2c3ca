"""Padding-free batches (learner/policy.py packed_completion_logprobs): the sequences packed into rows with position
ids restarting per sequence give the padded path's log-probs and entropies, on SmolLM2-135M-Instruct with ragged
prompt and completion lengths (float32: log-probs 1e-5 absolute, entropies 1e-5 relative), and the same LoRA
gradients (the tiny model in float64)."""

from __future__ import annotations

import random

import pytest
import torch

from learner.config import LoraConfig, ModelConfig
from learner.policy import (
    completion_logprobs,
    load_policy,
    pack_rows,
    packed_completion_logprobs,
    pad_sequences,
)

pytestmark = pytest.mark.integration


def ragged_batch(vocab: int, n: int = 12, seed: int = 0):
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(3, 40))] for _ in range(n)]
    completions = [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 30))] for _ in range(n)]
    return prompts, completions


def both_paths(model, tok, prompts, completions, **kw):
    ids, att, mask = pad_sequences(prompts, completions, tok.pad_token_id)
    plen = [len(p) for p in prompts]
    padded = completion_logprobs(model, ids, att, plen, mask.shape[1], **kw)
    packed = packed_completion_logprobs(model, ids, att, plen, mask.shape[1], **kw)
    return padded, packed, mask


def test_pack_rows_fits_every_sequence_once():
    lengths = [7, 3, 9, 1, 5, 5, 2]
    rows = pack_rows(lengths, 9)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 9 for r in rows) and len(rows) == 4  # 32 tokens: 4 rows of 9 at least


def test_packed_logprobs_and_entropy_equal_the_padded_ones_on_smollm2(smollm2_dir):
    model, tok = load_policy(smollm2_dir, ModelConfig(device="cpu"), LoraConfig(r=4, alpha=8), seed=0)
    prompts, completions = ragged_batch(len(tok), seed=1)
    with torch.no_grad():
        (a, ha), (b, hb), mask = both_paths(model, tok, prompts, completions, with_entropy=True)
    assert len(pack_rows([len(p) + len(c) for p, c in zip(prompts, completions, strict=True)], 70)) < len(prompts)
    live = mask.bool()
    assert torch.allclose(a[live], b[live], atol=1e-5, rtol=0), float((a[live] - b[live]).abs().max())
    # entropies are sums over the vocabulary of values ~8 nats: float32 rounding, relative
    assert torch.allclose(ha[live], hb[live], rtol=1e-5, atol=0), float(((ha - hb) / hb)[live].abs().max())


def test_packed_gradients_equal_the_padded_ones(tiny_model_dir):
    model, tok = load_policy(tiny_model_dir, ModelConfig(device="cpu"), LoraConfig(r=4, alpha=8), seed=0)
    model.double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    prompts, completions = ragged_batch(len(tok), seed=2)
    grads = []
    for packed in (False, True):
        model.zero_grad(set_to_none=True)
        ids, att, mask = pad_sequences(prompts, completions, tok.pad_token_id)
        fn = packed_completion_logprobs if packed else completion_logprobs
        logp = fn(model, ids, att, [len(p) for p in prompts], mask.shape[1])
        (logp * mask.double()).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-12), name


def test_a_padding_free_learner_step_equals_the_padded_one(default_model_dir):
    from learner.algorithms import RolloutBatch
    from learner.config import GRPOConfig
    from learner.learner import Learner
    from learner.losses import LossSettings

    stats = []
    for padding_free in (False, True):
        learner = Learner(default_model_dir, ModelConfig(device="cpu"), GRPOConfig(micro_batch_size=5,
                                                                                 padding_free=padding_free),
                          seed=0, total_steps=10, max_new_tokens=32)
        prompts, completions = ragged_batch(len(learner.tokenizer), n=12, seed=3)
        batch = RolloutBatch(prompt_ids=prompts, completion_ids=completions, rewards=[0.0] * 12, group_size=4,
                             loss=LossSettings(), advantages=[(-1.0) ** i * (i % 5) / 4 for i in range(12)])
        stats.append([learner.step(batch) for _ in range(2)])
    for a, b in zip(*stats, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * max(1.0, abs(a["loss"])), (a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4 * a["grad_norm"], (a["grad_norm"], b["grad_norm"])


def test_packing_bench_prints_its_figures(default_model_dir):
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    res = subprocess.run([sys.executable, "bench/packing.py", "--smoke", "--steps", "2", "--threads", "1"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["packed"]["forward_tokens"] <= out["padded"]["forward_tokens"]
    assert out["packed"]["padding_share"] < out["padded"]["padding_share"] and out["speedup"] > 0
