"""A Ray driver killed mid-job and started again with the same job continues from its last checkpoint: every step
is logged exactly once, none is lost or repeated, and the rows the dead attempt wrote after its last checkpoint are
kept aside under rolled_back/."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from common.run_dir import list_checkpoints, read_jsonl
from tests.integration.test_ray_job_submit import ray_cli, write_job

pytestmark = pytest.mark.integration


def test_killed_driver_started_again_resumes_without_lost_or_repeated_steps(ray_head, default_model_dir, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    steps = 8
    job, run_dir = tmp_path / "job.yaml", tmp_path / "run"
    write_job(job, default_model_dir, steps=steps)
    client = JobSubmissionClient(ray_head["RAY_ADDRESS"])
    submit = ["job", "submit", "--no-wait", "--working-dir", ".", "--", "python", "-m", "services.driver", str(job),
              "--run-dir", str(run_dir)]
    first = f"lf-restart-a-{os.getpid()}"
    res = ray_cli(ray_head, *submit[:3], "--submission-id", first, *submit[3:])
    assert res.returncode == 0, res.stderr
    deadline = time.time() + 240
    while len(list_checkpoints(run_dir)) < 3 and time.time() < deadline:
        time.sleep(0.2)
    assert len(list_checkpoints(run_dir)) >= 3, client.get_job_logs(first)[-3000:]
    os.kill(int(client.get_job_logs(first).split("leapfrog driver pid ")[1].split()[0]), signal.SIGKILL)
    while client.get_job_status(first) not in (JobStatus.FAILED, JobStatus.SUCCEEDED) and time.time() < deadline:
        time.sleep(0.5)
    assert client.get_job_status(first) == JobStatus.FAILED
    killed_at = list_checkpoints(run_dir)[-1][0]
    assert killed_at < steps

    second = f"lf-restart-b-{os.getpid()}"
    res = ray_cli(ray_head, *submit[:3], "--submission-id", second, *submit[3:])
    assert res.returncode == 0, res.stderr
    while client.get_job_status(second) not in (JobStatus.FAILED, JobStatus.SUCCEEDED) and time.time() < deadline + 240:
        time.sleep(0.5)
    logs = client.get_job_logs(second)
    assert client.get_job_status(second) == JobStatus.SUCCEEDED, logs[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / f'step-{killed_at:06d}'}" in logs.replace("\n", "")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    trained = [r["step"] for r in rows if "loss" in r]
    assert trained == list(range(1, steps + 1))  # each step once, in order
    assert [s for s, _ in list_checkpoints(run_dir)] == list(range(1, steps + 1))
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == steps
    for aside in (run_dir / "rolled_back").glob("metrics-after-*.jsonl"):  # the dead attempt's extra rows, kept
        assert all(r.get("step", r.get("at_step", 0)) > killed_at for r in read_jsonl(aside))
