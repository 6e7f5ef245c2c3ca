"""`leapfrog serve` stopped by a signal stops everything it started: SIGTERM (what systemd, Docker, Kubernetes and
`timeout` send) and SIGINT (Ctrl+C), serving or still starting, with one worker or several. The processes it
started are collected before the signal from two sources: its process tree (/proc children) and every process
carrying a marker in its environment (the Ray head detaches with setsid, so it is no child of serve's; Redis
rewrites its environment area for its process title, so it is found as a child)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks after boot), None when it is gone or a zombie; guards against PID
    reuse."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        try:
            for task in os.listdir(f"/proc/{parent}/task"):
                children = [int(c) for c in Path(f"/proc/{parent}/task/{task}/children").read_text().split()]
                found.update(children)
                todo += children
        except OSError:
            continue
    return found


def marked(mark: str) -> set[int]:
    needle = f"LEAPFROG_TEST_MARK={mark}".encode()
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if needle in Path(f"/proc/{name}/environ").read_bytes():
                    found.add(int(name))
            except OSError:
                continue
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


@pytest.fixture()
def ray_temp():
    """A short temp dir for the Ray head (its socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="lfs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_serve(tmp_path: Path, ray_temp: Path, mark: str, ray: bool, workers: int = 1):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "REDIS_URL"}
    env |= {"LEAPFROG_HOME": str(tmp_path / "home"), "LEAPFROG_RUNS_ROOT": str(tmp_path / "runs"),
            "LEAPFROG_TEST_MARK": mark, "RAY_AUTH_MODE": "disabled", "LEAPFROG_RAY_TEMP": str(ray_temp),
            "LEAPFROG_RAY_PORT": str(free_port()), "LEAPFROG_RAY_DASHBOARD_PORT": str(free_port()),
            "LEAPFROG_RAY_AGENT_PORT": str(free_port()), "LEAPFROG_RAY_CPUS": "1"}
    if not ray:  # only the embedded Redis: the Ray address is a closed port (healthz says ray: false)
        env["RAY_ADDRESS"] = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    command = [sys.executable, "-m", "services.cli", "serve", "--port", str(port)]
    command += ["--workers", str(workers)] if workers != 1 else []
    proc = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(proc: subprocess.Popen, url: str, ray: bool, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"leapfrog serve exited while starting ({proc.returncode})"
        try:
            health = httpx.get(f"{url}/healthz", timeout=5).json()
            if health["redis"] and health["ray"] == ray:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    raise AssertionError("leapfrog serve did not become healthy")


def stop_and_check(proc: subprocess.Popen, mark: str, sig: int, expect_min: int) -> None:
    """Send `sig`; serve must exit, and nothing it started may outlive it."""
    started = {pid: start_time(pid) for pid in descendants(proc.pid) | marked(mark) if pid != proc.pid}
    assert len(started) >= expect_min, {pid: command_line(pid) for pid in started}
    os.kill(proc.pid, sig)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("leapfrog serve did not exit on the signal") from None
    deadline = time.time() + 5
    while True:
        survivors = {pid for pid, t in started.items() if t is not None and start_time(pid) == t} | marked(mark)
        if not survivors or time.time() > deadline:
            break
        time.sleep(0.2)
    report = {pid: command_line(pid) for pid in survivors}
    for pid in survivors:  # leave the machine clean for the next test
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not report, f"still running after leapfrog serve exited: {report}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_embedded_redis(tmp_path, ray_temp, sig):
    mark = uuid.uuid4().hex
    proc, url = start_serve(tmp_path, ray_temp, mark, ray=False)
    wait_healthy(proc, url, ray=False)
    stop_and_check(proc, mark, sig, expect_min=1)  # the Redis server


def test_sigterm_stops_the_workers_and_redis(tmp_path, ray_temp):
    mark = uuid.uuid4().hex
    proc, url = start_serve(tmp_path, ray_temp, mark, ray=False, workers=2)
    wait_healthy(proc, url, ray=False)
    stop_and_check(proc, mark, signal.SIGTERM, expect_min=3)  # Redis and two uvicorn workers


def test_sigterm_stops_the_ray_head_and_redis(tmp_path, ray_temp):
    mark = uuid.uuid4().hex
    proc, url = start_serve(tmp_path, ray_temp, mark, ray=True)
    wait_healthy(proc, url, ray=True)
    stop_and_check(proc, mark, signal.SIGTERM, expect_min=4)  # Redis, `ray start`, gcs_server, raylet, ...


def test_sigterm_while_the_ray_head_starts(tmp_path, ray_temp):
    mark = uuid.uuid4().hex
    proc, _ = start_serve(tmp_path, ray_temp, mark, ray=True)
    pidfile = ray_temp / "leapfrog-head.pgid"
    deadline = time.time() + 120
    while not pidfile.is_file() or not any("gcs_server" in command_line(p) for p in marked(mark)):
        assert time.time() < deadline and proc.poll() is None, "the Ray head did not begin to start"
        time.sleep(0.1)
    stop_and_check(proc, mark, signal.SIGTERM, expect_min=3)  # Redis, `ray start`, gcs_server
