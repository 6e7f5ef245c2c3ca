"""The metrics of a step's sampled groups that users judge RL runs by, named as TRL's GRPOTrainer names them
(a pure function of the completions and their rewards; the driver adds its output to the step's metrics row):

    completions/mean_length, /min_length, /max_length   completion tokens (the end token included when sampled)
    completions/clipped_ratio                           share of completions cut at max_new_tokens (finish "length")
    completions/mean_terminated_length                  mean length of those that ended by themselves (0 if none)
    frac_reward_zero_std                                share of groups whose rewards are all equal (no advantage)
    tokens_per_second                                   completion tokens sampled per second of the whole step

and for multi-turn rollouts (`episode_metrics`), per rollout unless said otherwise:

    multi_turn/turns, /tool_calls                      mean model turns and tool calls
    multi_turn/tool_errors, /parse_failures, /env_errors   totals over the step: tool calls that failed (unknown
                                                       tool, bad arguments, raised, timed out), malformed calls,
                                                       environment methods that raised or timed out
    multi_turn/env_reward                              mean environment reward (get_reward; None without one)
    multi_turn/model_tokens, /env_tokens               mean tokens by role (the environment's carry no loss)
    multi_turn/truncated_ratio                         share cut by a turn's or the whole rollout's token limit
    multi_turn/stop_<reason>                           share ending by each reason (done, length, budget, max_turns,
                                                       env_error)
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


def episode_metrics(groups: list[list[Completion]]) -> dict[str, float | None]:
    """The multi-turn metrics of the module docstring ({} for single-turn completions)."""
    runs = [c.trajectory for group in groups for c in group if c.trajectory is not None]
    if not runs:
        return {}
    n = len(runs)
    rewards = [t["env_reward"] for t in runs if t["env_reward"] is not None]
    out = {"multi_turn/turns": sum(t["turns"] for t in runs) / n,
           "multi_turn/tool_calls": sum(t["tool_calls"] for t in runs) / n,
           "multi_turn/tool_errors": sum(t["tool_errors"] for t in runs),
           "multi_turn/parse_failures": sum(t["parse_failures"] for t in runs),
           "multi_turn/env_errors": sum(t["env_errors"] for t in runs),
           "multi_turn/env_reward": sum(rewards) / len(rewards) if rewards else None,
           "multi_turn/model_tokens": sum(t["model_tokens"] for t in runs) / n,
           "multi_turn/env_tokens": sum(t["env_tokens"] for t in runs) / n,
           "multi_turn/truncated_ratio": sum(bool(t["truncated"]) for t in runs) / n}
    for reason in ("done", "length", "budget", "max_turns", "env_error"):
        out[f"multi_turn/stop_{reason}"] = sum(t["stop_reason"] == reason for t in runs) / n
    return out
