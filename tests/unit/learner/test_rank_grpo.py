"""Rank-GRPO pieces (docs/methods.md#rank-grpo) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from learner.losses import LossInputs, LossSettings, policy_loss
from learner.rank_grpo import (
    parsed_items,
    rank_advantages,
    rank_rewards,
    rank_segments,
    segment_log_ratio,
    token_advantages,
)
from rollout.list_metrics import ndcg_at_k, recall_at_k
from rollout.tasks import load_task
from rollout.tasks.base import Example


def test_segmentation_counts_newlines_before_each_token():
    tokens = ["ba", "ko", "\n", "ri", "\n", "mu", "te", "\n", "sa"]
    assert rank_segments(tokens, 3) == [0, 0, 0, 1, 1, 2, 2, 2, 3]  # the 4th line is overflow (rank K)
    assert parsed_items(tokens, 3) == ["bako", "ri", "mute"]


def test_token_spanning_a_newline_keeps_parse_and_segments_aligned():
    """A BPE token 'ko\\nri' holds the end of line 1 and the start of line 2: it is scored with rank 1 (where it
    starts) and the parse still sees two items, so the line count of parsing and of segmentation agree."""
    tokens = ["ba", "ko\nri", "\n", "mu"]
    seg = rank_segments(tokens, 5)
    items = parsed_items(tokens, 5)
    assert seg == [0, 0, 1, 2]
    assert items == ["bako", "ri", "mu"]
    assert max(seg) + 1 == len(items)


def test_rank_rewards_by_hand():
    rel = torch.tensor([[1.0, 0.0, 1.0]])
    assert rank_rewards(rel, "exp_inf").tolist() == [[1.0, 0.0, 1.0]]
    d = [1 / math.log2(2), 1 / math.log2(3), 1 / math.log2(4)]
    want = [d[0] + d[2], d[2], d[2]]  # only rank k and later ranks
    assert rank_rewards(rel, "log_decay")[0].tolist() == pytest.approx(want)
    with pytest.raises(ValueError):
        rank_rewards(rel, "nope")


def test_rank_advantages_normalise_per_rank_within_group():
    r = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # one group of 4, K = 2
    a = rank_advantages(r, 4)
    std = torch.tensor([1.0, 0.0, 1.0, 0.0]).std().item()
    assert a[:, 0].tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.5 / (std + 1e-4),
                                              -0.5 / (std + 1e-4)])
    assert a[:, 1].tolist() == pytest.approx([-0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.5 / (std + 1e-4),
                                              0.5 / (std + 1e-4)])


def test_token_advantages_and_length_shaping():
    adv = torch.tensor([[1.0, -1.0], [2.0, 3.0], [0.5, 0.5]])
    segs = [[0, 0, 1, 1], [0, 1, 2, 2], [0, 0]]
    out = token_advantages(adv, segs, n_items=[2, 3, 1], list_length=2, ends_with_eos=[True, True, True])
    assert out[0] == pytest.approx([1.0, 1.0, -1.0, -1.0 + 0.1])  # exactly K items: +0.1 on the end token
    assert out[1] == pytest.approx([2.0, 3.0, -0.1, -0.1])  # overflow tokens: -0.1 each (more than K: no bonus)
    assert out[2] == pytest.approx([0.5, 0.5 - 0.1])  # fewer than K items: -0.1 on the end token


def test_segment_ratio_is_the_geometric_mean_of_token_ratios():
    log_ratio = torch.tensor([[0.1, 0.3, -0.2, 0.0]])
    segments = torch.tensor([[0, 0, 1, 1]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = segment_log_ratio(log_ratio, segments, mask)
    assert out.tolist()[0] == pytest.approx([0.2, 0.2, -0.2, -0.2])  # masked token excluded from the mean


def test_rank_level_clipping_in_the_loss():
    logp = torch.log(torch.tensor([[1.2, 1.2, 1.0]]))
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, 1.0, 1.0]])
    mask = torch.ones(1, 3)
    segments = torch.tensor([[0, 0, 1]])
    inputs = LossInputs(logp, old, adv, mask, num_sequences=1, num_tokens=3, max_completion_length=3, segments=segments)
    loss, stats = policy_loss(inputs, LossSettings(loss_type="dapo", eps_low=0.06, eps_high=0.08, ratio_level="segment"))
    assert loss.item() == pytest.approx(-(1.08 + 1.08 + 1.0) / 3)  # rank 1's ratio 1.2 clipped to 1.08
    assert stats["clip_ratio"] == pytest.approx(2 / 3)


def test_list_metrics_and_relevance_rules():
    assert ndcg_at_k([1, 0, 1], 2, 3) == pytest.approx((1 + 1 / 2) / (1 + 1 / math.log2(3)))
    assert recall_at_k([1, 0, 1, 1], 4, 2) == 0.25
    task = load_task("ranklist")
    liked = task.by_genre[0][:3]
    truth = task.by_genre[0][3:]
    ex = Example(id="x", prompt="", answer={"liked": liked, "truth": truth})
    items = [truth[0], "??", liked[0], truth[0], task.by_genre[1][0]]
    assert task.relevance(ex, items) == [1.0, 0.0, 0.0, 0.0, 0.0]  # malformed, liked, duplicate, wrong genre
    assert task.relevance(ex, [truth[1]]) == [1.0, 0.0, 0.0, 0.0, 0.0]  # missing lines keep their slots at 0
