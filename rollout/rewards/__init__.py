"""Reward functions in TRL's signature and the one scoring path of a run (docs/methods.md#reward-functions).
The built-ins register themselves in REWARDS when their modules are imported, here."""

from rollout.rewards import builtin, math_accuracy  # noqa: F401
from rollout.rewards.base import REWARDS, completion_text, load_reward, task_reward
from rollout.rewards.scorer import RewardFailure, RewardFunction, Scorer, Scores, TrainerState

__all__ = ["REWARDS", "RewardFailure", "RewardFunction", "Scorer", "Scores", "TrainerState", "completion_text",
           "load_reward", "task_reward"]
