"""Reward shaping before advantages (pure functions on tensors).

`unlikeliness_rewards` — "Rewarding the Unlikely" (He et al. 2025, arXiv 2506.02355), docs/methods.md#unlikeliness-reward: GRPO
reinforces already-likely correct samples (rank bias), which sharpens the policy and hurts pass@N at large N.
Within each group, rank the G samples by their length-normalised sampling log-prob l_i (rank 0 = least likely)
and shape R~_i = R_i * (1 - beta_u * rank_i / G); normal GRPO advantages are then computed on R~.
With G = 32 and beta_u = 0.25 the most likely correct sample gets 0.758 and the least likely keeps 1.0.

`informative_groups` — DAPO's dynamic sampling (arXiv 2503.14476): groups whose rewards are all equal carry no
advantage signal; the unlikeliness recipe drops them too.
"""

from __future__ import annotations

import torch


def unlikeliness_rewards(rewards: torch.Tensor, mean_logprobs: torch.Tensor, group_size: int,
                         beta_u: float = 0.25) -> torch.Tensor:
    """R~_i = R_i (1 - beta_u rank_i / G), rank_i = position of l_i in ascending order within its group
    (ties broken by sample order, a stable sort). rewards, mean_logprobs: [num_prompts * G], grouped."""
    l_grouped = mean_logprobs.view(-1, group_size)
    order = torch.argsort(l_grouped, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(group_size).expand_as(order))
    factor = 1.0 - beta_u * ranks.to(rewards.dtype) / group_size
    return (rewards.view(-1, group_size) * factor).reshape(-1)


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[num_prompts] bool: True for groups whose rewards are not all equal."""
    grouped = rewards.view(-1, group_size)
    return (grouped != grouped[:, :1]).any(dim=1)
