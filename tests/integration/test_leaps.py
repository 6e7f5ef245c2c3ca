"""Leaps during training, on the real default model: every step accounted for, a bad leap is
rejected or rolled back with training continuing exactly as the plain run would, and an `extrapolate:` section
that never leaps leaves the run bit-for-bit the plain run."""

from __future__ import annotations

import json

import pytest
import torch

from services.config import parse_config
from services.loop import run_job

pytestmark = pytest.mark.integration

BASE = {"rollout": {"prompts_per_step": 32, "group_size": 8, "eval_size": 400},
        "run": {"steps": 40, "checkpoint_every": 5, "eval_every": 10}}
LEAPS = {"window": 3, "horizon": 5, "min_horizon": 5, "start_after": 15, "judge_after": 3, "eval_size": 300,
         "leap_every": 3}
# RL-Extra at +20 steps from step 10 predicts W_0 + 3 (W_10 - W_0); the largest scale allowed (4) puts the candidate at
# W_10 + 4 x 2 (W_10 - W_0): nine times the update of the first 10 steps (the backtest gate is off, so the first
# window, checkpoints 5 and 10, may leap).
BAD_LEAP = {"method": "rl_extra", "window": 2, "scales": [4.0], "horizon": 20, "max_horizon": 20, "start_after": 10,
            "backtest_threshold": -1.0}


def job(model_dir, extrapolate=None):
    data = json.loads(json.dumps(BASE))
    data["model"] = {"path": str(model_dir)}
    if extrapolate is not None:
        data["extrapolate"] = extrapolate
    return parse_config(data)


def losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def events(run_dir):
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def plain(default_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "run"
    return run_job(job(default_model_dir), run_dir=out, progress=False), out


def test_an_extrapolate_section_that_never_leaps_is_the_plain_run(plain, default_model_dir, tmp_path):
    summary, plain_dir = plain
    out = tmp_path / "run"
    watched = run_job(job(default_model_dir, {**LEAPS, "start_after": 1000}), run_dir=out, progress=False)
    assert losses(out) == losses(plain_dir)  # bit for bit
    assert watched.evals == summary.evals and watched.learner_steps == 40
    assert (out / "rank1" / "metrics.jsonl").is_file()  # the service watched every checkpoint
    assert {e["type"] for e in events(out)} == {"no_leap"}


def test_a_leaping_run_accounts_for_every_step(default_model_dir, tmp_path):
    """Default policy (growth, control-branch judgement). Which leaps are proposed, kept or rolled back depends on the
    float trajectory, which differs between CPUs, so this asserts what holds on any trajectory: every checkpoint the
    policy may leap from gets a proposal or a no_leap with its reason, each proposal is followed by its decision, and
    the accounting adds up. Whether leaps pay is measured in bench/leap_speedup.py, not here."""
    out = tmp_path / "run"
    leaped = run_job(job(default_model_dir, LEAPS), run_dir=out, progress=False)
    found = events(out)
    for e in found:
        if e["type"] == "no_leap":
            assert e["reason"]
    assert {e["step"] for e in found if e["type"] in ("proposal", "no_leap")}, found
    for i, e in enumerate(found):
        if e["type"] == "proposal":
            assert next(f["type"] for f in found[i + 1:] if f["type"] in ("leap_applied", "leap_rejected"))
    a = leaped.leaps
    assert a["applied"] + a["rejected"] == a["proposals"]
    assert a["paid"] + a["rolled_back"] <= a["applied"] and a["learner_steps"] == leaped.learner_steps
    assert a["net_steps_saved"] == a["steps_skipped"] - a["steps_lost"]
    assert leaped.learner_steps == 40 - a["steps_skipped"] + a["steps_lost"]
    assert leaped.steps == 40


def test_a_bad_leap_is_rejected_and_training_is_unharmed(plain, default_model_dir, tmp_path):
    """A leap bad by construction (nine times the adapter's whole update so far: the policy collapses on every
    machine's trajectory) is judged on the spot and rejected; the run goes on exactly as the plain run."""
    _, plain_dir = plain
    out = tmp_path / "run"
    bad = {**LEAPS, **BAD_LEAP, "patience": 1}
    summary = run_job(job(default_model_dir, bad), run_dir=out, progress=False)
    rejected = [e for e in events(out) if e["type"] == "leap_rejected"]
    # rejected means below the current policy by more than accept_margin (0.01); measured here -0.10 (se 0.03)
    assert len(rejected) == 1 and rejected[0]["best_diff"] < -0.01, rejected
    assert losses(out) == losses(plain_dir) and summary.leaps["applied"] == 0


def test_a_bad_leap_forced_through_is_rolled_back_to_the_plain_trajectory(plain, default_model_dir, tmp_path):
    """Accept anything on the spot: the control branch beats the bad leap, the run continues from the control
    branch — the same steps, data and RNG as the plain run — so it ends with the plain run's weights."""
    plain_summary, plain_dir = plain
    out = tmp_path / "run"
    bad = {**LEAPS, **BAD_LEAP, "accept_margin": 1.0, "patience": 1}
    summary = run_job(job(default_model_dir, bad), run_dir=out, progress=False)
    kinds = [e["type"] for e in events(out)]
    assert kinds.count("leap_applied") == 1 and "leap_rolled_back" in kinds and "leap_paid" not in kinds
    assert summary.leaps["rolled_back"] == 1 and summary.leaps["steps_lost"] == LEAPS["judge_after"]
    assert summary.acc_after == plain_summary.acc_after
    from safetensors.torch import load_file

    ours = load_file(str(out / "checkpoints" / "step-000040" / "adapter_model.safetensors"))
    theirs = load_file(str(plain_dir / "checkpoints" / "step-000040" / "adapter_model.safetensors"))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert any((out / "rolled_back").iterdir())  # the leap branch is kept aside, not deleted
