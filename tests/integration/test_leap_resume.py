"""A leaping run stopped at any point of the leap protocol and resumed makes the same decisions, events and summary
as the run that was not stopped: the whole leap state is in every checkpoint. The job's verdicts are fixed by its
config (accept_margin and judge_margin 1: every candidate is applied and every leap is kept), so which leaps happen
and where they land hold on any machine's float trajectory; the losses of the local runs agree to 1e-6 (same
machine, same code path). Rollouts run one step ahead (max_off_policy_steps 1), so every checkpoint also holds
the generation in flight, and a leap or a branch switch drops it (tests/integration/test_async_rollouts.py checks
the versions)."""

from __future__ import annotations

import json

import pytest

from common.run_dir import EVENTS, METRICS, read_jsonl
from services.config import parse_config
from services.loop import run_job

pytestmark = pytest.mark.integration

STEPS = 12


def leaping_job(model_dir):
    """One leap from step 4 to 6 (start_after 4, window 2, horizon 2), judged against a control branch after 3
    learner steps: the leap branch trains 7-9, the control branch 5-7 from the pre-leap checkpoint, then the leap
    branch continues from 9."""
    return parse_config({
        "model": {"path": str(model_dir)},
        "rollout": {"task": "arith", "prompts_per_step": 8, "group_size": 4, "eval_size": 16, "worker_cpus": 0.5,
                    "max_off_policy_steps": 1},
        "learner": {"lr": 2e-3, "num_cpus": 0.5},
        "run": {"steps": STEPS, "checkpoint_every": 2, "eval_every": 4, "seed": 1},
        "extrapolate": {"method": "rl_extra", "window": 2, "horizon": 2, "min_horizon": 2, "max_horizon": 2,
                        "scales": [1.0], "start_after": 4, "leap_every": 100, "backtest_threshold": -1.0,
                        "judge": "control", "judge_after": 3, "accept_margin": 1.0, "judge_margin": 1.0,
                        "eval_size": 20}})


def decisions(run_dir) -> list[tuple]:
    """The events without their timings (and without the paired scores' floats)."""
    return [(e["type"], e["step"], e.get("id"), e.get("to_step"), e.get("horizon")) for e in read_jsonl(run_dir / EVENTS)]


def losses(run_dir) -> list[tuple[int, float]]:
    """(step, loss) of every learner step in the order trained (a switched branch revisits steps)."""
    return [(r["step"], r["loss"]) for r in read_jsonl(run_dir / METRICS) if "loss" in r]


def accounting(summary) -> dict:
    return {k: v for k, v in summary.leaps.items() if not k.endswith("_s")}


@pytest.fixture(scope="module")
def straight(default_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    summary = run_job(leaping_job(default_model_dir), run_dir=out, progress=False)
    kinds = [d[0] for d in decisions(out)]
    assert kinds.count("leap_applied") == 1 and "control_branch" in kinds and "leap_paid" in kinds, kinds
    return summary, out


def assert_same_run(resumed_summary, resumed_dir, straight, *, loss_tol: float | None = 1e-6):
    summary, out = straight
    assert decisions(resumed_dir) == decisions(out)
    assert accounting(resumed_summary) == accounting(summary)
    assert resumed_summary.learner_steps == summary.learner_steps and resumed_summary.steps == STEPS
    a, b = losses(out), losses(resumed_dir)
    assert [s for s, _ in b] == [s for s, _ in a]
    if loss_tol is not None:
        assert all(abs(x - y) < loss_tol for (_, x), (_, y) in zip(a, b, strict=True)), (a, b)
    assert [e["step"] for e in resumed_summary.evals] == [e["step"] for e in summary.evals]


def test_leaps_and_branch_switches_drop_the_generations_in_flight(straight):
    """No step trains on a batch of an abandoned branch: after a leap to step T nothing in flight survives (versions
    >= T); after a switch to the checkpoint of step T the run takes what that checkpoint had in flight, sampled on
    its own branch by version T - 1 (versions >= T - 1); a version is never ahead of the learner, nor more than one
    behind."""
    _, out = straight
    rows = read_jsonl(out / METRICS)
    switches = [r for r in rows if r.get("event") in ("leap_applied", "branch_switched")]
    assert [r["event"] for r in switches][:1] == ["leap_applied"] and len(switches) >= 2
    floor, dropped = 0, 0
    for r in rows:
        if r.get("event") in ("leap_applied", "branch_switched"):
            floor = r["to_step"] - (r["event"] == "branch_switched")
        elif "loss" in r:
            assert floor <= r["policy_version"] <= r["learner_version"] and r["async/staleness"] <= 1, (r, floor)
            dropped += r["async/dropped"]
    assert dropped >= len(switches)  # each switch abandoned the generation in flight


@pytest.mark.parametrize("stop_after", [4, 8, 9])
def test_stopped_and_resumed_leaping_run_makes_the_same_decisions(default_model_dir, tmp_path, straight, stop_after):
    """4: stopped at the checkpoint the leap is proposed from (the resumed run makes that decision); 8: stopped in the
    leap branch, the leap under judgement; 9: stopped right after the judgement switched the run back to the leap
    branch's checkpoint 9 (which records the run as it is after the switch)."""
    cfg, run = leaping_job(default_model_dir), tmp_path / "run"
    run_job(cfg, run_dir=run, progress=False, stop_after=stop_after)
    meta = json.loads((run / "checkpoints" / f"step-{stop_after:06d}" / "meta.json").read_text())
    assert meta["leap_state"]["phase"] == ("leap" if stop_after == 8 else "idle")
    assert_same_run(run_job(cfg, run_dir=run, resume=True, progress=False), run, straight)


class Crash(Exception):
    pass


def test_a_run_that_dies_while_its_control_branch_trains_resumes_it(default_model_dir, tmp_path, straight):
    """The process dies right after the control branch's checkpoint at step 6 (the pre-leap checkpoint 4 resumed,
    the leap branch set aside under rolled_back/): the resumed run trains the rest of the control branch, judges,
    and continues from the leap branch, as the run that did not die."""
    cfg, run = leaping_job(default_model_dir), tmp_path / "run"
    seen = []

    def sink(stream: str, record: dict) -> None:
        seen.append(record.get("type"))
        if stream == "rank1" and "control_branch" in seen and record["step"] == 6:
            raise Crash("the driver died")

    with pytest.raises(Crash):
        run_job(cfg, run_dir=run, progress=False, sink=sink)
    meta = json.loads((run / "checkpoints" / "step-000006" / "meta.json").read_text())
    assert meta["leap_state"]["phase"] == "control"
    assert_same_run(run_job(cfg, run_dir=run, resume=True, progress=False), run, straight)


def test_a_leap_pending_across_a_stop_on_ray(ray_local, default_model_dir, tmp_path, straight):
    """The same on Ray (learner, rollout worker and extrapolation service as actors), stopped in the leap branch
    and resumed by a new driver: the same decisions and accounting as the uninterrupted run (its losses agree with
    the single-process run's to float rounding, not bit for bit, so they are not compared here)."""
    from services.driver import run_on_ray

    cfg, run = leaping_job(default_model_dir), tmp_path / "run"
    run_on_ray(cfg, run, progress=False, stop_after=8)
    assert_same_run(run_on_ray(cfg, run, resume=True, progress=False), run, straight, loss_tol=None)
