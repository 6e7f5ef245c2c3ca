"""Control plane under load on loopback, measured against the machine's own ceiling.

One load generator for the GETs of all three phases of one run: by default Debian's wrk (`make bench-tools`), a C
event loop in its own process; with --generator python, this process (asyncio on uvloop, raw HTTP/1.1 keep-alive
connections, paced strictly from a schedule). The SSE listeners and the submissions always come from this process.

1. **bare** — a bare uvicorn endpoint (a raw ASGI app, same uvicorn settings, one process) that returns a fixed
   JSON document the size of the job record, driven to saturation by --connections closed-loop connections for
   --saturate-seconds: `bare_max_rps`, what this machine and this generator can do at all.
2. **saturation** — our `GET /v1/jobs/{id}` (`leapfrog serve --workers N` over an embedded Redis), driven the same
   way: `max_rps`; `throughput_ratio` = max_rps / bare_max_rps. Phases 1 and 2 alternate for --rounds rounds and
   the best round of each counts (the per-round figures are printed too): on a shared machine the neighbours'
   load moves both ceilings by 2x from one minute to the next.
3. **paced** — --clients clients, each on its own connection, together sending half of bare_max_rps
   (`offered_rps`) of `GET /v1/jobs/{id}` for --seconds, while --listeners clients hold the job's SSE event stream
   open, an event is appended every 0.2 s and a job is submitted every --submit-every s. Latency counts from the
   request's scheduled time, so a stalled server cannot hide its queue (no coordinated omission). A listener that
   loses its connection reconnects with Last-Event-ID, as a browser's EventSource does; after the producer stops
   every listener must hold every event: `sse_events_lost` counts the (listener, event) pairs missing after a 15 s
   grace. As a control, the bare endpoint gets the same paced load first (for --seconds / 2, no SSE, no
   submissions): `bare_paced_p99_ms` is what the machine and the generator alone add to a p99.

Ray is not running: the Jobs API address is a closed port, so a submission is validated, recorded and answered 503
("recorded but not started", counted apart, not an error), and the reconcile a running job's read does (at most
every 2 s per job and worker) fails fast, as in a Ray outage.

    .venv/bin/python bench/api_load.py [--clients 200] [--listeners 50] [--seconds 20] [--workers 2]
        [--generator wrk|python]
Comparing the two generators' p99 tells how much of the tail the generator itself causes on a small machine: on 2
cores the Python generator takes ~0.6 of a core from the server it measures, wrk ~0.4 (`cores` in the JSON).
Last line: JSON {"bare_max_rps", "max_rps", "throughput_ratio", "offered_rps", "requests", "errors", "p50_ms",
"p99_ms", "rps", "sse_clients", "sse_events", "sse_events_lost", "submissions", "cores", ...}; `cores` says how many
cores the generator, the server (its workers), Redis and the bare endpoint kept busy in each phase (from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.store import EmbeddedRedis, connect, free_port  # noqa: E402

BARE_APP = """
import sys
import uvicorn
DOC = open(sys.argv[2], "rb").read()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(DOC)).encode())]

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": DOC})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""

JOB_YAML = "run:\n  name: loadsub\n  steps: 2\n"
# Debian's wrk (`make bench-tools`) as the generator of the GETs (--generator wrk): a C event loop in its own process,
# ~10x cheaper per request than this one. Saturation: closed loop. Paced: each connection waits a think time before
# its next request, calibrated on a 2 s trial so that the served rate meets the offered one; latency counts
# from each request's send (wrk does not correct coordinated omission as the Python pacer does), so the Python
# pacer's figures stay the strict ones and wrk's say what a cheap generator sees.
WRK_SCRIPT = """
local think = tonumber(os.getenv("LEAPFROG_WRK_THINK_MS") or "0")
if think > 0 then
  function delay() return think end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
    .. '"errors": %d}\\n', summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect + e.read + e.write + e.timeout + e.status))
end
"""
GIVE_UP = 10.0  # seconds a paced client may fall behind its schedule before the rest of its requests count as failed


def wait_up(proc: subprocess.Popen, port: int, path: str, timeout: float = 120) -> None:
    """Until the server on `port` answers `path` (any status)."""
    import socket

    deadline = time.time() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
                if s.recv(12).startswith(b"HTTP/1.1"):
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"the server on port {port} did not start (exit code {proc.poll()})")
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its descendants so far (utime + stime of each, from /proc)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return total


WRK_CPU_SECONDS = [0.0]  # CPU time of the finished wrk runs (they are the generator too, in another process)


def snapshot(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process (with its descendants) and of the generator: this process plus
    every finished wrk run."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {name: cpu_seconds(pid) for name, pid in pids.items()} | {
        "generator": own.ru_utime + own.ru_stime + WRK_CPU_SECONDS[0]}


def cores(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Cores each process kept busy between two snapshots: where the time goes."""
    return {name: round((after[name] - before[name]) / seconds, 2) for name in after}


def settle(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the server is idle (under 5% of a core over a second): its startup work (the workers' warm-up of the
    submission checks) must not overlap the measurements."""
    deadline, last = time.time() + timeout, cpu_seconds(proc.pid)
    while time.time() < deadline:
        time.sleep(1.0)
        now = cpu_seconds(proc.pid)
        if now - last < 0.05:
            return
        last = now
    raise RuntimeError(f"the server is still busy {timeout:.0f} s after it started")


def stop(proc: subprocess.Popen) -> None:
    """End a server started in its own process group (the group: uvicorn's workers with it)."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class Connection:
    """One HTTP/1.1 keep-alive connection; responses must carry Content-Length (ours and the bare app's do)."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes = b"", headers: str = "") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        extra = f"Content-Length: {len(body)}\r\n" if body else ""
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: bench\r\n{headers}{extra}\r\n".encode() + body)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at < 0:
                raise ConnectionError("response without Content-Length")
            length = int(lower[at + 17:lower.index(b"\r\n", at + 2)])
            payload = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            self.close()
            raise
        return int(head[9:12]), payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def fetch(port: int, path: str) -> bytes:
    conn = Connection(port)
    try:
        status, body = await conn.request("GET", path)
    finally:
        conn.close()
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
    return body


async def get(conn: Connection, path: str, errors: list[str]) -> None:
    """One GET; anything but a 200 is an error."""
    try:
        status, _ = await conn.request("GET", path)
        if status != 200:
            errors.append(str(status))
    except (OSError, asyncio.IncompleteReadError) as err:
        errors.append(type(err).__name__)


async def saturate(port: int, path: str, connections: int, seconds: float) -> tuple[float, list[str]]:
    """Closed loop: `connections` connections, each sending its next request as soon as the last one is
    answered, for `seconds` (after a 1 s warm-up); returns (requests per second, errors)."""
    errors: list[str] = []
    counts = [0] * connections
    start = time.perf_counter()
    warm, stop_at = start + 1.0, start + 1.0 + seconds

    async def loop(i: int) -> None:
        conn = Connection(port)
        try:
            while (now := time.perf_counter()) < stop_at:
                await get(conn, path, errors)
                if now >= warm:
                    counts[i] += 1
        finally:
            conn.close()

    await asyncio.gather(*(loop(i) for i in range(connections)))
    return sum(counts) / seconds, errors


async def paced(port: int, path: str, clients: int, total_rps: float, seconds: float):
    """`clients` connections together offering `total_rps` (each total_rps / clients, staggered); latency from each
    request's scheduled time; a client GIVE_UP s behind stops and counts the rest as errors. Returns (sorted
    latencies in s, errors, elapsed s)."""
    latencies: list[float] = []
    errors: list[str] = []
    period = clients / total_rps
    start = time.perf_counter()
    stop_at = start + seconds

    async def client(i: int) -> None:
        conn = Connection(port)
        due = start + period * i / clients
        try:
            while due < stop_at:
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif -delay > GIVE_UP:  # the server is this far behind: what is still due counts as failed
                    errors.extend(["not sent: server behind"] * (1 + int((stop_at - due) / period)))
                    return
                await get(conn, path, errors)
                latencies.append(time.perf_counter() - due)
                due += period
        finally:
            conn.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return sorted(latencies), errors, time.perf_counter() - start


async def wrk(port: int, path: str, connections: int, seconds: float, think_ms: float = 0.0) -> dict:
    """Run wrk against 127.0.0.1:port/path (one thread, `connections` connections, `think_ms` between a
    connection's requests; 0 = closed loop) as a subprocess, while this event loop keeps serving the SSE listeners;
    returns its figures {requests, rps, p50_ms, p99_ms, max_ms, errors}."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = await asyncio.create_subprocess_exec(
            "wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--timeout", f"{GIVE_UP:g}s", "-s",
            f.name, f"http://127.0.0.1:{port}{path}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "LEAPFROG_WRK_THINK_MS": f"{think_ms:.3f}"})
        out, err = await proc.communicate()
    finally:
        os.unlink(f.name)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)  # only wrk ends in between: the servers outlive a phase
    WRK_CPU_SECONDS[0] += reaped.ru_utime + reaped.ru_stime - children.ru_utime - children.ru_stime
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {(out + err).decode()[-500:]}")
    figures = json.loads(out.decode().strip().splitlines()[-1])
    return {"requests": figures["requests"], "rps": figures["requests"] / (figures["duration_us"] / 1e6),
            "p50_ms": figures["p50_us"] / 1000, "p99_ms": figures["p99_us"] / 1000,
            "max_ms": figures["max_us"] / 1000, "errors": figures["errors"]}


async def listen(port: int, path: str, produced: list[str], done: asyncio.Event, got: set[str],
                 reconnects: list[str]) -> None:
    """An EventSource on the job's events: reads the chunked SSE body, reconnects with Last-Event-ID on error, until
    it holds every produced event (or 15 s after the producer stopped)."""
    last = None
    deadline = None

    def finished() -> bool:
        nonlocal deadline
        if not done.is_set():
            return False
        deadline = deadline or time.time() + 15
        return got.issuperset(produced) or time.time() > deadline

    while not finished():
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            resume = f"Last-Event-ID: {last}\r\n" if last else ""
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n{resume}\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200") or b"chunked" not in head.lower():
                raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
            buffer = b""
            while not finished():
                try:
                    size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 1.0)
                except TimeoutError:
                    continue
                size = int(size_line.strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break  # the server ended the stream
                buffer += chunk[:-2]
                *messages, buffer = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
                for message in messages:
                    fields = dict(line.split(b": ", 1) for line in message.split(b"\n") if b": " in line)
                    if fields.get(b"event") == b"events" and b"id" in fields:
                        last = fields[b"id"].decode()
                        got.add(last)
        except (OSError, asyncio.IncompleteReadError, ValueError) as err:
            reconnects.append(type(err).__name__)
            await asyncio.sleep(0.2)
        finally:
            if writer is not None:
                writer.close()


async def submit_jobs(port: int, every: float, done: asyncio.Event, statuses: dict[str, int]) -> None:
    """POST a job config every `every` s until `done` (201, or 503 "recorded but not started" without Ray)."""
    conn = Connection(port)
    try:
        while not done.is_set():
            try:
                status, _ = await conn.request("POST", "/v1/jobs", JOB_YAML.encode(),
                                               "Content-Type: application/yaml\r\n")
                statuses[str(status)] = statuses.get(str(status), 0) + 1
            except (OSError, asyncio.IncompleteReadError) as err:
                statuses[type(err).__name__] = statuses.get(type(err).__name__, 0) + 1
            try:
                await asyncio.wait_for(done.wait(), every)
            except TimeoutError:
                pass
    finally:
        conn.close()


async def saturate_rps(args, port: int, path: str) -> tuple[float, list[str]]:
    """(requests per second, errors) of one saturation round with the chosen generator."""
    if args.generator == "python":
        return await saturate(port, path, args.connections, args.saturate_seconds)
    figures = await wrk(port, path, args.connections, args.saturate_seconds)
    return figures["rps"], ["wrk error"] * figures["errors"]


async def paced_load(args, port: int, path: str, total_rps: float, seconds: float) -> dict:
    """The paced GETs with the chosen generator: {p50_ms, p99_ms, max_ms, requests, rps, errors}."""
    if args.generator == "wrk":  # a 2 s calibration: the think time less each request's own time hits the rate
        period_ms = 1000 * args.clients / total_rps
        trial = await wrk(port, path, args.clients, 2, think_ms=period_ms)
        overhead_ms = max(0.0, 1000 * args.clients / trial["rps"] - period_ms)
        figures = await wrk(port, path, args.clients, seconds, think_ms=max(0.0, period_ms - overhead_ms))
        return {**figures, "errors": ["wrk error"] * (trial["errors"] + figures["errors"])}
    latencies, errors, elapsed = await paced(port, path, args.clients, total_rps, seconds)
    pick = lambda q: round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies \
        else None  # noqa: E731
    return {"p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": pick(1.0), "requests": len(latencies),
            "rps": len(latencies) / elapsed, "errors": errors}


async def measure(args, store, job_id: str, port: int, doc_path: Path, pids: dict[str, int]) -> dict:
    bare_port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE_APP, str(bare_port), str(doc_path)], cwd=ROOT,
                            start_new_session=True)
    path = f"/v1/jobs/{job_id}"
    bare_rounds, our_rounds, bare_errors, sat_errors = [], [], [], []
    try:
        wait_up(bare, bare_port, "/")
        settle(bare)
        usage = {}
        for _ in range(args.rounds):  # bare then ours, in turn: both see the same neighbours on a shared machine
            for name, target, rounds, errors in (("bare", (bare_port, "/"), bare_rounds, bare_errors),
                                                 ("ours", (port, path), our_rounds, sat_errors)):
                t0, before = time.perf_counter(), snapshot(pids | {"bare": bare.pid})
                rps, failed = await saturate_rps(args, *target)
                used = cores(before, snapshot(pids | {"bare": bare.pid}), time.perf_counter() - t0)
                if not rounds or rps > max(rounds):
                    usage[name] = used
                rounds.append(round(rps, 1))
                errors += failed
        bare_max_rps, max_rps = max(bare_rounds), max(our_rounds)  # a ceiling: the best round of each
        offered = bare_max_rps / 2
        # the control: the same paced load on the bare endpoint shows what this machine and generator add to p99
        bare_paced = await paced_load(args, bare_port, "/", offered, args.seconds / 2)
        bare_errors += bare_paced["errors"]
    finally:
        stop(bare)

    produced: list[str] = []
    done = asyncio.Event()
    produced_done = threading.Event()
    reconnects: list[str] = []
    received = [set() for _ in range(args.listeners)]
    listeners = [asyncio.create_task(listen(port, f"{path}/events", produced, done, got, reconnects))
                 for got in received]

    def producer() -> None:  # a driver appending events (its own thread and Redis connection)
        while not produced_done.is_set():
            produced.append(store.append(job_id, "events", {"type": "no_leap", "step": 0}))
            time.sleep(0.2)

    feeder = threading.Thread(target=producer)
    statuses: dict[str, int] = {}
    await asyncio.sleep(1.0)  # the listeners connect
    feeder.start()
    submitter = asyncio.create_task(submit_jobs(port, args.submit_every, done, statuses))
    before, t0 = snapshot(pids), time.perf_counter()
    ours = await paced_load(args, port, path, offered, args.seconds)
    usage["paced"] = cores(before, snapshot(pids), time.perf_counter() - t0)
    errors = ours["errors"]
    produced_done.set()
    await asyncio.to_thread(feeder.join)
    done.set()
    await submitter
    await asyncio.gather(*listeners)
    lost = sum(len(set(produced) - got) for got in received)
    bad_submits = {k: v for k, v in statuses.items() if k not in ("201", "503")}
    all_errors = bare_errors + sat_errors + errors + [f"submit {k}" for k in bad_submits]
    return {"generator": args.generator, "workers": args.workers, "connections": args.connections,
            "bare_max_rps": bare_max_rps,
            "max_rps": max_rps, "throughput_ratio": round(max_rps / bare_max_rps, 3),
            "bare_rounds_rps": bare_rounds, "our_rounds_rps": our_rounds, "cores": usage,
            "clients": args.clients, "offered_rps": round(offered, 1), "seconds": args.seconds,
            "requests": ours["requests"], "rps": round(ours["rps"], 1),
            "p50_ms": ours["p50_ms"], "p99_ms": ours["p99_ms"], "max_ms": ours["max_ms"],
            "bare_paced_p50_ms": bare_paced["p50_ms"], "bare_paced_p99_ms": bare_paced["p99_ms"],
            "errors": len(all_errors), "error_kinds": sorted(set(all_errors)),
            "sse_clients": args.listeners, "sse_events": len(produced), "sse_events_lost": lost,
            "sse_reconnects": len(reconnects), "submissions": sum(statuses.values()), "submit_statuses": statuses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200, help="paced clients (one connection each)")
    parser.add_argument("--listeners", type=int, default=50, help="SSE clients on the job's event stream")
    parser.add_argument("--seconds", type=float, default=20, help="length of the paced phase")
    parser.add_argument("--saturate-seconds", type=float, default=3, help="length of each saturation round")
    parser.add_argument("--rounds", type=int, default=3, help="saturation rounds of each (the best one counts)")
    parser.add_argument("--connections", type=int, default=64, help="closed-loop connections when saturating")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes of `leapfrog serve`")
    parser.add_argument("--submit-every", type=float, default=0.5, help="seconds between job submissions")
    parser.add_argument("--rows", type=int, default=500, help="metrics rows in the job's stream")
    parser.add_argument("--generator", choices=("wrk", "python"), default="wrk",
                        help="what sends the GETs: Debian's wrk in its own process (`make bench-tools`) or this "
                             "process (strict pacing from the schedule)")
    args = parser.parse_args()
    if args.generator == "wrk" and shutil.which("wrk") is None:
        parser.error("the default --generator wrk needs Debian's wrk on PATH: `make bench-tools` installs it "
                     "(or pass --generator python)")
    import uvloop

    with tempfile.TemporaryDirectory(prefix="leapfrog-load-") as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis")
        proc = None
        try:
            store = connect(redis.url)
            job = store.create("load", (ROOT / "deploy" / "jobs" / "arith.yaml").read_text(), "")
            store.transition(job["id"], "RUNNING")
            for i in range(args.rows):
                store.append(job["id"], "metrics", {"step": i, "loss": 0.1, "reward_mean": 0.5})
            port = free_port()
            env = {**os.environ, "REDIS_URL": redis.url, "RAY_ADDRESS": f"http://127.0.0.1:{free_port()}",
                   "LEAPFROG_RUNS_ROOT": str(Path(tmp) / "runs"), "LEAPFROG_ALLOWED_ROOTS": tmp}
            env.pop("LEAPFROG_API_TOKEN", None)
            command = [sys.executable, "-m", "services.cli", "serve", "--port", str(port)]
            if args.workers != 1:
                command += ["--workers", str(args.workers)]
            proc = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
            wait_up(proc, port, "/healthz")
            settle(proc)
            doc_path = Path(tmp) / "job.json"
            doc_path.write_bytes(asyncio.run(fetch(port, f"/v1/jobs/{job['id']}")))
            pids = {"server": proc.pid, "redis": redis.proc.pid}
            result = uvloop.run(measure(args, store, job["id"], port, doc_path, pids))
            result["doc_bytes"] = doc_path.stat().st_size
        finally:
            if proc is not None:
                stop(proc)
            redis.stop()
    print(f"bare endpoint {result['bare_max_rps']} req/s, ours {result['max_rps']} req/s "
          f"({args.workers} workers; ratio {result['throughput_ratio']}); paced {args.clients} clients at "
          f"{result['offered_rps']} req/s: {result['requests']} reads, p50 {result['p50_ms']} ms, p99 "
          f"{result['p99_ms']} ms; {result['errors']} errors; {args.listeners} SSE clients, {result['sse_events']} "
          f"events, {result['sse_events_lost']} lost, {result['sse_reconnects']} reconnects; "
          f"{result['submissions']} submissions {result['submit_statuses']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
