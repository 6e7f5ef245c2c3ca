"""Control plane under load on loopback: paced REST clients and SSE listeners against a real Redis.

Starts the API (uvicorn, its own process) over an embedded Redis with one job holding --rows metrics rows. Two
phases, side by side in one run:

1. **paced** — --clients clients each send --rate requests/s (list / get / metrics page in turn; a dashboard polling
   a job) for --seconds, while --listeners clients hold the job's SSE event stream open and an event is appended
   every 0.2 s. Latency counts from the request's scheduled time, so a stalled server cannot hide its queue
   (no coordinated omission). A listener that loses its connection reconnects with Last-Event-ID, as a browser's
   EventSource does; after the producer stops every listener must hold every event: `sse_events_lost` counts the
   (listener, event) pairs missing after a 15 s grace.
2. **saturation** — the same clients unpaced for --seconds / 2: the throughput ceiling (`max_rps`).

Ray is not running: the Jobs API address is a closed port, so the reconcile a running job's read does (at most
every 2 s per job) fails fast, as in a Ray outage.

    .venv/bin/python bench/api_load.py [--clients 50] [--rate 4] [--listeners 50] [--seconds 20]
Last line: JSON {"requests", "errors", "p50_ms", "p99_ms", "rps", "max_rps", "sse_clients", "sse_events",
"sse_events_lost", ...}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.store import EmbeddedRedis, connect, free_port  # noqa: E402


def start_server(redis_url: str, tmp: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    script = (
        "import uvicorn\n"
        "from pathlib import Path\n"
        "from services.api import Settings, create_app\n"
        "from services.jobs import RayJobs\n"
        "from services.store import connect\n"
        f"url = {redis_url!r}\n"
        f"app = create_app(connect(url), RayJobs('http://127.0.0.1:{free_port()}', url),\n"
        f"                 Settings(runs_root=Path({tmp!r}) / 'runs', allowed_roots=[Path({tmp!r})]))\n"
        f"uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning', timeout_graceful_shutdown=1)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            httpx.get(f"{base}/healthz", timeout=1)
            return proc, base
        except httpx.HTTPError:
            if time.time() > deadline or proc.poll() is not None:
                proc.terminate()
                raise RuntimeError("the API server did not start") from None
            time.sleep(0.2)


def run_clients(base: str, paths: list[str], clients: int, seconds: float, rate: float | None):
    """`clients` threads for `seconds`; paced at `rate` req/s each (latency from the scheduled send) or unpaced."""
    latencies: list[float] = []
    errors: list[str] = []
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            k, due = i, time.perf_counter() + (i / clients) / rate if rate else 0.0
            while True:
                if rate:
                    time.sleep(max(0.0, due - time.perf_counter()))
                start = due if rate else time.perf_counter()
                if start >= stop:
                    return
                try:
                    r = c.get(paths[k % len(paths)])
                    if r.status_code != 200:
                        errors.append(str(r.status_code))
                except httpx.HTTPError as err:
                    errors.append(type(err).__name__)
                latencies.append(time.perf_counter() - start)
                k += 1
                due += 1 / rate if rate else 0.0

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(latencies), errors, time.perf_counter() - started


def listen(url: str, produced: list[str], done: threading.Event, got: set[str], errors: list[str]) -> None:
    """An EventSource: read `events`, reconnect with Last-Event-ID on error, until it holds all of `produced`."""
    last = None
    deadline = None
    while True:
        if done.is_set():
            deadline = deadline or time.time() + 15
            if got.issuperset(produced) or time.time() > deadline:
                return
        headers = {"Last-Event-ID": last} if last else {}
        try:
            with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(5, read=30)) as res:
                fields: dict[str, str] = {}
                for line in res.iter_lines():
                    if line.strip():
                        name, _, value = line.partition(":")
                        fields[name] = value.strip()
                        continue
                    if fields.get("event") == "events" and "id" in fields:  # a blank line ends an SSE event
                        last = fields["id"]
                        got.add(last)
                    fields = {}
                    if done.is_set():
                        deadline = deadline or time.time() + 15
                        if got.issuperset(produced) or time.time() > deadline:
                            return
        except httpx.HTTPError as err:
            errors.append(f"sse {type(err).__name__}")
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second per client (paced phase)")
    parser.add_argument("--listeners", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rows", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="leapfrog-load-") as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis")
        proc = None
        try:
            store = connect(redis.url)
            job = store.create("load", "{}", "")
            store.transition(job["id"], "RUNNING")
            for i in range(args.rows):
                store.append(job["id"], "metrics", {"step": i, "loss": 0.1, "reward_mean": 0.5})
            proc, base = start_server(redis.url, tmp)
            paths = ["/v1/jobs", f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/metrics?limit=100"]

            produced: list[str] = []
            done = threading.Event()
            sse_errors: list[str] = []
            received = [set() for _ in range(args.listeners)]
            listeners = [threading.Thread(target=listen, args=(f"{base}/v1/jobs/{job['id']}/events", produced, done,
                                                               got, sse_errors)) for got in received]
            for t in listeners:
                t.start()

            def producer() -> None:
                while not done.is_set():
                    produced.append(store.append(job["id"], "events", {"type": "no_leap", "step": 0}))
                    time.sleep(0.2)

            feeder = threading.Thread(target=producer)
            feeder.start()
            latencies, errors, elapsed = run_clients(base, paths, args.clients, args.seconds, args.rate)
            done.set()
            feeder.join()
            for t in listeners:
                t.join()
            lost = sum(len(set(produced) - got) for got in received)
            saturated, sat_errors, sat_elapsed = run_clients(base, paths, args.clients, args.seconds / 2, None)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
            redis.stop()
    pick = lambda xs, q: round(1000 * xs[min(len(xs) - 1, int(q * len(xs)))], 1)  # noqa: E731
    result = {"clients": args.clients, "rate_per_client": args.rate, "seconds": args.seconds,
              "requests": len(latencies), "errors": len(errors) + len(sat_errors),
              "error_kinds": sorted(set(errors + sat_errors)), "p50_ms": pick(latencies, 0.5),
              "p99_ms": pick(latencies, 0.99), "rps": round(len(latencies) / elapsed, 1),
              "max_rps": round(len(saturated) / sat_elapsed, 1), "saturated_p99_ms": pick(saturated, 0.99),
              "sse_clients": args.listeners, "sse_events": len(produced), "sse_events_lost": lost,
              "sse_reconnects": len(sse_errors)}
    print(f"paced: {result['requests']} reads at {result['rps']} req/s, p50 {result['p50_ms']} ms, "
          f"p99 {result['p99_ms']} ms; saturated: {result['max_rps']} req/s (p99 {result['saturated_p99_ms']} ms); "
          f"{result['errors']} errors; {args.listeners} SSE clients, {len(produced)} events, {lost} lost, "
          f"{len(sse_errors)} reconnects")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
