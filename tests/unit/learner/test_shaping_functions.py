"""Unlikeliness reward shaping (docs/methods.md#unlikeliness-reward) against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from learner.reward_shaping import informative_groups, unlikeliness_rewards


def test_unlikeliness_ranks_within_each_group():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    mean_logp = torch.tensor([-0.1, -2.0, -0.5, -1.0, -3.0, -0.2, -0.1, -0.4])  # two groups of 4
    shaped = unlikeliness_rewards(rewards, mean_logp, 4, beta_u=0.25)
    # group 1 ranks (ascending l): -2.0 -> 0, -1.0 -> 1, -0.5 -> 2, -0.1 -> 3
    assert shaped[:4].tolist() == pytest.approx([1 - 0.25 * 3 / 4, 1.0, 0.0, 1 - 0.25 * 1 / 4])
    # group 2 ranks: -3.0 -> 0, -0.4 -> 1, -0.2 -> 2, -0.1 -> 3
    assert shaped[4:].tolist() == pytest.approx([1.0, 1 - 0.25 * 2 / 4, 1 - 0.25 * 3 / 4, 1 - 0.25 * 1 / 4])


def test_unlikeliness_paper_example_g32():
    shaped = unlikeliness_rewards(torch.ones(32), torch.arange(32, dtype=torch.float32), 32, beta_u=0.25)
    assert shaped.max().item() == 1.0 and shaped.min().item() == pytest.approx(0.7578125)  # 1 - 0.25 * 31 / 32


def test_informative_groups():
    r = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    assert informative_groups(r, 2).tolist() == [False, False, True]
