"""Submitting drivers to Ray through the Ray Jobs API: the same entrypoint as `ray job submit -- python -m
services.driver JOB.yaml`, so there is one path from every front door (REST, CLI, ray job submit)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

RAY_TO_JOB_STATE = {"PENDING": "PENDING", "RUNNING": "RUNNING", "SUCCEEDED": "SUCCEEDED", "FAILED": "FAILED",
                    "STOPPED": "CANCELLED"}


class RayUnavailable(RuntimeError):
    """The Ray cluster's job server cannot be reached."""


class RayJobs:
    def __init__(self, address: str, redis_url: str, python: str | None = None):
        self.address = address
        self.redis_url = redis_url
        self.python = python or sys.executable  # the driver runs with the control plane's environment
        self._client = None

    @property
    def client(self):
        from ray.job_submission import JobSubmissionClient

        if self._client is None:
            try:
                self._client = JobSubmissionClient(self.address)
            except Exception as err:  # connection refused, timeouts and HTTP errors surface as several types
                raise RayUnavailable(f"Ray job server at {self.address} unreachable: {err}") from err
        return self._client

    def submit(self, job_id: str, config_path: Path, run_dir: Path) -> str:
        entrypoint = (f"{shlex.quote(self.python)} -m services.driver {shlex.quote(str(config_path))} "
                      f"--run-dir {shlex.quote(str(run_dir))}")
        env = {"LEAPFROG_JOB_ID": job_id, "REDIS_URL": self.redis_url, "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}
        for name in ("LEAPFROG_HOME", "LEAPFROG_THREADS"):
            if name in os.environ:
                env[name] = os.environ[name]
        try:
            return self.client.submit_job(entrypoint=entrypoint, submission_id=f"leapfrog-{job_id}",
                                          runtime_env={"env_vars": env},
                                          metadata={"leapfrog_job_id": job_id})
        except RayUnavailable:
            raise
        except Exception as err:
            raise RayUnavailable(f"Ray job submission to {self.address} failed: {err}") from err

    def stop(self, ray_job_id: str) -> None:
        try:
            self.client.stop_job(ray_job_id)
        except Exception as err:
            raise RayUnavailable(f"stopping Ray job {ray_job_id} failed: {err}") from err

    def status(self, ray_job_id: str) -> tuple[str, str]:
        """(Ray job status name, its message)."""
        try:
            info = self.client.get_job_info(ray_job_id)
        except Exception as err:
            raise RayUnavailable(f"Ray job {ray_job_id} status unavailable: {err}") from err
        return str(info.status.value if hasattr(info.status, "value") else info.status), info.message or ""

    def reachable(self) -> bool:
        try:
            self.client.list_jobs()
            return True
        except Exception:  # any failure means "not reachable" for /healthz
            self._client = None
            return False
