"""run.keep_checkpoints on short runs: a plain run (tiny model) keeps its newest checkpoints (also across a
resume, which continues from the newest); a leaping run also keeps the extrapolation window and the pre-leap
checkpoint while its leap is judged, and never touches rolled_back/ (the default model: the rank-1 analysis of a
leaping run needs checkpoints that moved, which the tiny model's all-zero rewards do not give)."""

from __future__ import annotations

import json

import pytest

from common.run_dir import PRUNED, list_checkpoints, read_jsonl
from services.config import parse_config
from services.loop import checkpoints_to_keep, run_job

pytestmark = pytest.mark.integration


def job(model_dir, steps: int, keep: int, extrapolate=None):
    data = {"model": {"path": str(model_dir)},
            "rollout": {"task": "arith", "prompts_per_step": 8, "group_size": 4, "eval_size": 8},
            "learner": {"lr": 1e-2},
            "run": {"steps": steps, "checkpoint_every": 1, "eval_every": steps, "keep_checkpoints": keep}}
    if extrapolate is not None:
        data["extrapolate"] = extrapolate
    return parse_config(data)


def steps_of(run_dir):
    return [s for s, _ in list_checkpoints(run_dir)]


def test_a_plain_run_keeps_its_newest_checkpoints_and_resumes(tiny_model_dir, tmp_path):
    cfg, run = job(tiny_model_dir, steps=5, keep=2), tmp_path / "run"
    run_job(cfg, run_dir=run, progress=False, stop_after=3)
    assert steps_of(run) == [2, 3]
    summary = run_job(cfg, run_dir=run, resume=True, progress=False)  # from the newest, step 3
    assert summary.steps == 5 and steps_of(run) == [4, 5]
    assert [r["step"] for r in read_jsonl(run / "checkpoints" / PRUNED)] == [1, 2, 3]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5]  # each step once: the resume lost nothing
    assert not list((run / "checkpoints").glob("*.tmp*"))


def test_a_leaping_run_keeps_the_window_and_the_pre_leap_checkpoint(default_model_dir, tmp_path):
    """One leap, applied whatever its score (backtest gate off, accept_margin 1), from step 2 to 3, judged by the
    trend after 4 learner steps (checkpoints 4, 5, 6 in its branch): keep_checkpoints 1 is raised to the window of 2
    plus the 1-checkpoint horizon, so at checkpoint 6 the pre-leap checkpoint 2 is the 4th newest and only the leap
    under judgement keeps it."""
    leaps = {"method": "rl_extra", "window": 2, "horizon": 1, "min_horizon": 1, "max_horizon": 1, "scales": [1.0],
             "start_after": 2, "leap_every": 100, "backtest_threshold": -1.0, "accept_margin": 1.0, "judge": "trend",
             "judge_after": 4, "eval_size": 20}
    cfg, run = job(default_model_dir, steps=8, keep=1, extrapolate=leaps), tmp_path / "run"
    assert checkpoints_to_keep(cfg) == 3
    run_job(cfg, run_dir=run, progress=False)
    events = read_jsonl(run / "events.jsonl")
    applied = next(e for e in events if e["type"] == "leap_applied")
    verdict = next(e for e in events if e["type"] in ("leap_paid", "leap_rolled_back"))
    assert applied["step"] == 2 and applied["to_step"] == 3
    pruned = {r["step"]: r["time"] for r in read_jsonl(run / "checkpoints" / PRUNED)}
    assert 2 not in pruned or pruned[2] > verdict["time"]  # kept until the verdict
    assert steps_of(run) == [6, 7, 8]
    if verdict["type"] == "leap_rolled_back":  # the leap branch's checkpoints are set aside, whole
        aside = sorted(p.name for p in (run / "rolled_back").glob("*/step-*"))
        assert aside == ["step-000004", "step-000005", "step-000006"]
    rank1_steps = {r["step"] for r in read_jsonl(run / "rank1" / "metrics.jsonl")}
    assert set(pruned) - {2} <= rank1_steps and {6, 7} <= rank1_steps  # the analysis keeps pruned checkpoints' rows
