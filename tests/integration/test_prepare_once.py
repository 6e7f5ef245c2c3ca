"""A job is prepared once (services/prepare.py): in one process, through `leapfrog run`'s path with leaps on, the
job's task is instantiated and its scorer built exactly once — the checks, the loop, the evaluator, the rollouts and
the leap controller all take them from the PreparedJob."""

from __future__ import annotations

import pytest

from rollout.rewards import Scorer
from services.config import parse_config
from services.loop import run_job
from tests.integration.user_code import CountedSums

pytestmark = pytest.mark.integration


def test_task_and_scorer_are_built_once_per_process(default_model_dir, tmp_path, monkeypatch):
    built = []
    for_job = Scorer.for_job.__func__

    def counting_for_job(cls, *args, **kwargs):
        built.append(args)
        return for_job(cls, *args, **kwargs)

    monkeypatch.setattr(Scorer, "for_job", classmethod(counting_for_job))
    monkeypatch.setattr(CountedSums, "instances", 0)
    cfg = parse_config({
        "model": {"path": str(default_model_dir)},
        "rollout": {"task": "tests.integration.user_code:CountedSums", "prompts_per_step": 4, "group_size": 2,
                    "eval_size": 8},
        "run": {"steps": 6, "checkpoint_every": 2, "eval_every": 2},
        "extrapolate": {"method": "rl_extra", "window": 2, "horizon": 1, "min_horizon": 1, "start_after": 2,
                        "backtest_threshold": -1.0, "judge": "none", "eval_size": 20}})
    summary = run_job(cfg, run_dir=tmp_path / "run", progress=False)
    assert summary.leaps["proposals"] >= 1  # the leap controller evaluated candidates with the job's scorer
    assert CountedSums.instances == 1 and len(built) == 1
