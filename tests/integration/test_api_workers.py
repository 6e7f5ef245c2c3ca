"""`leapfrog serve --workers 2`: several uvicorn worker processes over one real Redis. State changes stay atomic
across processes (concurrent cancels of one job: exactly one wins), and each worker's cache of job documents
follows writes made elsewhere (a driver's, through the store): a read that follows a write shows it, whichever
worker answers. Ray is not running (a closed port)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from services.store import EmbeddedRedis, connect
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    redis = EmbeddedRedis(root / "redis")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"REDIS_URL": redis.url, "RAY_ADDRESS": f"http://127.0.0.1:{free_port()}",
            "LEAPFROG_RUNS_ROOT": str(root / "runs"), "LEAPFROG_ALLOWED_ROOTS": str(root)}
    env.pop("LEAPFROG_API_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--port", str(port), "--workers", "2"],
                            cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).json()["redis"]:
                break
        except (httpx.HTTPError, ValueError):
            pass
        assert proc.poll() is None and time.time() < deadline, "leapfrog serve --workers 2 did not start"
        time.sleep(0.2)
    yield url, connect(redis.url), proc
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(60)
    redis.stop()


def get_json(url: str, path: str) -> dict:
    """GET on a new connection (the kernel hands each new connection to one of the workers)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path)
        res = conn.getresponse()
        assert res.status == 200 and res.getheader("content-type") == "application/json", res.status
        return json.loads(res.read())
    finally:
        conn.close()


def worker_pids(proc: subprocess.Popen) -> set[int]:
    return {int(c) for t in os.listdir(f"/proc/{proc.pid}/task")
            for c in open(f"/proc/{proc.pid}/task/{t}/children").read().split()
            if b"spawn" in open(f"/proc/{c}/cmdline", "rb").read()}


def test_two_worker_processes_serve(workers):
    _, _, proc = workers
    assert len(worker_pids(proc)) == 2


def test_concurrent_cancels_across_workers_have_one_winner(workers):
    url, store, _ = workers
    jobs = [store.create("race", "{}", "") for _ in range(12)]
    for job in jobs:
        store.transition(job["id"], "RUNNING")
    statuses: dict[str, list[int]] = {job["id"]: [] for job in jobs}
    gate = threading.Barrier(4 * len(jobs))

    def cancel(job_id):
        with httpx.Client(timeout=30) as client:  # a connection of its own: the kernel picks the worker
            gate.wait()
            statuses[job_id].append(client.post(f"{url}/v1/jobs/{job_id}/cancel").status_code)

    threads = [threading.Thread(target=cancel, args=(job["id"],)) for job in jobs for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(sorted(s) == [200, 409, 409, 409] for s in statuses.values()), statuses
    assert {store.get(job["id"])["state"] for job in jobs} == {"CANCELLED"}


def test_every_worker_reads_a_write_made_elsewhere(workers):
    url, store, _ = workers
    job = store.create("follow", "{}", "")
    store.transition(job["id"], "RUNNING")
    first = httpx.get(f"{url}/v1/jobs/{job['id']}")
    again = httpx.get(f"{url}/v1/jobs/{job['id']}")  # a cache hit where the first read went to the same worker
    assert first.content == again.content and again.headers["content-type"] == "application/json"
    path = f"/v1/jobs/{job['id']}"
    for i in range(100):
        for _ in range(4):  # warm both workers' caches with the current document
            get_json(url, path)
        store.update(job["id"], error=f"note {i}")  # as a driver would, through the store
        seen = [get_json(url, path)["error"] for _ in range(4)]
        assert seen == [f"note {i}"] * 4, (i, seen)
    store.transition(job["id"], "SUCCEEDED", summary='{"steps": 3}')
    assert get_json(url, path)["summary"] == {"steps": 3}
