"""Rank-GRPO and plain GRPO both run on the ranklist task, in one process and on Ray, and report list metrics;
periodic evaluation reports pass@k."""

from __future__ import annotations

import json

import pytest

from services.config import ConfigError, parse_config
from services.driver import run_on_ray
from services.loop import run_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ranklist_model(tmp_path_factory):
    from learner.bootstrap import bootstrap

    return bootstrap("ranklist", 0, progress=False)


def job(model_dir, **learner):
    return parse_config({
        "model": {"path": str(model_dir)},
        "rollout": {"task": "ranklist", "prompts_per_step": 8, "group_size": 4, "eval_size": 32, "engine": "hf",
                    "worker_cpus": 0.5, "eval_pass_n": 4, "eval_pass_size": 8},
        "learner": {"lr": 1e-3, "num_cpus": 0.5, **learner},
        "run": {"steps": 2, "checkpoint_every": 2, "eval_every": 2, "seed": 0},
    })


@pytest.mark.parametrize("learner", [{"algorithm": "grpo"}, {"algorithm": "rank_grpo"},
                                     {"algorithm": "rank_grpo", "rank_reward": "log_decay", "updates_per_batch": 2}])
def test_list_task_runs_locally(ranklist_model, tmp_path, learner):
    summary = run_job(job(ranklist_model, **learner), run_dir=tmp_path / "run", progress=False)
    last = summary.evals[-1]
    for key in ("recall@1", "ndcg@5", "recall@5", "pass@1", "pass@4"):
        assert 0.0 <= last[key] <= 1.0
    assert last["pass@4"] >= last["pass@1"]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in rows) == 2


def test_rank_grpo_runs_on_ray(ray_local, ranklist_model, tmp_path):
    summary = run_on_ray(job(ranklist_model, algorithm="rank_grpo"), tmp_path / "run", progress=False)
    assert summary.steps == 2 and "ndcg@5" in summary.evals[-1]


def test_rank_grpo_needs_a_list_task(default_model_dir, tmp_path):
    cfg = job(default_model_dir, algorithm="rank_grpo")
    cfg.rollout.task = "arith"
    with pytest.raises(ConfigError, match="ranked-list task"):
        run_job(cfg, run_dir=tmp_path / "run", progress=False)


FORCED_LEAPS = {"window": 2, "horizon": 2, "min_horizon": 1, "start_after": 2, "judge_after": 1, "eval_size": 20,
                "backtest_threshold": -1.0, "accept_margin": 1.0}


@pytest.mark.parametrize("learner", [{"algorithm": "rank_grpo"},
                                     {"algorithm": "grpo", "reward_shaping": "unlikeliness", "updates_per_batch": 2}])
def test_rank_grpo_and_unlikeliness_run_with_leaps(ranklist_model, tmp_path, learner):
    """Both only change rewards / advantages / ratios, so leaps work unchanged: a leap is applied and judged."""
    cfg = job(ranklist_model, **learner)
    cfg = parse_config({**cfg.model_dump(), "run": {**cfg.run.model_dump(), "steps": 8, "checkpoint_every": 1,
                                                    "eval_every": 4}, "extrapolate": FORCED_LEAPS})
    summary = run_job(cfg, run_dir=tmp_path / "run", progress=False)
    kinds = [json.loads(x)["type"] for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert "leap_applied" in kinds and ("leap_paid" in kinds or "leap_rolled_back" in kinds), kinds
    assert summary.steps == 8 and "ndcg@5" in summary.evals[-1]
