"""The loss mask on a real policy (the tiny model, LoRA): in a batch of conversations, the environment's tokens after
the model's last turn and the sampler's log-probs at every environment position do not change the loss or the LoRA
gradients at all (bitwise), for every loss type; a model token does. (An environment message *between* two model
turns changes the later turn's log-probs through attention, as it should: it is the context the model acted in.)"""

from __future__ import annotations

import pytest
import torch

from learner.algorithms import GRPO
from learner.config import GRPOConfig, LoraConfig, ModelConfig
from learner.learner import Learner
from learner.losses import POLICY_LOSSES
from rollout.engines.base import Completion

pytestmark = pytest.mark.integration
PROMPTS = [[5, 6, 7, 8], [9, 10, 11]]
# model turn, environment message, model turn, trailing environment tokens (e.g. a tool result after the last turn)
MASK = [1, 1, 1, 0, 0, 1, 1, 0, 0]


def conversations(trailing: list[int], env_logprob: float, model_token: int = 20) -> list[list[Completion]]:
    groups = []
    for p, prompt in enumerate(PROMPTS):
        group = []
        for j in range(2):
            ids = [model_token + j, 21, 22, 30, 31, 23 + p, 24, *trailing]
            logprobs = [-1.0 - 0.1 * j, -2.0, -1.5, env_logprob, env_logprob, -0.7, -1.1, env_logprob, env_logprob]
            group.append(Completion(p, prompt, ids, "", logprobs, "stop", model_mask=MASK))
        groups.append(group)
    return groups


def step(model_dir, loss_type: str, groups) -> tuple[float, dict[str, torch.Tensor]]:
    cfg = GRPOConfig(lr=1e-2, loss_type=loss_type, lora=LoraConfig(r=4, alpha=8), micro_batch_size=2,
                     **({"epsilon_high": 5.0} if loss_type == "cispo" else {}))
    learner = Learner(model_dir, ModelConfig(device="cpu"), cfg, seed=0, total_steps=1, max_new_tokens=16)
    grads: dict[str, torch.Tensor] = {}
    for name, p in learner.model.named_parameters():
        if "lora_" in name:
            p.register_post_accumulate_grad_hook(lambda p, name=name: grads.__setitem__(name, p.grad.detach().clone()))
    batch = GRPO(cfg).make_batch(groups, [1.0, 0.0, 0.0, 1.0], policy_version=7)  # off-policy: sampler log-probs used
    stats = learner.step(batch)
    return stats["loss"], grads


@pytest.mark.parametrize("loss_type", POLICY_LOSSES.names())
def test_environment_tokens_carry_no_loss_and_no_gradient(tiny_model_dir, loss_type):
    loss, grads = step(tiny_model_dir, loss_type, conversations([40, 41], -3.0))
    other_loss, other_grads = step(tiny_model_dir, loss_type, conversations([50, 51], -0.2))
    assert loss == other_loss and grads.keys() == other_grads.keys()
    assert all(torch.equal(grads[k], other_grads[k]) for k in grads), loss_type
    changed_loss, changed_grads = step(tiny_model_dir, loss_type, conversations([40, 41], -3.0, model_token=25))
    assert changed_loss != loss or any(not torch.equal(grads[k], changed_grads[k]) for k in grads)
