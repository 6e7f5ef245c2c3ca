"""The job config the tiny-model benches share: the bootstrapped model on one task, 32 prompts x 8 per step, 500
held-out problems; each bench sets the learner and the schedule."""

from __future__ import annotations

from pathlib import Path


def tiny_job(model_dir: Path, task: str, learner: dict, steps: int, eval_every: int, seed: int):
    """A validated JobConfig: one checkpoint at the end, evaluations every `eval_every` steps."""
    from services.config import parse_config

    return parse_config({
        "model": {"path": str(model_dir)},
        "rollout": {"task": task, "prompts_per_step": 32, "group_size": 8, "eval_size": 500},
        "learner": learner,
        "run": {"steps": steps, "eval_every": eval_every, "checkpoint_every": steps, "seed": seed}})
