"""The step metrics of sampled groups (TRL's names) on completions made by hand."""

from __future__ import annotations

import pytest

from rollout.engines.base import Completion
from rollout.metrics import completion_metrics


def completion(n_tokens: int, finish: str) -> Completion:
    return Completion(prompt_index=0, prompt_ids=[1], token_ids=list(range(n_tokens)), text="x" * n_tokens,
                      logprobs=[-1.0] * n_tokens, finish_reason=finish)


def test_lengths_truncation_and_uniform_groups():
    groups = [[completion(2, "stop"), completion(4, "length")], [completion(4, "length"), completion(3, "stop")]]
    m = completion_metrics(groups, [1.0, 0.0, 0.5, 0.5], seconds=2.0)
    assert m["completions/mean_length"] == 3.25 and m["completions/min_length"] == 2
    assert m["completions/max_length"] == 4 and m["completions/clipped_ratio"] == 0.5
    assert m["completions/mean_terminated_length"] == 2.5
    assert m["frac_reward_zero_std"] == 0.5  # the second group's rewards are equal
    assert m["tokens_per_second"] == 13 / 2.0


def test_every_completion_cut_at_the_limit():
    groups = [[completion(4, "length")] * 3] * 2
    m = completion_metrics(groups, [0.0, 1.0, 0.0, 1.0, 1.0, 1.0], seconds=1.0)
    assert m["completions/clipped_ratio"] == 1.0 and m["completions/mean_terminated_length"] == 0.0
    assert m["completions/min_length"] == m["completions/max_length"] == 4
    assert m["frac_reward_zero_std"] == 0.5


def test_one_reward_per_completion():
    with pytest.raises(ValueError, match="one reward per completion"):
        completion_metrics([[completion(1, "stop")] * 2], [1.0], seconds=1.0)
