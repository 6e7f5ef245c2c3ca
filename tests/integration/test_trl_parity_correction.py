"""TRL 1.16 parity of the rollout correction (vllm_importance_sampling_correction), the entropy bonus and
mask_truncated_completions. TRL computes the correction's weights and the truncation mask in
`_generate_and_score_completions`; we run that method itself on our batch (its `_generate` hands back our sampled
completions and the engine log-probs we give, and TRL's use_vllm flag is set so that it corrects), then its
`_compute_loss` on what it returns, and compare with ours on the same model copy, in float64:
1. TRL end to end: its fused LM head returns float32 log-probs even for a float64 model, so the weights, the loss
   and the LoRA gradients agree to float32 rounding: 1e-5 relative;
2. TRL's own code with its log-prob method replaced by our float64 log-probs of its model copy: the weights, the
   loss and every LoRA gradient to 1e-6 relative (the maths alone; measured: equal, 0 difference).
The engine log-probs are the policy's own plus noise, rounded to float32 values (TRL holds them in a float32
tensor), with a quarter of the rows pushed far above and a quarter far below [C_min, C_max].
Each of TRL's four modes, with the ratio per token and per sequence (GSPO); the bounds are set so that every mode
truncates or masks something."""

from __future__ import annotations

import copy

import pytest
import torch

from learner.algorithms import RolloutBatch
from learner.config import LoraConfig, ModelConfig
from learner.losses import CORRECTION_MODES, LossInputs, LossSettings, policy_loss, rollout_correction_weights
from learner.policy import completion_logprobs, load_policy
from tests.integration.trl_batch import lora_grads, scored_batch

pytestmark = pytest.mark.integration

G, MAX_NEW, C_MIN, C_MAX, TOL, END_TO_END_TOL = 4, 6, 0.7, 1.4, 1e-6, 1e-5
PROMPTS = ("1+2=", "12+34=", "123+45=", "9+876=")


@pytest.fixture(scope="module")
def batch(tiny_model_dir):
    model, tok = load_policy(tiny_model_dir, ModelConfig(device="cpu"), LoraConfig(r=4, alpha=8), seed=0)
    model.double()
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    b = scored_batch(model, tok, prompts, G, MAX_NEW, b_std=0.05, old_perturbation=0.5, dtype=torch.float64)
    g = torch.Generator().manual_seed(11)
    noise = 0.08 * torch.randn(b["mask"].shape, generator=g, dtype=torch.float64)
    noise[0::4, 0], noise[1::4, 0] = 0.5, -0.5  # a quarter of the rows far above, a quarter far below the bounds
    with torch.no_grad():  # the engine's log-probs: the policy's own (pi_old at mu = 1) plus the mismatch
        now = completion_logprobs(model, b["ids"], b["att"], b["plen"], b["mask"].shape[1])
    # rounded to float32 values: TRL holds the engine's log-probs in a float32 tensor
    b["sampling"] = [(now[i, :len(c.token_ids)] + noise[i, :len(c.token_ids)]).float().double().tolist()
                     for i, c in enumerate(b["flat"])]
    b["rewards"] = [float(len(c.token_ids) % 3) + 0.1 * i for i, c in enumerate(b["flat"])]
    assert any(c.finish_reason == "length" for c in b["flat"]) and any(c.finish_reason == "stop" for c in b["flat"])
    return b


@pytest.fixture(scope="module")
def trainer(batch, tmp_path_factory):
    """One TRL trainer on a copy of the model; each case sets the options it tests on it (as its __init__ does)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    n, rewards = len(batch["flat"]), batch["rewards"]
    args = GRPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), use_cpu=True, bf16=False, report_to=[],
                      loss_type="dapo", beta=0.0, num_generations=G, per_device_train_batch_size=n,
                      max_completion_length=MAX_NEW, temperature=1.0, save_strategy="no", logging_strategy="no",
                      vllm_importance_sampling_clip_min=C_MIN, vllm_importance_sampling_clip_max=C_MAX)
    trainer = GRPOTrainer(model=copy.deepcopy(batch["model"]),
                          reward_funcs=lambda completions, **kw: rewards[:len(completions)], args=args,
                          train_dataset=Dataset.from_dict({"prompt": ["x"] * n}), processing_class=batch["tok"])
    trainer.model.eval()
    flat = batch["flat"]
    trainer._generate = lambda prompts: ([c.prompt_ids for c in flat], [c.token_ids for c in flat], None,
                                         [batch["tok"].decode(c.token_ids) for c in flat], batch["sampling"], {}, None,
                                         None)
    trainer.trl_logprobs = trainer._get_per_token_logps_and_entropies
    return trainer


def trl_loss(trainer, batch, mode: str | None, level: str, *, ours_logprobs: bool, mask_truncated=False,
             entropy_coef=0.0):
    """TRL's `_generate_and_score_completions` on our batch, then its `_compute_loss` and the LoRA gradients.
    ours_logprobs: TRL's own log-prob method replaced by our float64 log-probs of its model copy (the maths alone)."""
    trainer.use_vllm = mode is not None  # TRL corrects only the vLLM engine's samples (they come from _generate)
    trainer.vllm_importance_sampling_correction = mode is not None
    trainer.vllm_importance_sampling_mode = mode
    trainer.importance_sampling_level = level
    trainer.mask_truncated_completions = mask_truncated
    trainer.entropy_coef, trainer._entropy_bonus_enabled = entropy_coef, entropy_coef != 0.0
    trainer._get_per_token_logps_and_entropies = trainer.trl_logprobs
    if ours_logprobs:
        def ours(model, *args, compute_entropy=False, **kwargs):
            logp, entropy = completion_logprobs(model, batch["ids"], batch["att"], batch["plen"], batch["mask"].shape[1],
                                                with_entropy=True, entropy_grad=torch.is_grad_enabled())
            return logp, entropy if compute_entropy else None, None

        trainer._get_per_token_logps_and_entropies = ours
    out = trainer._generate_and_score_completions([{"prompt": "x"} for _ in range(len(batch["flat"]))])
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(trainer.model, out)
    loss.backward()
    return out, float(loss.detach()), lora_grads(trainer.model)


def our_loss(batch, mode, level, advantages, *, mask_truncated=False, entropy_coef=0.0):
    """Our learner's path on the same batch: pi_old = the policy now (mu = 1, detached), the correction's weights
    from it and the sampling log-probs; the loss mask from RolloutBatch (mask_truncated_completions). advantages:
    TRL's (computed in float32 from the rewards; the advantage maths has its own parity tests)."""
    model, flat = batch["model"], batch["flat"]
    model.eval()
    model.zero_grad(set_to_none=True)
    rollout = RolloutBatch(prompt_ids=[c.prompt_ids for c in flat], completion_ids=[c.token_ids for c in flat],
                           rewards=batch["rewards"], group_size=G, loss=LossSettings(), advantages=[0.0] * len(flat),
                           truncated=[c.finish_reason == "length" for c in flat] if mask_truncated else None)
    mask = rollout.loss_mask(batch["mask"])
    logp, entropy = completion_logprobs(model, batch["ids"], batch["att"], batch["plen"], mask.shape[1],
                                        with_entropy=True, entropy_grad=entropy_coef != 0.0)
    old = logp.detach()
    sampling = torch.zeros_like(old)
    for i, row in enumerate(batch["sampling"]):
        sampling[i, :len(row)] = torch.tensor(row, dtype=old.dtype)
    weights = rollout_correction_weights(old, sampling, mask, mode, C_MIN, C_MAX) if mode else None
    settings = LossSettings(loss_type="dapo", ratio_level=level, entropy_coef=entropy_coef, correction=mode,
                            correction_min=C_MIN, correction_max=C_MAX)
    loss, _ = policy_loss(LossInputs(logp, old, advantages.to(logp.dtype), mask, num_sequences=len(flat),
                                     num_tokens=int(mask.sum()), max_completion_length=MAX_NEW, correction_weights=weights,
                                     entropy=entropy if entropy_coef else None), settings)
    loss.backward()
    return float(loss.detach()), lora_grads(model), weights, mask


def compare(ours: float, our_grads: dict, theirs: float, their_grads: dict, tol: float, label: str) -> None:
    diff = sum(float((our_grads[k] - their_grads[k]).pow(2).sum()) for k in our_grads) ** 0.5
    norm = sum(float(g.pow(2).sum()) for g in their_grads.values()) ** 0.5
    print(f"{label}: loss {theirs:.6f} |loss diff| {abs(ours - theirs):.1e}; |grad| {norm:.2e} |grad diff| {diff:.1e}")
    assert abs(ours - theirs) <= tol * abs(theirs), (label, ours, theirs)
    assert our_grads.keys() == their_grads.keys() and norm > 0 and diff <= tol * norm, (label, diff, norm)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("mode", CORRECTION_MODES)
def test_rollout_correction_matches_trl(batch, trainer, mode, level):
    # 1. TRL end to end: its float32 log-probs (its fused LM head) as pi_old, so the weights agree to float32
    out, theirs, their_grads = trl_loss(trainer, batch, mode, level, ours_logprobs=False)
    ours, our_grads, weights, _ = our_loss(batch, mode, level, out["advantages"])
    assert out["importance_sampling_ratio"].shape == weights.shape
    assert torch.allclose(weights, out["importance_sampling_ratio"].to(weights.dtype), rtol=1e-5, atol=1e-12)
    diff = (out["old_per_token_logps"] - out["sampling_per_token_logps"]) * batch["mask"]
    raw = torch.exp(diff.sum(-1, keepdim=True) if mode.startswith("sequence") else diff)
    changed = ~torch.isclose(weights, raw.to(weights.dtype), rtol=1e-5, atol=0)  # raw: TRL's float32 pi_old
    assert bool(changed.any()) and not bool(changed.all()), "the bounds must truncate or mask some, not all"
    compare(ours, our_grads, theirs, their_grads, END_TO_END_TOL, f"{mode}/{level} TRL end to end")
    # 2. TRL's code on our float64 log-probs of its model copy: weights, loss and gradients to 1e-6
    out, theirs, their_grads = trl_loss(trainer, batch, mode, level, ours_logprobs=True)
    assert torch.allclose(weights, out["importance_sampling_ratio"], rtol=TOL, atol=0)
    compare(ours, our_grads, theirs, their_grads, TOL, f"{mode}/{level} TRL maths in float64")


def test_mask_truncated_completions_and_entropy_bonus_match_trl(batch, trainer):
    for ours_logprobs, tol in ((False, END_TO_END_TOL), (True, TOL)):
        out, theirs, their_grads = trl_loss(trainer, batch, None, "token", ours_logprobs=ours_logprobs,
                                            mask_truncated=True, entropy_coef=0.05)
        ours, our_grads, _, mask = our_loss(batch, None, "token", out["advantages"], mask_truncated=True,
                                            entropy_coef=0.05)
        assert float(mask.sum()) < float(batch["mask"].sum())  # some completions were truncated
        assert torch.equal(out["completion_mask"].to(mask.dtype), mask)  # the same completions left out
        compare(ours, our_grads, theirs, their_grads, tol, f"mask_truncated + entropy_coef, ours_logprobs={ours_logprobs}")
