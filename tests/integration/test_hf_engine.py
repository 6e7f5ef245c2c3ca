"""The HF rollout engine: sampling log-probs agree with the learner's recomputation (fp32, max abs diff < 1e-4),
sampling is reproducible for a seed, and a standalone engine loading the adapter from disk matches the shared one."""

from __future__ import annotations

import pytest
import torch

from learner.config import LoraConfig, ModelConfig
from learner.policy import completion_logprobs, load_policy, pad_sequences
from rollout.engines.base import SamplingParams
from rollout.engines.hf import HFEngine
from rollout.tasks import load_task

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    model, tok = load_policy(tiny_model_dir, ModelConfig(), LoraConfig(r=4, alpha=8), seed=0)
    torch.manual_seed(1)
    with torch.no_grad():  # a non-trivial adapter: B = 0 would make the policy equal the base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model, tok


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_sampling_logprobs_match_learner(policy, temperature, top_p):
    model, tok = policy
    task = load_task("arith")
    prompts = [tok(ex.prompt)["input_ids"] for ex in task.examples("test", 12, seed=0)]
    engine = HFEngine(model=model, tokenizer=tok)
    groups = engine.generate(prompts, SamplingParams(n=4, temperature=temperature, top_p=top_p,
                                                     max_new_tokens=8, seed=3))
    flat = [c for g in groups for c in g]
    assert len(flat) == 48 and all(len(g) == 4 for g in groups)
    assert any(c.finish_reason == "length" for c in flat) or any(c.finish_reason == "stop" for c in flat)
    ids, att, mask = pad_sequences([c.prompt_ids for c in flat], [c.token_ids for c in flat], tok.pad_token_id)
    model.eval()
    with torch.no_grad():
        logp = completion_logprobs(model, ids, att, [len(c.prompt_ids) for c in flat], mask.shape[1], temperature)
    engine_logp = torch.zeros_like(logp)
    for i, c in enumerate(flat):
        engine_logp[i, :len(c.logprobs)] = torch.tensor(c.logprobs)
    diff = ((logp - engine_logp) * mask).abs().max().item()
    assert diff < 1e-4, f"engine vs learner log-prob mismatch {diff:.2e}"


def test_sampling_is_reproducible_and_greedy_is_deterministic(policy):
    model, tok = policy
    engine = HFEngine(model=model, tokenizer=tok)
    prompts = [tok(p)["input_ids"] for p in ("12+34=", "987+6=", "5+5=")]
    a = engine.generate(prompts, SamplingParams(n=3, max_new_tokens=6, seed=7))
    b = engine.generate(prompts, SamplingParams(n=3, max_new_tokens=6, seed=7))
    c = engine.generate(prompts, SamplingParams(n=3, max_new_tokens=6, seed=8))
    tokens = lambda gs: [x.token_ids for g in gs for x in g]  # noqa: E731
    assert tokens(a) == tokens(b) and tokens(a) != tokens(c)
    g1 = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=6))
    g2 = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=6))
    assert tokens(g1) == tokens(g2)


def test_standalone_engine_loads_adapter_from_disk(policy, tiny_model_dir, tmp_path):
    model, tok = policy
    model.save_pretrained(tmp_path / "adapter")
    shared = HFEngine(model=model, tokenizer=tok)
    standalone = HFEngine(tiny_model_dir, adapter_path=tmp_path / "adapter")
    base_only = HFEngine(tiny_model_dir)
    prompts = [tok(ex.prompt)["input_ids"] for ex in load_task("arith").examples("test", 16, seed=1)]
    params = SamplingParams(n=2, max_new_tokens=6, seed=11)
    a, b = shared.generate(prompts, params), standalone.generate(prompts, params)
    assert [x.token_ids for g in a for x in g] == [x.token_ids for g in b for x in g]
    la = torch.tensor([x.logprobs[0] for g in a for x in g])
    lb = torch.tensor([x.logprobs[0] for g in b for x in g])
    assert (la - lb).abs().max() < 1e-5
    lbase = torch.tensor([x.logprobs[0] for g in base_only.generate(prompts, params) for x in g])
    assert (la - lbase).abs().max() > 1e-3  # the adapter really changes the policy


def test_generate_that_fails_leaves_a_shared_model_in_train_mode(policy):
    """The runner shares the policy with the learner: a generate call that raises must still restore train mode."""
    model, tok = policy
    engine = HFEngine(model=model, tokenizer=tok)
    was_training = model.training
    model.train()
    try:
        with pytest.raises(IndexError):
            engine.generate([[len(tok) + 1000]], SamplingParams(n=2, max_new_tokens=4, seed=0))  # id out of vocab
        assert model.training
        assert all(m.training for m in model.modules())
    finally:
        model.train(was_training)
