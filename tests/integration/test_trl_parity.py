"""Our GRPO loss equals TRL 1.16 GRPOTrainer's on the same model, completions, advantages and old/ref log-probs.

TRL is the reference: a real GRPOTrainer is built around the same PEFT model and its own `_compute_loss` is
called on the inputs dict its generation step would produce. Tolerance 1e-5 (fp32). Every loss aggregation, with
mu = 1 (pi_old = pi_theta, TRL passes no old log-probs) and mu = 2 (pi_old from another adapter, so the ratio and
the clipping matter), and beta = 0 and 0.04 (k3 KL to the adapter-disabled base).
"""

from __future__ import annotations

import copy

import pytest
import torch

from learner.config import LoraConfig, ModelConfig
from learner.losses import LossInputs, LossSettings, policy_loss
from learner.policy import completion_logprobs, load_policy
from tests.integration.trl_batch import scored_batch, trl_inputs

pytestmark = pytest.mark.integration

G = 4
MAX_NEW = 6
EPS_LOW, EPS_HIGH = 0.2, 0.28


@pytest.fixture(scope="module")
def batch(tiny_model_dir):
    """A PEFT policy with a non-zero adapter, a sampled batch (same-length prompts, so no padding question),
    rewards -> advantages, and pi_old log-probs from a perturbed adapter."""
    model, tok = load_policy(tiny_model_dir, ModelConfig(), LoraConfig(r=4, alpha=8), seed=0)
    prompts = [tok(p)["input_ids"] for p in ("12+34=", "56+78=", "90+12=", "34+56=")]
    return scored_batch(model, tok, prompts, G, MAX_NEW, b_std=0.05, old_perturbation=0.5)


def trl_loss(batch, tmp_path, loss_type, mu, beta, kl_correction) -> float:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    n = len(batch["flat"])
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], loss_type=loss_type,
                      num_iterations=mu, beta=beta, epsilon=EPS_LOW, epsilon_high=EPS_HIGH, num_generations=G,
                      per_device_train_batch_size=n, max_completion_length=MAX_NEW, temperature=1.0,
                      use_bias_correction_kl=kl_correction, save_strategy="no", logging_strategy="no")
    policy = copy.deepcopy(batch["model"])  # TRL adds a "ref" adapter to the model it is given
    trainer = GRPOTrainer(model=policy, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                          args=args, train_dataset=Dataset.from_dict({"prompt": ["12+34="] * n}),
                          processing_class=batch["tok"])
    inputs = trl_inputs(batch, old=mu > 1, ref=beta > 0)
    trainer.model.eval()  # one batch, no gradient accumulation: TRL's normalisers are then those of the batch
    with torch.no_grad():
        return float(trainer._compute_loss(trainer.model, inputs))


CASES = [(loss_type, mu, beta, kl_correction) for loss_type in ("grpo", "dapo", "dr_grpo") for mu in (1, 2)
         for beta, kl_correction in ((0.0, False), (0.04, False), (0.04, True))]


@pytest.mark.parametrize("loss_type, mu, beta, kl_correction", CASES)
def test_loss_matches_trl(batch, tmp_path, loss_type, mu, beta, kl_correction):
    model = batch["model"]
    model.eval()
    with torch.no_grad():
        logp = completion_logprobs(model, batch["ids"], batch["att"], batch["plen"], batch["mask"].shape[1])
        mask = batch["mask"]
        inputs = LossInputs(logp, batch["old"] if mu > 1 else logp, batch["advantages"], mask,
                            num_sequences=mask.shape[0], num_tokens=int(mask.sum()), max_completion_length=MAX_NEW,
                            ref_logp=batch["ref"])
        ours, stats = policy_loss(inputs, LossSettings(loss_type=loss_type, eps_low=EPS_LOW, eps_high=EPS_HIGH,
                                                       beta=beta, kl_ratio_correction=kl_correction))
    theirs = trl_loss(batch, tmp_path, loss_type, mu, beta, kl_correction)
    assert abs(float(ours) - theirs) < 1e-5, (loss_type, mu, beta, float(ours), theirs)
    assert float(ours) != 0.0
    if mu > 1:
        assert stats["clip_ratio"] > 0  # the perturbed pi_old really exercises the clipping
