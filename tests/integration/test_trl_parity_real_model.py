"""TRL parity on a real pretrained model: our GRPO loss AND our LoRA gradients equal TRL 1.16 GRPOTrainer's
(`_compute_loss`, then backward) on a SmolLM2-135M-Instruct batch whose chat-template prompts have different lengths,
for every loss aggregation (with mu = 2, so the ratio and its clipping matter, and a k3 KL term).

TRL left-pads prompts (prompt_mask) and right-pads completions; we right-pad prompt + completion. With RoPE only
position differences reach attention, so both layouts give the same numbers up to rounding; the comparison runs in
float64 so that rounding (~1e-5 relative on the gradients in float32) cannot hide or fake a difference. Tolerance:
1e-5 relative on the loss and on the global norm of the gradient difference."""

from __future__ import annotations

import copy

import pytest
import torch

from learner.config import LoraConfig, ModelConfig
from learner.losses import LossInputs, LossSettings, policy_loss
from learner.policy import completion_logprobs, load_policy
from rollout.prompts import PromptEncoder
from rollout.tasks import load_task
from tests.integration.trl_batch import scored_batch

pytestmark = pytest.mark.integration

G, MAX_NEW, EPS_LOW, EPS_HIGH, BETA = 3, 6, 0.2, 0.28, 0.04


@pytest.fixture(scope="module")
def batch(smollm2_dir):
    model, tok = load_policy(smollm2_dir, ModelConfig(device="cpu"), LoraConfig(r=8, alpha=16), seed=0)
    model.double()
    encoder = PromptEncoder(tok, "auto", system_prompt="Be brief.", model_dir=smollm2_dir)
    prompts = encoder.ids(load_task("sums").examples("train", 3, seed=4))
    assert len({len(p) for p in prompts}) > 1, "the batch must mix prompt lengths"
    return scored_batch(model, tok, prompts, G, MAX_NEW, b_std=0.01, old_perturbation=0.1, dtype=torch.float64)


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {n.replace(".default", ""): p.grad.detach().clone() for n, p in model.named_parameters()
            if "lora_" in n and ".default" in n and p.grad is not None}


def trl_loss_and_grads(batch, tmp_path, loss_type):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    flat, mask, tok = batch["flat"], batch["mask"], batch["tok"]
    n = len(flat)
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], loss_type=loss_type,
                      num_iterations=2, beta=BETA, epsilon=EPS_LOW, epsilon_high=EPS_HIGH, num_generations=G,
                      per_device_train_batch_size=n, max_completion_length=MAX_NEW, temperature=1.0,
                      use_bias_correction_kl=False, save_strategy="no", logging_strategy="no")
    policy = copy.deepcopy(batch["model"])
    trainer = GRPOTrainer(model=policy, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                          args=args, train_dataset=Dataset.from_dict({"prompt": ["x"] * n}), processing_class=tok)
    width = max(len(c.prompt_ids) for c in flat)
    prompt_ids = torch.full((n, width), tok.pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((n, width), dtype=torch.long)
    completion_ids = torch.full(mask.shape, tok.pad_token_id, dtype=torch.long)
    for i, c in enumerate(flat):  # TRL's layout: prompts left-padded, completions right-padded
        prompt_ids[i, width - len(c.prompt_ids):] = torch.tensor(c.prompt_ids)
        prompt_mask[i, width - len(c.prompt_ids):] = 1
        completion_ids[i, :len(c.token_ids)] = torch.tensor(c.token_ids)
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": mask.long(), "advantages": batch["advantages"],
              "old_per_token_logps": batch["old"], "ref_per_token_logps": batch["ref"],
              "num_items_in_batch": mask.sum()}
    trainer.model.eval()  # dropout is 0 either way; one batch, no gradient accumulation
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return float(loss.detach()), lora_grads(trainer.model)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_loss_and_lora_gradients_match_trl_on_smollm2(batch, tmp_path, loss_type):
    model = batch["model"]
    model.eval()
    model.zero_grad(set_to_none=True)
    logp = completion_logprobs(model, batch["ids"], batch["att"], batch["plen"], batch["mask"].shape[1])
    mask = batch["mask"].to(logp.dtype)
    inputs = LossInputs(logp, batch["old"], batch["advantages"], mask, num_sequences=logp.shape[0],
                        num_tokens=int(mask.sum()), max_completion_length=MAX_NEW, ref_logp=batch["ref"])
    ours, stats = policy_loss(inputs, LossSettings(loss_type=loss_type, eps_low=EPS_LOW, eps_high=EPS_HIGH, beta=BETA))
    ours.backward()
    our_grads = lora_grads(model)
    theirs, their_grads = trl_loss_and_grads(batch, tmp_path, loss_type)
    assert stats["clip_ratio"] > 0  # the perturbed pi_old exercises the clipping
    assert abs(float(ours) - theirs) <= 1e-5 * abs(theirs), (loss_type, float(ours), theirs)
    assert our_grads.keys() == their_grads.keys() and len(our_grads) == 30 * 7 * 2
    diff = sum(float((our_grads[k] - their_grads[k]).pow(2).sum()) for k in our_grads) ** 0.5
    norm = sum(float(g.pow(2).sum()) for g in their_grads.values()) ** 0.5
    assert norm > 0 and diff <= 1e-5 * norm, (loss_type, diff, norm)
