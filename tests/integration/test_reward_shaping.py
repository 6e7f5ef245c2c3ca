"""The unlikeliness reward runs in the loop with mu = 2 and dropped all-equal groups, and changes the update."""

from __future__ import annotations

import json

import pytest

from services.config import parse_config
from services.loop import run_job

pytestmark = pytest.mark.integration


def job(model_dir, **learner):
    return parse_config({
        "model": {"path": str(model_dir)},
        "rollout": {"task": "arith", "prompts_per_step": 16, "group_size": 8, "eval_size": 32},
        "learner": {"lr": 1e-3, "updates_per_batch": 2, "loss_type": "grpo", **learner},
        "run": {"steps": 2, "checkpoint_every": 2, "eval_every": 2, "seed": 1},
    })


def step_rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_unlikeliness_with_mu_2(default_model_dir, tmp_path):
    run_job(job(default_model_dir), run_dir=tmp_path / "plain", progress=False)
    run_job(job(default_model_dir, reward_shaping="unlikeliness", unlikeliness_beta=0.25),
            run_dir=tmp_path / "shaped", progress=False)
    run_job(job(default_model_dir, reward_shaping="unlikeliness", drop_uniform_groups=True),
            run_dir=tmp_path / "dropped", progress=False)
    plain, shaped, dropped = (step_rows(tmp_path / d) for d in ("plain", "shaped", "dropped"))
    assert len(shaped) == 2 and len(dropped) == 2
    assert shaped[0]["reward_mean"] < plain[0]["reward_mean"]  # likely correct samples earn less than 1
    assert shaped[0]["completion_tokens"] == plain[0]["completion_tokens"]  # same samples, step 1
    assert shaped[0]["loss"] != plain[0]["loss"]
    assert dropped[0]["completion_tokens"] < plain[0]["completion_tokens"]  # all-equal groups were dropped
