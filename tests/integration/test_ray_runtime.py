"""The Ray runtime: the same job on actors, the one-step-off-policy staleness bound, and surviving killed actors."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from services.config import ConfigError, parse_config
from services.driver import run_on_ray
from services.loop import run_job

pytestmark = pytest.mark.integration


def job(model_dir, steps=4, **rollout):
    return parse_config({
        "model": {"path": str(model_dir)},
        "rollout": {"task": "arith", "prompts_per_step": 8, "group_size": 4, "eval_size": 32, "engine": "hf",
                    "worker_cpus": 0.5, **rollout},
        "learner": {"lr": 1e-3, "num_cpus": 0.5},
        "run": {"steps": steps, "checkpoint_every": 2, "eval_every": 2, "seed": 3},
    })


def rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_rows(run_dir):
    return [r for r in rows(run_dir) if "loss" in r]


def test_ray_run_matches_single_process(ray_local, default_model_dir, tmp_path):
    cfg = job(default_model_dir, steps=2)
    local = run_job(cfg, run_dir=tmp_path / "local", progress=False)
    on_ray = run_on_ray(cfg, tmp_path / "ray", progress=False)
    a, b = step_rows(tmp_path / "local"), step_rows(tmp_path / "ray")
    assert [r["reward_mean"] for r in a] == [r["reward_mean"] for r in b]
    assert abs(a[0]["loss"] - b[0]["loss"]) < 1e-5
    assert local.acc_before == on_ray.acc_before
    # max_off_policy_steps 0 (the default): synchronous, every batch sampled by the version it trains
    assert all(r["policy_version"] == r["learner_version"] and "async/staleness" not in r for r in a + b)
    assert (tmp_path / "ray" / "checkpoints" / "step-000002" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "ray" / "adapters" / "current.json").read_text())["version"] == "000002"


def test_one_step_off_policy_respects_staleness_bound(ray_local, default_model_dir, tmp_path):
    cfg = job(default_model_dir, steps=4, max_off_policy_steps=1)
    run_on_ray(cfg, tmp_path / "run", progress=False)
    lags = [r["learner_version"] - r["policy_version"] for r in step_rows(tmp_path / "run")]
    assert lags == [0, 1, 1, 1], lags  # batch t+1 is sampled by version t while the learner trains batch t


def kill_when(run_dir, pid_of, after_step):
    def watch():
        deadline = time.time() + 240
        while time.time() < deadline:
            if (run_dir / "metrics.jsonl").exists() and any(r.get("step", 0) >= after_step and "loss" in r
                                                            for r in rows(run_dir)):
                os.kill(pid_of(), signal.SIGKILL)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_killed_rollout_worker_is_restarted_without_losing_a_batch(ray_local, default_model_dir, tmp_path, runtimes):
    import ray

    run_dir = tmp_path / "run"
    pids = {}

    def worker_pid():
        pids.setdefault("w", ray.get(runtimes[0].workers[0].pid.remote()))
        return pids["w"]

    watcher = kill_when(run_dir, worker_pid, after_step=2)
    summary = run_on_ray(job(default_model_dir, steps=6, num_workers=2), run_dir, progress=False)
    watcher.join(timeout=5)
    assert "w" in pids
    steps = [r["step"] for r in step_rows(run_dir)]
    assert steps == [1, 2, 3, 4, 5, 6], steps  # none lost, none duplicated
    assert summary.steps == 6


def test_bad_runtime_input_fails_before_training(ray_local, default_model_dir, tmp_path):
    with pytest.raises(ValueError, match="needs .* CPUs"):
        run_on_ray(job(default_model_dir, num_workers=8, worker_cpus=1.0), tmp_path / "a", progress=False)
    assert not (tmp_path / "a" / "metrics.jsonl").exists()
    with pytest.raises(ConfigError, match="rollout.engine"):
        parse_config({"rollout": {"engine": "tensorrt"}})
    with pytest.raises(ConfigError, match="model.path"):
        run_on_ray(job(tmp_path / "nowhere"), tmp_path / "b", progress=False)


def test_vllm_requested_without_vllm_fails_at_start(ray_local, default_model_dir, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail, as on a machine without it
    with pytest.raises(ValueError, match="vLLM is not installed"):
        run_on_ray(job(default_model_dir, engine="vllm"), tmp_path / "a", progress=False)
    assert not (tmp_path / "a" / "metrics.jsonl").exists()


def test_unreadable_model_on_a_worker_fails_at_start(ray_local, default_model_dir, tmp_path):
    import shutil

    from services.prepare import prepare_job
    from services.runtime import RayRuntime

    model = tmp_path / "only-on-the-driver"
    shutil.copytree(default_model_dir, model)
    prepared = prepare_job(job(model), "test", runtime="ray", progress=False)
    shutil.rmtree(model)  # as if the driver's copy were on a disk the workers cannot read
    with pytest.raises(Exception, match="cannot read the model directory"):
        RayRuntime(prepared, tmp_path / "run")
    import ray

    # what started was stopped: no placement group keeps the learner's CPUs from the next job
    assert all(pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())


def test_leaps_run_on_ray_with_the_service_as_an_actor(ray_local, default_model_dir, tmp_path):
    """The ExtrapolationService as a Ray actor: rank-1 rows per checkpoint, a leap proposed, evaluated through the
    rollout workers (candidate adapters), applied and judged against a control branch."""
    cfg = job(default_model_dir, steps=12)
    cfg = parse_config({**cfg.model_dump(), "run": {**cfg.run.model_dump(), "checkpoint_every": 2},
                        "extrapolate": {"window": 2, "horizon": 2, "min_horizon": 1, "start_after": 4,
                                        "judge_after": 2, "eval_size": 32, "backtest_threshold": -1.0,
                                        "accept_margin": 1.0}})
    summary = run_on_ray(cfg, tmp_path / "run", progress=False)
    kinds = [json.loads(x)["type"] for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert "leap_applied" in kinds and ("leap_paid" in kinds or "leap_rolled_back" in kinds)
    assert summary.leaps["applied"] >= 1 and summary.steps == 12
    assert (tmp_path / "run" / "rank1" / "metrics.jsonl").is_file()
