"""Built-in reward functions besides math_accuracy (docs/methods.md#built-in-rewards), each registered in REWARDS as a
factory of its `args:`.

    format   1 if the completion matches `pattern` (re.search, `.` matching newlines), else 0
    overlong DAPO's soft overlong punishment (arXiv 2503.14476, Eq. 13), on the completion's token count |y|:
             0 while |y| <= L_max - L_cache, then (L_max - L_cache - |y|) / L_cache down to -1 at L_max, -1 past it;
             L_max = `max_completion_len` (default: the run's completion limit), L_cache = `soft_punish_cache`
             (default: a fifth of L_max, DAPO's 4096 of 20480)
    length   a plain length penalty -|y| / L_max, in [-1, 0] (scale it with the reward's weight)
"""

from __future__ import annotations

import re

from rollout.rewards.base import REWARDS, RewardFn, completion_text


@REWARDS.register("format")
def format_reward(pattern: str) -> RewardFn:
    """1.0 for a completion in which `pattern` is found (re.search with re.DOTALL), else 0.0."""
    try:
        regex = re.compile(pattern, re.DOTALL)
    except re.error as err:
        raise ValueError(f"reward 'format': args.pattern {pattern!r} is not a regular expression ({err})") from None

    def format(prompts, completions, **columns) -> list[float]:  # noqa: A001 (the metric's name)
        return [1.0 if regex.search(completion_text(c)) else 0.0 for c in completions]

    return format


@REWARDS.register("overlong")
def overlong_reward(soft_punish_cache: int | None = None, max_completion_len: int | None = None) -> RewardFn:
    """DAPO's soft overlong punishment (TRL's get_soft_overlong_punishment, with the run's limit as default L_max)."""
    for name, value in (("soft_punish_cache", soft_punish_cache), ("max_completion_len", max_completion_len)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"reward 'overlong': args.{name} must be a positive integer, got {value!r}")

    def overlong(prompts, completions, completion_ids, max_completion_length, **columns) -> list[float]:
        l_max = max_completion_len or max_completion_length
        l_cache = min(soft_punish_cache or max(1, l_max // 5), l_max)
        return [soft_overlong(len(ids), l_max, l_cache) for ids in completion_ids]

    return overlong


def soft_overlong(length: int, l_max: int, l_cache: int) -> float:
    """DAPO Eq. 13: 0 up to L_max - L_cache, linear to -1 at L_max, -1 beyond."""
    if length <= l_max - l_cache:
        return 0.0
    if length <= l_max:
        return (l_max - l_cache - length) / l_cache
    return -1.0


@REWARDS.register("length")
def length_reward(max_completion_len: int | None = None) -> RewardFn:
    """-|y| / L_max for every completion (L_max: the run's completion limit unless given)."""
    if max_completion_len is not None and (not isinstance(max_completion_len, int) or max_completion_len < 1):
        raise ValueError(f"reward 'length': args.max_completion_len must be a positive integer, got "
                         f"{max_completion_len!r}")

    def length(prompts, completions, completion_ids, max_completion_length, **columns) -> list[float]:
        l_max = max_completion_len or max_completion_length
        return [-len(ids) / l_max for ids in completion_ids]

    return length
