"""GRPO loss pieces against hand-computed values (docs/methods.md#grpo)."""

from __future__ import annotations

import math

import pytest
import torch

from learner.losses import (
    ADVANTAGES,
    LossInputs,
    LossSettings,
    clipped_surrogate,
    constant_normalizer,
    k3_kl,
    local_token_mean,
    policy_loss,
    sequence_mean,
    token_mean,
)


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])  # two groups of 3
    a = ADVANTAGES.get("group")(r, 3)
    std = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0)
    assert a[:3].tolist() == pytest.approx([(2 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4)])
    assert a[3:].tolist() == pytest.approx([-(2 / 3) / (std + 1e-4), (1 / 3) / (std + 1e-4), (1 / 3) / (std + 1e-4)])
    assert ADVANTAGES.get("none")(r, 3).tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3])
    assert ADVANTAGES.get("group")(torch.ones(4), 4).abs().max() == 0  # an all-equal group carries no signal


def test_clipping_both_sides():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[0.5, 0.9, 1.1, 1.5]]))
    pos = clipped_surrogate(logp - old, torch.tensor([1.0]), 0.2, 0.28)
    assert pos.tolist()[0] == pytest.approx([-0.5, -0.9, -1.1, -1.28])  # A > 0: only the top is clipped
    neg = clipped_surrogate(logp - old, torch.tensor([-1.0]), 0.2, 0.28)
    assert neg.tolist()[0] == pytest.approx([0.8, 0.9, 1.1, 1.5])  # A < 0: only the bottom is clipped


def test_k3_by_hand():
    logp, ref = torch.tensor([[-1.0]]), torch.tensor([[-2.0]])
    assert k3_kl(logp, ref).item() == pytest.approx(math.exp(-1) + 1 - 1)
    assert k3_kl(ref, ref).item() == 0.0


def test_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    inputs = LossInputs(per_token, per_token, torch.zeros(2), mask, num_sequences=2, num_tokens=4,
                        max_completion_length=5)
    assert sequence_mean(per_token, inputs).item() == pytest.approx((2.0 + 4.0) / 2)  # grpo, sapo
    assert token_mean(per_token, inputs).item() == pytest.approx(10.0 / 4)  # dapo, cispo
    assert constant_normalizer(per_token, inputs).item() == pytest.approx(10.0 / (2 * 5))  # dr_grpo
    assert local_token_mean(per_token, inputs).item() == pytest.approx(10.0 / 4)  # bnpo, one micro-batch
    second_half = LossInputs(per_token[1:], per_token[1:], torch.zeros(1), mask[1:], num_sequences=2, num_tokens=4,
                             max_completion_length=5)
    assert local_token_mean(per_token[1:], second_half).item() == pytest.approx(4.0 / 1 * (1 / 2))  # its own tokens


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo", "sapo", "cispo"])
def test_micro_batches_add_up_to_the_full_batch(loss_type, level):
    torch.manual_seed(0)
    logp, old, ref = torch.randn(6, 5) * 0.1 - 1, torch.randn(6, 5) * 0.1 - 1, torch.randn(6, 5) * 0.1 - 1
    mask = (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1
    adv = torch.randn(6)
    settings = LossSettings(loss_type=loss_type, beta=0.1, ratio_level=level,
                            eps_high=1.1 if loss_type == "cispo" else 0.2)

    def loss(s: slice) -> torch.Tensor:  # normalised by the whole batch's sequences and tokens
        return policy_loss(LossInputs(logp[s], old[s], adv[s], mask[s], num_sequences=6, num_tokens=int(mask.sum()),
                                      max_completion_length=5, ref_logp=ref[s]), settings)[0]

    full = loss(slice(0, 6))
    parts = sum(loss(s) for s in (slice(0, 2), slice(2, 6)))
    assert parts.item() == pytest.approx(full.item(), abs=1e-6)


def test_beta_without_reference_is_an_error():
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(LossInputs(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2), num_sequences=1,
                               num_tokens=2, max_completion_length=2), LossSettings(beta=0.1))
