"""The metrics of a step's sampled groups that users judge RL runs by, named as TRL's GRPOTrainer names them
(a pure function of the completions and their rewards; the driver adds its output to the step's metrics row):

    completions/mean_length, /min_length, /max_length   completion tokens (the end token included when sampled)
    completions/clipped_ratio                           share of completions cut at max_new_tokens (finish "length")
    completions/mean_terminated_length                  mean length of those that ended by themselves (0 if none)
    frac_reward_zero_std                                share of groups whose rewards are all equal (no advantage)
    tokens_per_second                                   completion tokens sampled per second of the whole step
"""

from __future__ import annotations

from rollout.engines.base import Completion


def completion_metrics(groups: list[list[Completion]], rewards: list[float], seconds: float) -> dict[str, float]:
    """groups: the step's completions, one list per prompt; rewards: theirs, flat in the same order; seconds: the
    step's wall time."""
    flat = [c for group in groups for c in group]
    if not flat or len(rewards) != len(flat):
        raise ValueError(f"completion_metrics needs one reward per completion ({len(flat)} completions, "
                         f"{len(rewards)} rewards)")
    lengths = [len(c.token_ids) for c in flat]
    terminated = [n for n, c in zip(lengths, flat, strict=True) if c.finish_reason != "length"]
    spans, start = [], 0
    for group in groups:
        spans.append(rewards[start:start + len(group)])
        start += len(group)
    return {"completions/mean_length": sum(lengths) / len(lengths), "completions/min_length": min(lengths),
            "completions/max_length": max(lengths),
            "completions/clipped_ratio": sum(c.finish_reason == "length" for c in flat) / len(flat),
            "completions/mean_terminated_length": sum(terminated) / len(terminated) if terminated else 0.0,
            "frac_reward_zero_std": sum(max(g) == min(g) for g in spans) / len(spans),
            "tokens_per_second": sum(lengths) / seconds if seconds > 0 else 0.0}
