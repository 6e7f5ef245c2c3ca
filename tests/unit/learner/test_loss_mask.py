"""Multi-turn batches: the environment's tokens carry no loss. Every policy loss, at token and sequence level, with
and without the KL term, is a function of the masked tokens only: changing anything at an environment position (its
log-probs under the policy, the sampler and the reference, its per-token advantage) leaves the loss and its gradient
bitwise unchanged, and the denominators count the model's tokens (token-mean: the batch's model tokens; sequence-mean:
each sequence's model tokens; Dr. GRPO: num_sequences x the completion limit, a constant; bnpo: the micro-batch's
model tokens), as TRL 1.16 does with completion_mask x tool_mask. Changing a model token's value does change it."""

from __future__ import annotations

import pytest
import torch

from learner.algorithms import RolloutBatch
from learner.losses import POLICY_LOSSES, LossInputs, LossSettings, policy_loss

B, T = 4, 9
# rows: model turn, environment reply, model turn again, then padding; the last row has no environment tokens
MODEL = torch.tensor([[1, 1, 1, 0, 0, 0, 1, 1, 0],
                      [1, 1, 0, 0, 1, 1, 1, 0, 0],
                      [1, 0, 0, 0, 0, 1, 1, 1, 1],
                      [1, 1, 1, 1, 1, 1, 0, 0, 0]], dtype=torch.float64)
SAMPLED = torch.tensor([[1] * 8 + [0], [1] * 7 + [0] * 2, [1] * 9, [1] * 6 + [0] * 3], dtype=torch.float64)


def inputs(seed: int, env_seed: int | None = None, per_token: bool = False) -> tuple[LossInputs, torch.Tensor]:
    """A batch whose environment positions (and padding) hold values drawn from env_seed."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logp + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64) if per_token else torch.randn(B, generator=g,
                                                                                             dtype=torch.float64)
    mask = SAMPLED * MODEL
    if env_seed is not None:  # other values wherever the loss must not look
        h = torch.Generator().manual_seed(env_seed)
        off = mask == 0
        logp = torch.where(off, -torch.rand(B, T, generator=h, dtype=torch.float64) * 9, logp)
        old = torch.where(off, -torch.rand(B, T, generator=h, dtype=torch.float64) * 9, old)
        ref = torch.where(off, -torch.rand(B, T, generator=h, dtype=torch.float64) * 9, ref)
        if per_token:
            adv = torch.where(off, torch.randn(B, T, generator=h, dtype=torch.float64) * 5, adv)
    logp = logp.clone().requires_grad_(True)
    return LossInputs(logp, old, adv, mask, num_sequences=B, num_tokens=int(mask.sum()), max_completion_length=T,
                      ref_logp=ref), logp


def loss_and_grad(settings: LossSettings, seed: int, env_seed: int | None, per_token: bool = False):
    x, logp = inputs(seed, env_seed, per_token)
    loss, _ = policy_loss(x, settings)
    loss.backward()
    return loss.detach(), logp.grad * x.mask  # the gradient at the model's tokens (elsewhere it is zero, checked)


@pytest.mark.parametrize("loss_type", POLICY_LOSSES.names())
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_environment_positions_change_nothing(loss_type, level, beta):
    settings = LossSettings(loss_type=loss_type, ratio_level=level, beta=beta, eps_high=5.0 if loss_type == "cispo"
                            else 0.28)
    loss, grad = loss_and_grad(settings, seed=0, env_seed=None)
    for env_seed in (1, 2):
        other_loss, other_grad = loss_and_grad(settings, seed=0, env_seed=env_seed)
        assert torch.equal(loss, other_loss), (loss_type, level, beta)
        assert torch.equal(grad, other_grad), (loss_type, level, beta)
    x, logp = inputs(0, 1)
    policy_loss(x, settings)[0].backward()
    assert torch.equal(logp.grad * (1 - x.mask), torch.zeros_like(logp.grad))  # no gradient reaches them
    changed = inputs(0)[0]
    changed.logp.data[0, 1] -= 0.5  # a model token
    assert not torch.equal(policy_loss(changed, settings)[0].detach(), loss)


def test_per_token_advantages_at_environment_positions_change_nothing():
    settings = LossSettings(loss_type="dapo")
    loss, grad = loss_and_grad(settings, seed=3, env_seed=None, per_token=True)
    other_loss, other_grad = loss_and_grad(settings, seed=3, env_seed=4, per_token=True)
    assert torch.equal(loss, other_loss) and torch.equal(grad, other_grad)


def test_the_batch_loss_mask_is_sampled_times_model():
    batch = RolloutBatch(prompt_ids=[[1]] * 2, completion_ids=[[5, 6, 7], [5, 6]], rewards=[1.0, 0.0], group_size=2,
                         loss=LossSettings(), advantages=[1.0, -1.0], model_masks=[[1, 0, 1], [0, 1]])
    sampled = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert batch.loss_mask(sampled).tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    single = RolloutBatch(prompt_ids=[[1]], completion_ids=[[5]], rewards=[1.0], group_size=1, loss=LossSettings(),
                          advantages=[1.0])
    assert single.loss_mask(sampled) is sampled
