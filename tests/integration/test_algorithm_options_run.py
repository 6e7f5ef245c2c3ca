"""The learner's algorithm options in a real run of the default model: RLOO and REINFORCE++ advantages, each KL
estimator with beta > 0, the adaptive entropy bonus (its state in the checkpoint: stopped and resumed, the run
continues with the same coefficient and losses) and mask_truncated_completions."""

from __future__ import annotations

import json
import math

import pytest

from services.config import parse_config
from services.loop import run_job

pytestmark = pytest.mark.integration


def job(model_dir, steps=3, **learner):
    return parse_config({
        "model": {"path": str(model_dir)},
        "rollout": {"task": "arith", "prompts_per_step": 8, "group_size": 4, "eval_size": 16, "max_new_tokens": 4},
        "learner": {"lr": 2e-3, **learner},
        "run": {"steps": steps, "checkpoint_every": 1, "eval_every": 100, "seed": 5},
    })


def step_rows(run_dir):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("estimator, kl", [("rloo", "k1"), ("reinforce_pp", "low_var_kl")])
def test_advantage_and_kl_estimators_train(default_model_dir, tmp_path, estimator, kl):
    run_job(job(default_model_dir, steps=2, advantage_estimator=estimator, beta=0.05, kl_estimator=kl),
            run_dir=tmp_path / "run", progress=False)
    rows = step_rows(tmp_path / "run")
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and math.isfinite(r["kl"]) for r in rows)
    if kl != "k1":  # k1 may be negative on samples; low_var_kl is clamped k3, >= 0 (whether the policy moved is the
        assert all(r["kl"] >= 0 for r in rows)  # trajectory's, so not asserted)


def test_adaptive_entropy_and_truncation_mask_resume_exactly(default_model_dir, tmp_path):
    """entropy_target above the policy's entropy: after each update the coefficient rises by delta, and applies from
    the second update on (the first has no last entropy: TRL's gate), from the checkpoint on as in the straight run.
    A truncated completion's tokens leave the loss."""
    cfg = job(default_model_dir, entropy_coef=0.01, use_adaptive_entropy=True, entropy_target=100.0,
              entropy_coef_delta=0.01, mask_truncated_completions=True)
    run_job(cfg, run_dir=tmp_path / "straight", progress=False)
    run_job(cfg, run_dir=tmp_path / "stopped", progress=False, stop_after=2)
    run_job(cfg, run_dir=tmp_path / "stopped", progress=False, resume=True)
    a, b = step_rows(tmp_path / "straight"), step_rows(tmp_path / "stopped")
    assert [r["entropy_coef"] for r in a] == pytest.approx([0.0, 0.02, 0.03])
    assert [(r["loss"], r["entropy_coef"]) for r in a] == [(r["loss"], r["entropy_coef"]) for r in b]
    for r in a:
        sampled = round(r["completions/mean_length"] * 8 * 4)
        assert (r["completion_tokens"] < sampled) == (r["completions/clipped_ratio"] > 0), r
