"""Asynchronous rollouts (rollout.max_off_policy_steps) and the step's algorithm options through real runs: the
staleness bound read from the recorded policy versions, exact resume with generations in flight, the rollout
correction's metrics, and DAPO's dynamic sampling with refill."""

from __future__ import annotations

import json

import pytest

from services.config import parse_config
from services.loop import run_job

pytestmark = pytest.mark.integration


def job(model_dir, steps=4, rollout=None, learner=None, run=None):
    return parse_config({
        "model": {"path": str(model_dir)},
        "rollout": {"task": "arith", "prompts_per_step": 8, "group_size": 4, "eval_size": 16, "engine": "hf",
                    "worker_cpus": 0.5, **(rollout or {})},
        "learner": {"lr": 2e-3, "num_cpus": 0.5, **(learner or {})},
        "run": {"steps": steps, "checkpoint_every": 2, "eval_every": 100, "seed": 3, **(run or {})},
    })


def step_rows(run_dir):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_k1_stopped_and_resumed_trains_on_the_same_batches_as_the_straight_run(default_model_dir, tmp_path):
    """The checkpoint at step 2 holds the generation of step 3, sampled by version 2 before step 2 trained."""
    cfg = job(default_model_dir, steps=4, rollout={"max_off_policy_steps": 1})
    run_job(cfg, run_dir=tmp_path / "straight", progress=False)
    run_job(cfg, run_dir=tmp_path / "stopped", progress=False, stop_after=2)
    run_job(cfg, run_dir=tmp_path / "stopped", progress=False, resume=True)
    a, b = step_rows(tmp_path / "straight"), step_rows(tmp_path / "stopped")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("loss", "reward_mean", "grad_norm", "policy_version", "mismatch/ratio_mean", "async/staleness"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert [r["async/staleness"] for r in a] == [0, 1, 1, 1]
    assert all("mismatch/kl" in r and "mismatch/corrected_fraction" in r for r in a)  # auto: corrected when stale


def test_k2_on_ray_never_trains_on_a_batch_more_than_2_versions_old(ray_local, default_model_dir, tmp_path):
    from services.driver import run_on_ray

    cfg = job(default_model_dir, steps=5, rollout={"max_off_policy_steps": 2})
    run_on_ray(cfg, tmp_path / "run", progress=False)
    rows = step_rows(tmp_path / "run")
    lags = [r["learner_version"] - r["policy_version"] for r in rows]
    assert max(lags) <= 2 and lags == [r["async/staleness"] for r in rows]
    assert lags == [0, 1, 2, 2, 2], lags  # step t + 2 starts with version t, before step t trains
    assert all(r["mismatch/ratio_min"] <= r["mismatch/ratio_mean"] <= r["mismatch/ratio_max"] for r in rows)


def test_dynamic_sampling_fills_the_quota_of_differing_groups_or_says_the_cap_was_reached(default_model_dir, tmp_path):
    cfg = job(default_model_dir, steps=2, rollout={"dynamic_sampling": {"max_rounds": 3}})
    run_job(cfg, run_dir=tmp_path / "run", progress=False)
    for r in step_rows(tmp_path / "run"):
        assert 1 <= r["dynamic_sampling/rounds"] <= 3
        assert r["dynamic_sampling/generated_groups"] == 8 * r["dynamic_sampling/rounds"]
        if r["dynamic_sampling/cap_reached"]:
            assert r["dynamic_sampling/rounds"] == 3 and r["dynamic_sampling/differing_groups"] < 8
        else:
            assert r["dynamic_sampling/differing_groups"] >= 8 and r["dynamic_sampling/trained_groups"] == 8
        assert r["frac_reward_zero_std"] == 0 or r["dynamic_sampling/cap_reached"]

