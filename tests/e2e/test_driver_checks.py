"""The Ray driver entrypoint (what `ray job submit` runs) refuses a job that cannot run before it connects to Ray
or writes anything, naming the field."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_driver_refuses_an_unknown_task_before_any_work(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("rollout:\n  task: nosuch\n")
    run_dir = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "services.driver", str(job), "--run-dir", str(run_dir)], cwd=REPO,
                         capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert res.returncode == 2, res.stderr[-2000:]
    assert "rollout.task" in res.stderr and "nosuch" in res.stderr
    assert not run_dir.exists()
