"""A leap with zero judging cost (extrapolate.judge: none) is kept or rejected by the paired evaluation alone: no
control branch, no judging steps, and the run's step counter advances by the horizon of every kept leap."""

from __future__ import annotations

import pytest

from learner.run_dir import read_jsonl
from services.config import parse_config
from services.runner import run_job

pytestmark = pytest.mark.integration


def test_zero_judging_cost_decides_by_the_paired_score(default_model_dir, tmp_path):
    accept_margin = 0.05  # either decision can happen: the test checks that the paired score alone made it
    cfg = parse_config({
        "model": {"path": str(default_model_dir)},
        "rollout": {"prompts_per_step": 8, "group_size": 4, "eval_size": 32},
        "learner": {"lr": 2e-3},
        "run": {"steps": 14, "checkpoint_every": 2, "eval_every": 14},
        "extrapolate": {"method": "rl_extra", "window": 2, "horizon": 2, "min_horizon": 1, "max_horizon": 4,
                        "scales": [2.0], "start_after": 2, "leap_every": 2, "backtest_threshold": -1.0,
                        "judge": "none", "accept_margin": accept_margin, "eval_size": 20}})
    summary = run_job(cfg, run_dir=tmp_path / "run", progress=False)
    events = read_jsonl(tmp_path / "run" / "events.jsonl")
    proposals = [e for e in events if e["type"] == "proposal"]
    assert proposals, [e.get("reason") for e in events]
    for p in proposals:
        best = max(c["diff"] for c in p["candidates"])
        after = next(e for e in events[events.index(p) + 1:] if e["type"] in ("leap_applied", "leap_rejected"))
        assert after["type"] == ("leap_applied" if best >= -accept_margin else "leap_rejected")
    assert not [e for e in events if e["type"] in ("control_branch", "leap_rolled_back")]
    kept = [e for e in events if e["type"] == "leap_paid"]
    assert all(e["judge"] == "none" for e in kept)
    a = summary.leaps
    assert a["steps_lost"] == 0 and a["paid"] == a["applied"] == len(kept)
    assert summary.learner_steps == 14 - a["steps_skipped"]  # skipped steps were not trained
    assert a["applied"] + a["rejected"] == a["proposals"] >= 1
