"""`ray job submit` against a local head started by deploy/ray-local.sh: a job succeeds and its result is read
back; a job whose driver dies is reported FAILED with the cause and its run directory stays readable."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from common.run_dir import list_checkpoints
from learner.checkpoint import read_checkpoint
from tests.conftest import REPO

pytestmark = pytest.mark.integration
VENV_BIN = REPO / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_job(path, model_dir, steps):
    path.write_text(f"model:\n  path: {model_dir}\nrollout:\n  prompts_per_step: 8\n  group_size: 4\n  eval_size: 32\n"
                    f"  engine: hf\n  worker_cpus: 0.5\nlearner:\n  num_cpus: 0.5\n"
                    f"run:\n  steps: {steps}\n  checkpoint_every: 1\n  eval_every: {steps}\n")


def ray_cli(env, *args, timeout=300):
    """Run the ray CLI; a submit that reaches the head before its job agent registered is retried (up to 60 s)."""
    deadline = time.time() + 60
    while True:
        res = subprocess.run([str(VENV_BIN / "ray"), *args], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=timeout)
        if "No available agent to submit job" not in res.stderr or time.time() > deadline:
            return res
        time.sleep(2)


def test_ray_job_submit_runs_the_driver(ray_head, default_model_dir, tmp_path):
    job = tmp_path / "job.yaml"
    write_job(job, default_model_dir, steps=3)
    run_dir = tmp_path / "run"
    res = ray_cli(ray_head, "job", "submit", "--working-dir", ".", "--", "python", "-m", "services.driver",
                  str(job), "--run-dir", str(run_dir))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3
    assert [s for s, _ in list_checkpoints(run_dir)] == [1, 2, 3]


def test_dead_driver_is_reported_failed_and_run_dir_stays_readable(ray_head, default_model_dir, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    job = tmp_path / "job.yaml"
    write_job(job, default_model_dir, steps=500)
    run_dir = tmp_path / "run"
    res = ray_cli(ray_head, "job", "submit", "--no-wait", "--submission-id", f"lf-test-{os.getpid()}",
                  "--working-dir", ".", "--", "python", "-m", "services.driver", str(job), "--run-dir", str(run_dir))
    assert res.returncode == 0, res.stderr
    client = JobSubmissionClient(ray_head["RAY_ADDRESS"])
    job_id = f"lf-test-{os.getpid()}"
    deadline = time.time() + 180
    while len(list_checkpoints(run_dir)) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert len(list_checkpoints(run_dir)) >= 2, client.get_job_logs(job_id)[-3000:]
    pid = int(client.get_job_logs(job_id).split("leapfrog driver pid ")[1].split()[0])
    os.kill(pid, signal.SIGKILL)
    while client.get_job_status(job_id) not in (JobStatus.FAILED, JobStatus.SUCCEEDED) and time.time() < deadline:
        time.sleep(0.5)
    info = client.get_job_info(job_id)
    assert info.status == JobStatus.FAILED
    assert "exit code" in info.message
    step, path = list_checkpoints(run_dir)[-1]
    state, meta = read_checkpoint(path)
    assert meta["step"] == step and state["step"] == step
