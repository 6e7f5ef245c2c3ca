"""Control plane under load on loopback: concurrent REST clients and SSE listeners against a real Redis.

Starts the API (uvicorn, its own process) over an embedded Redis with one job holding --rows metrics rows, then runs
--clients threads for --seconds, each looping over list / get / metrics-page requests, while --listeners clients
hold the job's SSE event stream open (an event is appended every 0.5 s). Ray is not involved (the Jobs API
address points at a closed port; these routes do not touch it).

    .venv/bin/python bench/api_load.py [--clients 200] [--listeners 50] [--seconds 20]
Last line: JSON {"requests", "rps", "p50_ms", "p99_ms", "errors", "sse_listeners", "sse_events_received"}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import subprocess

    import httpx

    from services.store import EmbeddedRedis, connect, free_port

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--listeners", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rows", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="leapfrog-load-") as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis")
        store = connect(redis.url)
        job = store.create("load", "{}", "")
        for i in range(args.rows):
            store.append(job["id"], "metrics", {"step": i, "loss": 0.1, "reward_mean": 0.5})
        port = free_port()
        script = (
            "import uvicorn\n"
            "from pathlib import Path\n"
            "from services.api import Settings, create_app\n"
            "from services.jobs import RayJobs\n"
            "from services.store import connect\n"
            f"url = {redis.url!r}\n"
            f"app = create_app(connect(url), RayJobs('http://127.0.0.1:{free_port()}', url),\n"
            f"                 Settings(runs_root=Path({tmp!r}) / 'runs', allowed_roots=[Path({tmp!r})]), redis_url=url)\n"
            f"uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning', timeout_graceful_shutdown=1)\n")
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                                start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                httpx.get(f"{base}/v1/jobs", timeout=1)
                break
            except httpx.HTTPError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("the API server did not start") from None
                time.sleep(0.2)
        latencies: list[float] = []
        errors: list[str] = []
        received = [0]
        stop = time.time() + args.seconds
        paths = ["/v1/jobs", f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/metrics?limit=100"]

        def client(i: int) -> None:
            with httpx.Client(base_url=base, timeout=30) as c:
                k = i
                while time.time() < stop:
                    t0 = time.perf_counter()
                    try:
                        r = c.get(paths[k % 3])
                        if r.status_code != 200:
                            errors.append(str(r.status_code))
                    except httpx.HTTPError as err:
                        errors.append(type(err).__name__)
                    latencies.append(time.perf_counter() - t0)
                    k += 1

        def listener() -> None:
            try:
                with httpx.stream("GET", f"{base}/v1/jobs/{job['id']}/events", timeout=5) as res:
                    for line in res.iter_lines():
                        if line.startswith("data:"):
                            received[0] += 1
                        if time.time() > stop:
                            return
            except httpx.HTTPError as err:
                if time.time() < stop:
                    errors.append(f"sse {type(err).__name__}")

        def producer() -> None:
            while time.time() < stop:
                store.append(job["id"], "events", {"type": "no_leap", "step": 0, "reason": "load"})
                time.sleep(0.5)

        threads = [threading.Thread(target=listener) for _ in range(args.listeners)]
        threads += [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        threads.append(threading.Thread(target=producer))
        started = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - started
        proc.terminate()
        proc.wait(30)
        redis.stop()
    latencies.sort()
    pick = lambda q: 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    result = {"clients": args.clients, "seconds": args.seconds, "requests": len(latencies),
              "rps": round(len(latencies) / elapsed, 1), "p50_ms": round(pick(0.5), 1), "p99_ms": round(pick(0.99), 1),
              "errors": len(errors), "error_kinds": sorted(set(errors)), "sse_listeners": args.listeners,
              "sse_events_received": received[0]}
    print(f"{result['requests']} requests in {elapsed:.0f} s ({result['rps']} req/s): p50 {result['p50_ms']} ms, "
          f"p99 {result['p99_ms']} ms, {result['errors']} errors; {args.listeners} SSE listeners got "
          f"{received[0]} events")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
