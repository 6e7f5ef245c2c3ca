"""TRL parity of the policy losses beyond grpo / dapo / dr_grpo (learner/losses.py POLICY_LOSSES): bnpo, cispo,
sapo, and GSPO's sequence-level ratio (TRL importance_sampling_level="sequence") under every loss type it combines
with. Our `policy_loss` on `completion_logprobs` and TRL 1.16 GRPOTrainer's own `_compute_loss` (a real trainer
built around a copy of the same PEFT model) give the same loss and the same gradient on every LoRA parameter.

The batch mixes prompt lengths: TRL left-pads prompts, we right-pad prompt + completion; with RoPE only position
differences reach attention, so the layouts agree up to rounding. pi_old comes from a perturbed adapter, so ratios
are far from 1 and the clip (or cispo's cap, or sapo's gate) is exercised. Float64 throughout, so rounding cannot
hide a difference in the loss maths. Each case is compared twice:
1. TRL end to end (its layout, its fused LM head, which returns float32 log-probs even for a float64 model):
   tolerance 1e-5 relative on the loss and on the norm of the gradient difference (measured: at most 8e-8 on the
   loss, 5e-7 on the gradients, 2e-7 max abs on one LoRA gradient entry);
2. TRL's `_compute_loss` fed our float64 log-probs of its own model copy (its log-prob method replaced): the loss
   maths alone, tolerance 1e-12 relative (measured: 0).
TRL builds the SAPO temperatures with torch.where on Python floats, so in float32 (its default 1.05 becomes
1.0499999523); ours keep the loss's dtype, so the sapo cases use temperatures exact in float32 (the unit tests
cover the defaults)."""

from __future__ import annotations

import copy

import pytest
import torch

from learner.config import LoraConfig, ModelConfig
from learner.losses import LossInputs, LossSettings, policy_loss
from learner.policy import completion_logprobs, load_policy
from tests.integration.trl_batch import lora_grads, scored_batch, trl_inputs

pytestmark = pytest.mark.integration

G, MAX_NEW, EPS_LOW, EPS_HIGH, CISPO_CAP = 4, 6, 0.2, 0.28, 1.2
PROMPTS = ("1+2=", "12+34=", "123+45=", "9+876=")
FULL_TOL, LOSS_TOL = 1e-5, 1e-12  # relative, on the loss and on the norm of the gradient difference


@pytest.fixture(scope="module")
def batch(tiny_model_dir):
    model, tok = load_policy(tiny_model_dir, ModelConfig(device="cpu"), LoraConfig(r=4, alpha=8), seed=0)
    model.double()
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    assert len({len(p) for p in prompts}) > 1, "the batch must mix prompt lengths"
    return scored_batch(model, tok, prompts, G, MAX_NEW, b_std=0.05, old_perturbation=0.5, dtype=torch.float64)


def trl_trainer(batch, tmp_path, s: LossSettings):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    n = len(batch["flat"])
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], loss_type=s.loss_type,
                      importance_sampling_level=s.ratio_level, num_iterations=2, beta=s.beta, epsilon=s.eps_low,
                      epsilon_high=s.eps_high, use_bias_correction_kl=s.kl_ratio_correction,
                      sapo_temperature_pos=s.sapo_temperature_pos, sapo_temperature_neg=s.sapo_temperature_neg,
                      num_generations=G, per_device_train_batch_size=n, max_completion_length=MAX_NEW,
                      temperature=1.0, save_strategy="no", logging_strategy="no")
    trainer = GRPOTrainer(model=copy.deepcopy(batch["model"]),  # TRL adds a "ref" adapter to the model it is given
                          reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                          train_dataset=Dataset.from_dict({"prompt": ["x"] * n}), processing_class=batch["tok"])
    trainer.model.eval()  # dropout is 0 either way; one batch, no gradient accumulation
    return trainer


def trl_loss_and_grads(trainer, batch, s: LossSettings) -> tuple[float, dict[str, torch.Tensor]]:
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(trainer.model, trl_inputs(batch, ref=s.beta > 0))
    loss.backward()
    return float(loss.detach()), lora_grads(trainer.model)


def our_logprobs(model, batch) -> torch.Tensor:
    return completion_logprobs(model, batch["ids"], batch["att"], batch["plen"], batch["mask"].shape[1])


def settings(loss_type, level, beta, correction, **kw) -> LossSettings:
    return LossSettings(loss_type=loss_type, ratio_level=level, eps_low=EPS_LOW,
                        eps_high=CISPO_CAP if loss_type == "cispo" else EPS_HIGH, beta=beta,
                        kl_ratio_correction=correction, **kw)


CASES = [
    settings("bnpo", "token", 0.0, False),
    settings("bnpo", "token", 0.04, True),
    settings("cispo", "token", 0.0, False),
    settings("cispo", "token", 0.04, True),
    settings("sapo", "token", 0.0, False, sapo_temperature_pos=1.0, sapo_temperature_neg=1.25),
    settings("sapo", "token", 0.04, True, sapo_temperature_pos=0.5, sapo_temperature_neg=2.0),
    settings("grpo", "sequence", 0.0, False),  # GSPO
    settings("grpo", "sequence", 0.04, True),
    settings("dapo", "sequence", 0.0, False),
    settings("dapo", "sequence", 0.04, True),
    settings("bnpo", "sequence", 0.04, False),
    settings("dr_grpo", "sequence", 0.04, False),
    settings("cispo", "sequence", 0.04, True),
    settings("sapo", "sequence", 0.04, True, sapo_temperature_pos=1.0, sapo_temperature_neg=1.25),
]


def compare(ours: float, our_grads: dict, theirs: float, their_grads: dict, tol: float, label: str) -> None:
    diff = sum(float((our_grads[k] - their_grads[k]).pow(2).sum()) for k in our_grads) ** 0.5
    norm = sum(float(g.pow(2).sum()) for g in their_grads.values()) ** 0.5
    worst = max(float((our_grads[k] - their_grads[k]).abs().max()) for k in our_grads)
    print(f"{label}: loss {theirs:.6f}, |loss diff| {abs(ours - theirs):.1e}; |grad| {norm:.2e}, "
          f"|grad diff| {diff:.1e}, max abs grad diff {worst:.1e}")
    assert abs(ours - theirs) <= tol * abs(theirs), (label, ours, theirs)
    assert our_grads.keys() == their_grads.keys() and len(our_grads) > 0
    assert norm > 0 and diff <= tol * norm, (label, diff, norm)


@pytest.mark.parametrize("s", CASES, ids=lambda s: f"{s.loss_type}-{s.ratio_level}-beta{s.beta}-kl{s.kl_ratio_correction:d}")
def test_loss_and_lora_gradients_match_trl(batch, tmp_path, s):
    model, mask = batch["model"], batch["mask"]
    model.eval()
    model.zero_grad(set_to_none=True)
    logp = our_logprobs(model, batch)
    inputs = LossInputs(logp, batch["old"], batch["advantages"], mask, num_sequences=mask.shape[0],
                        num_tokens=int(mask.sum()), max_completion_length=MAX_NEW, ref_logp=batch["ref"])
    ours, stats = policy_loss(inputs, s)
    ours.backward()
    assert stats["clip_ratio"] > 0  # the perturbed pi_old puts ratios past the clip (cispo: past its cap)
    ours, our_grads = float(ours.detach()), lora_grads(model)

    trainer = trl_trainer(batch, tmp_path, s)
    # 1. TRL end to end: its layout, its fused LM head (which returns float32 log-probs even for a float64 model)
    theirs, their_grads = trl_loss_and_grads(trainer, batch, s)
    compare(ours, our_grads, theirs, their_grads, FULL_TOL, f"{s.loss_type}/{s.ratio_level} TRL end to end")
    # 2. TRL's loss code on our float64 log-probs of its model copy: the loss maths alone, to rounding
    trainer._get_per_token_logps_and_entropies = lambda model, *a, **kw: (
        our_logprobs(model, batch), torch.zeros_like(mask), None)
    theirs, their_grads = trl_loss_and_grads(trainer, batch, s)
    compare(ours, our_grads, theirs, their_grads, LOSS_TOL, f"{s.loss_type}/{s.ratio_level} TRL loss maths")
