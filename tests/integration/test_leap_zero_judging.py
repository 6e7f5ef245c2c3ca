"""A leap with zero judging cost (extrapolate.judge: none) is kept or rejected by the paired evaluation alone: no
control branch, no judging steps, and the run's step counter advances by the horizon of every kept leap. The same
with the smooth decision metric (reference_logprob): candidates are compared by the mean token log-prob of the
reference answers, and scoring a candidate leaves the policy's own weights as they were."""

from __future__ import annotations

import pytest

from common.run_dir import read_jsonl
from services.config import parse_config
from services.loop import run_job

pytestmark = pytest.mark.integration


def leaping_job(model_dir, accept_margin: float, **extrapolate):
    return parse_config({
        "model": {"path": str(model_dir)},
        "rollout": {"prompts_per_step": 8, "group_size": 4, "eval_size": 32},
        "learner": {"lr": 2e-3},
        "run": {"steps": 14, "checkpoint_every": 2, "eval_every": 14},
        "extrapolate": {"method": "rl_extra", "window": 2, "horizon": 2, "min_horizon": 2, "max_horizon": 4,
                        "scales": [2.0], "start_after": 2, "leap_every": 2, "backtest_threshold": -1.0,
                        "judge": "none", "accept_margin": accept_margin, "eval_size": 20, **extrapolate}})


def test_zero_judging_cost_decides_by_the_paired_score(default_model_dir, tmp_path):
    accept_margin = 0.05  # either decision can happen: the test checks that the paired score alone made it
    cfg = leaping_job(default_model_dir, accept_margin)
    cfg.run.eval_every = 2  # every landing (an even step) is an evaluation step
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
    # the held-out curve has a point where each kept leap landed, at the learner steps trained before it
    evals = {e["step"]: e for e in summary.evals}
    assert len(evals) == len(summary.evals)  # one evaluation per step
    learner_steps = {r["step"]: r["learner_steps"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")
                     if "loss" in r}
    for e in events:
        if e["type"] == "leap_applied":
            assert evals[e["to_step"]]["learner_steps"] == learner_steps[e["step"]]


def test_reference_logprob_decides_leaps(default_model_dir, tmp_path):
    accept_margin = 0.02  # nats per token
    cfg = leaping_job(default_model_dir, accept_margin, decision_metric="reference_logprob")
    cfg.run.steps = 8
    run_job(cfg, run_dir=tmp_path / "run", progress=False)
    events = read_jsonl(tmp_path / "run" / "events.jsonl")
    proposals = [e for e in events if e["type"] == "proposal"]
    assert proposals, [e.get("reason") for e in events]
    for p in proposals:
        assert p["current_acc"] < 0  # a mean log-prob, not an accuracy
        best = max(c["diff"] for c in p["candidates"])
        after = next(e for e in events[events.index(p) + 1:] if e["type"] in ("leap_applied", "leap_rejected"))
        assert after["type"] == ("leap_applied" if best >= -accept_margin else "leap_rejected")


def test_candidate_logprobs_leave_the_policy_unchanged(default_model_dir, tmp_path):
    from common.run_dir import checkpoint_dir
    from services.prepare import prepare_job
    from services.runtime import LocalRuntime

    cfg = parse_config({"model": {"path": str(default_model_dir)}, "learner": {"lr": 5e-3},
                        "rollout": {"prompts_per_step": 8, "group_size": 4, "eval_size": 16},
                        "run": {"steps": 2, "checkpoint_every": 2, "eval_every": 2}})
    run_job(cfg, run_dir=tmp_path / "trained", progress=False)
    runtime = LocalRuntime(prepare_job(cfg, "test", progress=False), tmp_path / "fresh")
    tok = runtime.learner.tokenizer
    prompts = [tok(p)["input_ids"] for p in ("12+34=", "987+6=")]
    answers = [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for a in ("64", "399")]
    before = runtime.mean_logprobs(prompts, answers)
    candidate = runtime.mean_logprobs(prompts, answers, str(checkpoint_dir(tmp_path / "trained", 2)))
    assert runtime.mean_logprobs(prompts, answers) == before
    assert candidate != before and all(v < 0 for v in before + candidate)


def test_reference_logprob_refuses_the_trend_judge():
    from extrapolate.config import ExtrapolateConfig

    with pytest.raises(ValueError, match="judge: trend"):
        ExtrapolateConfig(decision_metric="reference_logprob", judge="trend")
