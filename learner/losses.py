"""GRPO-family losses as pure tensor functions (docs/methods.md#grpo), registered by name.

Shapes: per-token tensors are [B, T] over completion tokens (B sequences, T = longest completion), with a 0/1
`mask` marking real tokens; per-sequence tensors are [B].

- Advantages (DeepSeekMath GRPO, arXiv 2402.03300): A_i = (R_i - mean_G R) / (std_G R + eps);
  Dr. GRPO (arXiv 2503.20783) drops the std division: A_i = R_i - mean_G R.
- Clipped surrogate (PPO, arXiv 1707.06347), per token: L = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A),
  rho = exp(logp - old_logp); DAPO's clip-higher (arXiv 2503.14476) sets eps_high > eps_low.
- KL penalty, k3 estimator (Schulman 2020): k3 = exp(ref - logp) - (ref - logp) - 1, added as beta * k3;
  optionally weighted by the ratio rho (rho * k3, DeepSeek-V3.2, arXiv 2512.02556: the unbiased reverse-KL
  gradient off-policy; TRL's `use_bias_correction_kl`, on by default there, off here as in docs/methods.md#kl-penalty).
- Aggregations: `grpo` = mean over each sequence's tokens, then over sequences; `dapo` = sum over all tokens /
  number of tokens; `dr_grpo` = sum over all tokens / (B x max_completion_length).
These follow TRL's GRPOTrainer (`loss_type`, `epsilon`, `epsilon_high`, `beta`, `scale_rewards`); the parity
test (tests/integration/test_trl_parity.py) checks equality with TRL on the same batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {}
AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {}


def register(table: dict, name: str):
    def decorate(fn):
        table[name] = fn
        return fn

    return decorate


@register(ADVANTAGES, "group")
def group_normalized_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """A_i = (R_i - mean_G R) / (std_G R + eps), std unbiased as in TRL. rewards: [num_prompts * G], grouped."""
    grouped = rewards.view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    return (centered / (grouped.std(dim=1, keepdim=True) + eps)).reshape(-1)


@register(ADVANTAGES, "none")
def group_centered_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """Dr. GRPO: A_i = R_i - mean_G R (no std division)."""
    grouped = rewards.view(-1, group_size)
    return (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)


@register(ADVANTAGES, "batch")
def batch_normalized_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """Group-centred, divided by the std of the whole batch's rewards (TRL scale_rewards="batch")."""
    grouped = rewards.view(-1, group_size)
    return ((grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)) / (rewards.std() + eps)


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float
                      ) -> torch.Tensor:
    """Per-token -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A), rho = exp(log_ratio); advantages [B] (broadcast
    over tokens) or [B, T] (per token, e.g. Rank-GRPO's per-rank advantages)."""
    ratio = torch.exp(log_ratio)
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    return -torch.min(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 = exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased for KL(pi || ref))."""
    diff = ref_logp - logp
    return torch.exp(diff) - diff - 1


@register(AGGREGATIONS, "grpo")
def aggregate_sequence_mean(per_token: torch.Tensor, mask: torch.Tensor, num_sequences: int,
                            num_tokens: int, max_completion_length: int) -> torch.Tensor:
    """Sum over sequences of (token mean of the sequence) / num_sequences of the whole batch."""
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / num_sequences


@register(AGGREGATIONS, "dapo")
def aggregate_token_mean(per_token: torch.Tensor, mask: torch.Tensor, num_sequences: int,
                         num_tokens: int, max_completion_length: int) -> torch.Tensor:
    """Sum over all tokens / number of completion tokens in the whole batch (TRL's dapo / bnpo)."""
    return (per_token * mask).sum() / max(num_tokens, 1)


@register(AGGREGATIONS, "dr_grpo")
def aggregate_constant_normalizer(per_token: torch.Tensor, mask: torch.Tensor, num_sequences: int,
                                  num_tokens: int, max_completion_length: int) -> torch.Tensor:
    """Sum over all tokens / (num_sequences x max_completion_length)."""
    return (per_token * mask).sum() / (num_sequences * max_completion_length)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              loss_type: str = "grpo", eps_low: float = 0.2, eps_high: float = 0.2, beta: float = 0.0,
              ref_logp: torch.Tensor | None = None, kl_ratio_correction: bool = False,
              segments: torch.Tensor | None = None, num_sequences: int | None = None,
              num_tokens: int | None = None, max_completion_length: int | None = None
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss of one (micro-)batch and its statistics.

    num_sequences / num_tokens are those of the whole batch the optimizer step covers (so micro-batch losses add
    up to the full-batch loss); they default to this micro-batch's own. max_completion_length is the configured
    limit (dr_grpo's constant normaliser), defaulting to T. With `segments` [B, T] (Rank-GRPO's ranks) the ratio
    is taken per segment: exp of the mean token log-ratio over the segment (learner/rank_grpo.py).
    """
    mask = mask.to(logp.dtype)
    num_sequences = num_sequences or logp.shape[0]
    num_tokens = num_tokens if num_tokens is not None else int(mask.sum())
    max_completion_length = max_completion_length or logp.shape[1]
    log_ratio = logp - old_logp
    if segments is not None:
        from learner.rank_grpo import segment_log_ratio

        log_ratio = segment_log_ratio(log_ratio, segments, mask)
    per_token = clipped_surrogate(log_ratio, advantages, eps_low, eps_high)
    stats: dict[str, float] = {}
    if beta > 0.0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp (log-probs of the reference policy)")
        kl = k3_kl(logp, ref_logp)
        weighted = kl * torch.exp(logp - old_logp) if kl_ratio_correction else kl
        per_token = per_token + beta * weighted
        stats["kl"] = float((kl.detach() * mask).sum() / mask.sum().clamp(min=1))
    loss = AGGREGATIONS[loss_type](per_token, mask, num_sequences, num_tokens, max_completion_length)
    with torch.no_grad():
        ratio = torch.exp(log_ratio)
        adv = (advantages[:, None] if advantages.dim() == 1 else advantages).expand_as(ratio)
        clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
        stats["clip_ratio"] = float((clipped.to(mask.dtype) * mask).sum() / mask.sum().clamp(min=1))
    return loss, stats
