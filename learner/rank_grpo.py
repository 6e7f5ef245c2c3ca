"""Rank-GRPO (ConvRec-R1, Zhu et al. 2025, arXiv 2510.20150), docs/methods.md#rank-grpo, as pure functions.

For ranked-list outputs the unit of credit is a rank (one line of the list), not a token or a whole sequence:
- segmentation: the tokens of rank k (1-based) are those preceded by k-1 newlines in the decoded completion; a
  token that itself contains a newline belongs to the rank it starts in. Tokens after line K are overflow
  (rank K + 1). The same decoded text is used for parsing the list, so ranks and parsed lines always agree
  (the authors' code derives them separately and can misalign when they disagree on the line count).
- rank rewards from per-rank relevance rel_{i,k}: `exp_inf` r_{i,k} = rel_{i,k} (the authors' default);
  `log_decay` r_{i,k} = sum_{j >= k} rel_{i,j} / log2(j + 1) (no credit from earlier ranks).
- per-rank advantages normalised across the group at the same rank:
  A_{i,k} = (r_{i,k} - mean_i r_{.,k}) / (std_i r_{.,k} + 1e-4); every token of rank k gets A_{i,k}.
- length shaping on tokens: -0.1 on each overflow token; +0.1 on the end token if exactly K items, -0.1 if fewer.
- rank-level importance ratio: w_{i,k} = exp(mean_{t in rank k} d_{i,t}), clipped to [1 - 0.06, 1 + 0.08]
  (`segment_log_ratio` gives each token its segment's mean log-ratio; the loss is then the clipped surrogate
  with per-token advantages, token-mean aggregated, plus k3 KL with beta = 1e-3 in the authors' setup).
"""

from __future__ import annotations

import torch

RANK_REWARDS = ("exp_inf", "log_decay")


def rank_segments(token_texts: list[str], list_length: int) -> list[int]:
    """0-based rank of each completion token: the number of newlines in the text before the token, capped at
    list_length (= the overflow segment)."""
    ranks, newlines = [], 0
    for text in token_texts:
        ranks.append(min(newlines, list_length))
        newlines += text.count("\n")
    return ranks


def parsed_items(token_texts: list[str], list_length: int) -> list[str]:
    """The list the segmentation sees: the completion's text split into lines, the first list_length of them."""
    lines = "".join(token_texts).split("\n")
    return [line.strip() for line in lines[:list_length]]


def rank_rewards(relevance: torch.Tensor, variant: str) -> torch.Tensor:
    """[B, K] per-rank rewards from [B, K] 0/1 relevance (docs/methods.md#rank-grpo)."""
    if variant == "exp_inf":
        return relevance.clone()
    if variant == "log_decay":
        k = relevance.shape[1]
        discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=relevance.dtype))
        discounted = relevance * discount
        return discounted.flip(1).cumsum(1).flip(1)  # sum over j >= k
    raise ValueError(f"unknown rank reward {variant!r}; use one of {RANK_REWARDS}")


def rank_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """[B, K] A_{i,k} = (r_{i,k} - mean_i r_{.,k}) / (std_i r_{.,k} + eps) within each group (std unbiased)."""
    b, k = rewards.shape
    grouped = rewards.view(-1, group_size, k)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    return (centered / (grouped.std(dim=1, keepdim=True) + eps)).view(b, k)


def token_advantages(advantages: torch.Tensor, segments: list[list[int]], n_items: list[int], list_length: int,
                     ends_with_eos: list[bool], shaping: float = 0.1) -> list[list[float]]:
    """Per-token advantages: A_{i,k} on the tokens of rank k, 0 on overflow tokens, plus length shaping
    (-shaping per overflow token; +shaping on the end token if exactly K items, -shaping if fewer)."""
    out = []
    for i, seg in enumerate(segments):
        row = [float(advantages[i, r]) if r < list_length else -shaping for r in seg]
        if ends_with_eos[i] and row:
            row[-1] += shaping if n_items[i] == list_length else -shaping if n_items[i] < list_length else 0.0
        out.append(row)
    return out


def segment_log_ratio(log_ratio: torch.Tensor, segments: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each token's value replaced by the mean of log_ratio over the masked tokens of its segment (same row):
    exp of it is the rank-level (geometric-mean) importance ratio. log_ratio, segments, mask: [B, T]."""
    n_seg = int(segments.max()) + 1 if segments.numel() else 1
    one_hot = torch.nn.functional.one_hot(segments.long(), n_seg).to(log_ratio.dtype) * mask[..., None]
    sums = (one_hot * log_ratio[..., None]).sum(1)  # [B, S]
    counts = one_hot.sum(1).clamp(min=1)
    means = sums / counts
    return means.gather(1, segments.long())
