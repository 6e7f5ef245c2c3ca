"""The learner group in whole runs of the tiny reference job (float64, so that summation order is the only
difference): 2 ranks through `leapfrog run` and through Ray make the 1-rank run's losses; a run stopped at 2 ranks
resumes at 1 and one stopped at 1 resumes at 2 with the same losses (ddp through `leapfrog run`, fsdp on Ray); a rank
killed on Ray takes the lost-learner path (the group restarts and resumes from the last checkpoint) and the run keeps
the 1-rank losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from services.config import parse_config
from services.driver import run_on_ray
from services.loop import run_job
from tests.conftest import REPO

pytestmark = pytest.mark.integration

STEPS = 4


def job_data(model_dir, ranks: int) -> dict:
    return {
        "model": {"path": str(model_dir), "dtype": "float64"},
        "rollout": {"task": "arith", "prompts_per_step": 8, "group_size": 4, "eval_size": 16, "engine": "hf",
                    "worker_cpus": 0.5},
        "learner": {"lr": 1e-3, "num_cpus": 0.5, "micro_batch_size": 6, "beta": 0.02, "num_workers": ranks,
                    "sharding": "ddp" if ranks > 1 else "none"},  # 32 sequences: micro-batches of 6, 6, 6, 6, 6, 2
        "run": {"steps": STEPS, "checkpoint_every": 2, "eval_every": 2, "seed": 3},
    }


def step_rows(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def assert_same_run(reference: list[dict], rows: list[dict]) -> None:
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for a, b in zip(reference, rows, strict=True):
        assert a["reward_mean"] == b["reward_mean"], (a["step"], a["reward_mean"], b["reward_mean"])
        for key in ("loss", "grad_norm", "kl"):
            assert abs(a[key] - b[key]) <= 1e-9 * max(abs(a[key]), 1e-6), (a["step"], key, a[key], b[key])


@pytest.fixture(scope="module")
def one_rank(tiny_model_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one-rank") / "run"
    run_job(parse_config(job_data(tiny_model_dir, 1)), run_dir=run_dir, progress=False)
    return step_rows(run_dir)


def leapfrog(*args):
    env = {**os.environ, "LEAPFROG_THREADS": "2"}
    res = subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


def test_two_ranks_through_leapfrog_run_stopped_and_resumed_at_one(tiny_model_dir, tmp_path, one_rank):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job_data(tiny_model_dir, 2)))
    run_dir = tmp_path / "run"
    leapfrog("run", str(config), "--run-dir", str(run_dir), "--stop-after", "2")
    assert len(step_rows(run_dir)) == 2
    res = leapfrog("run", "--resume", str(run_dir), "--set", "learner.num_workers=1", "--set", "learner.sharding=none")
    assert "Run finished" in res.stdout
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["learner"]["num_workers"] == 1
    assert_same_run(one_rank, step_rows(run_dir))
    # a resumed run may change where it runs, not what it computes
    from services.cli import resumed_job

    saved = (run_dir / "config.yaml").read_text()
    with pytest.raises(ValueError, match="resources only"):
        resumed_job(run_dir, ["learner.lr=0.1"])
    assert (run_dir / "config.yaml").read_text() == saved


def test_a_killed_rank_restarts_the_group_from_the_last_checkpoint(ray_local, tiny_model_dir, tmp_path, runtimes,
                                                                   one_rank):
    """Two ddp ranks on Ray make the 1-rank run's steps; rank 1 killed after step 3 takes the lost-learner path (a new
    group resumes the last checkpoint) and the steps it trains again are the same steps."""
    import ray

    from tests.integration.test_ray_runtime import kill_when

    run_dir = tmp_path / "run"
    data = job_data(tiny_model_dir, 2)
    data["run"]["steps"] = 6
    watcher = kill_when(run_dir, lambda: ray.get(runtimes[0].learners.actors[1].pid.remote()), after_step=3)
    summary = run_on_ray(parse_config(data), run_dir, progress=False)
    watcher.join(timeout=5)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = [r for r in rows if r.get("event") == "learner_restarted"]
    assert len(events) == 1 and events[0]["from_step"] in (2, 4), events
    assert summary.steps == 6 and (run_dir / "checkpoints" / "step-000006").is_dir()
    last = {r["step"]: r for r in step_rows(run_dir)}  # a step trained again after the restart: its last row
    assert sorted(last) == [1, 2, 3, 4, 5, 6]
    assert_same_run(one_rank, [last[s] for s in range(1, STEPS + 1)])  # run.steps (4 vs 6) leaves steps alone


def test_fsdp_in_the_single_process_runner_is_refused_before_anything_is_written(tiny_model_dir, tmp_path):
    from services.config import ConfigError

    data = job_data(tiny_model_dir, 2)
    data["learner"]["sharding"] = "fsdp"
    with pytest.raises(ConfigError, match="Ray driver"):
        run_job(parse_config(data), run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("lora, first, then", [(False, 2, 1), (True, 1, 2)], ids=["full-2-to-1", "lora-1-to-2"])
def test_fsdp_on_ray_checkpoints_whole_and_resumes_at_another_size(ray_local, tiny_model_dir, tmp_path, one_rank, lora,
                                                                    first, then):
    """fsdp ranks on Ray (full-parameter, and LoRA) train as one rank does; a checkpoint gathered from their shards
    holds the whole policy and optimizer state, from which one unsharded rank resumes the same run, and a 1-rank
    checkpoint is loaded into the shards of 2."""
    def data(ranks):
        d = job_data(tiny_model_dir, ranks)
        d["learner"]["sharding"] = "fsdp" if ranks > 1 else "none"
        if not lora:
            d["learner"]["lora"] = None
        return d

    reference = one_rank  # the LoRA job's 1-rank run
    if not lora:
        run_job(parse_config(data(1)), run_dir=tmp_path / "reference", progress=False)
        reference = step_rows(tmp_path / "reference")
    run_dir = tmp_path / "run"
    run_on_ray(parse_config(data(first)), run_dir, progress=False, stop_after=2)
    run_on_ray(parse_config(data(then)), run_dir, resume=True, progress=False)
    assert_same_run(reference, step_rows(run_dir))


def test_gpu_check_says_so_and_exits_0_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: bench/gpu_check.py runs for real there")
    res = subprocess.run([sys.executable, "bench/gpu_check.py"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "nothing to check on this machine" in res.stdout
    assert json.loads(res.stdout.strip().splitlines()[-1])["gpu"] is False


def test_a_group_the_cluster_cannot_place_fails_before_training(ray_local, tiny_model_dir, tmp_path):
    data = job_data(tiny_model_dir, 2)
    data["learner"]["num_cpus"] = 1.0  # 2 ranks x 1 CPU + a 0.5-CPU worker on a 2-CPU cluster
    with pytest.raises(ValueError, match=r"needs 2\.5 CPUs .*learner.num_workers x learner.num_cpus"):
        run_on_ray(parse_config(data), tmp_path / "a", progress=False)
    data = job_data(tiny_model_dir, 2)
    data["learner"]["resources"] = {"learner": 1}
    with pytest.raises(ValueError, match="custom Ray resource 'learner'"):
        run_on_ray(parse_config(data), tmp_path / "b", progress=False)
    assert not (tmp_path / "a" / "metrics.jsonl").exists() and not (tmp_path / "b" / "metrics.jsonl").exists()
