"""The event loop is never held: SSE listeners keep receiving a job's events on time while job submissions wait
for a Ray Jobs API that answers slowly. Real server (uvicorn on loopback), real Redis; the Ray address is a real
HTTP server that takes SLOW seconds to answer every request (503), as an overloaded Ray dashboard would."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from services.api import Settings, create_app
from services.ray_jobs import RayJobs
from services.store import EmbeddedRedis, connect
from tests.conftest import free_port
from tests.integration.control_plane import LiveServer

pytestmark = pytest.mark.integration
SLOW = 3.0  # seconds the Ray address takes to answer
EVERY = 0.1  # seconds between two events
BOUND = 1.5  # largest delay from append to arrival allowed on a loaded 2-core machine (far below SLOW)


class SlowRay(BaseHTTPRequestHandler):
    def do_GET(self):  # JobSubmissionClient's first request is GET /api/version
        time.sleep(SLOW)
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture()
def slow_plane(tmp_path):
    ray = ThreadingHTTPServer(("127.0.0.1", free_port()), SlowRay)
    threading.Thread(target=ray.serve_forever, daemon=True).start()
    redis = EmbeddedRedis(tmp_path / "redis")
    store = connect(redis.url)
    settings = Settings(token=None, runs_root=tmp_path / "runs", allowed_roots=[tmp_path])
    server = LiveServer(create_app(store, RayJobs(f"http://127.0.0.1:{ray.server_port}", redis.url), settings),
                        free_port())
    yield server.url, store
    server.stop()
    redis.stop()
    ray.shutdown()


def listen(url: str, arrivals: dict[str, float], stop: threading.Event) -> None:
    """Read the SSE stream, noting when each `events` message (by id) arrives, until `stop`."""
    with httpx.stream("GET", url, timeout=httpx.Timeout(5, read=30)) as res:
        assert res.status_code == 200
        current: dict[str, str] = {}
        for line in res.iter_lines():
            if line:
                key, _, value = line.partition(":")
                current[key] = value.strip()
                continue
            if current.get("event") == "events":
                arrivals[current["id"]] = time.monotonic()
            current = {}
            if stop.is_set():
                return


def test_sse_events_arrive_on_time_while_submissions_wait_for_a_slow_ray(slow_plane):
    url, store = slow_plane
    job = store.create("watched", "{}", "")
    store.transition(job["id"], "RUNNING")
    appended: dict[str, float] = {}
    stop_producer, stop_listeners = threading.Event(), threading.Event()

    def producer():  # the driver appending events
        while not stop_producer.is_set():
            appended[store.append(job["id"], "events", {"type": "no_leap", "step": len(appended)})] = time.monotonic()
            time.sleep(EVERY)

    listeners = [{} for _ in range(4)]
    threads = [threading.Thread(target=listen, args=(f"{url}/v1/jobs/{job['id']}/events", got, stop_listeners))
               for got in listeners]
    feeder = threading.Thread(target=producer)
    for t in threads + [feeder]:
        t.start()
    deadline = time.time() + 30
    while not all(listeners) and time.time() < deadline:
        time.sleep(0.05)
    assert all(listeners), "every listener receives events before the submissions"

    results = []

    def submit():
        t0 = time.monotonic()
        res = httpx.post(f"{url}/v1/jobs", content="run:\n  name: slowray\n  steps: 2\n", timeout=60,
                         headers={"Content-Type": "application/yaml"})
        results.append((res.status_code, t0, time.monotonic()))

    submitters = [threading.Thread(target=submit) for _ in range(2)]
    for t in submitters:
        t.start()
    for t in submitters:
        t.join()
    time.sleep(BOUND)
    stop_listeners.set()  # each listener returns on its next event
    for t in threads:
        t.join(timeout=30)
    stop_producer.set()
    feeder.join()

    assert [status for status, _, _ in results] == [503, 503]  # recorded, Ray never answered in time
    assert all(end - start >= SLOW * 0.9 for _, start, end in results), results  # the Ray side really was slow
    window = (min(start for _, start, _ in results), max(end for _, _, end in results))
    during = [sid for sid, at in appended.items() if window[0] <= at <= window[1] - BOUND]
    assert len(during) >= 10, during
    for got in listeners:
        missing = [sid for sid in during if sid not in got]
        assert not missing, f"{len(missing)} events never arrived"
        worst = max(got[sid] - appended[sid] for sid in during)
        assert worst < BOUND, f"an event took {worst:.2f} s to reach a listener while submissions waited for Ray"
    failed = httpx.get(f"{url}/v1/jobs", params={"state": "FAILED"}).json()["items"]
    assert [j["name"] for j in failed] == ["slowray", "slowray"]
