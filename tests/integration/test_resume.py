"""A run stopped after step k and resumed gives the same step k+1 loss (to 1e-6) as an uninterrupted run."""

from __future__ import annotations

import json

import pytest

from services.config import parse_config
from services.loop import run_job

pytestmark = pytest.mark.integration


def small_job(model_dir, **learner):
    return parse_config({
        "model": {"path": str(model_dir)},
        "rollout": {"task": "arith", "prompts_per_step": 8, "group_size": 4, "eval_size": 16},
        "learner": {"lr": 1e-3, "lr_schedule": "cosine", "warmup_steps": 1, "updates_per_batch": 2, **learner},
        "run": {"steps": 4, "checkpoint_every": 2, "eval_every": 2, "seed": 5},
    })


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_resume_reproduces_the_next_step(default_model_dir, tmp_path):
    # the default model is partly right, so rewards vary within groups and losses are non-zero
    cfg = small_job(default_model_dir)
    straight = tmp_path / "straight"
    run_job(cfg, run_dir=straight, progress=False)
    stopped = tmp_path / "stopped"
    run_job(cfg, run_dir=stopped, progress=False, stop_after=2)
    assert sorted(losses(stopped)) == [1, 2]
    run_job(cfg, run_dir=stopped, resume=True, progress=False)
    a, b = losses(straight), losses(stopped)
    assert sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])
    assert a[3] != 0.0 and a[4] != 0.0


def test_existing_run_dir_is_not_overwritten(tiny_model_dir, tmp_path):
    from services.config import ConfigError

    cfg = small_job(tiny_model_dir)
    run_dir = tmp_path / "r"
    run_job(cfg.model_copy(update={"run": cfg.run.model_copy(update={"steps": 2})}), run_dir=run_dir, progress=False)
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a run"):
        run_job(cfg, run_dir=run_dir, progress=False)
    assert (run_dir / "metrics.jsonl").read_text() == before
