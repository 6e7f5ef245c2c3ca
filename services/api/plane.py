"""What the routers share: the store, the Ray jobs client, the settings, the reconcile with Ray and the cache of job
documents. One `Plane` per app (per uvicorn worker); the routers get it through `deps.PlaneDep`."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

from fastapi.concurrency import run_in_threadpool

from services.api.models import Settings, job_json
from services.ray_jobs import RAY_TO_JOB_STATE, RayUnavailable
from services.store import TERMINAL, TransitionError

log = logging.getLogger("leapfrog.api")
# How long a worker thread (a submission's validation, a fetch) may hold the interpreter before the event loop gets
# it back: Python's 5 ms default makes every request queued behind such a thread wait in steps of 5 ms.
SWITCH_INTERVAL = 0.0005
GC_THRESHOLDS = (50_000, 50, 100)  # Python's are (700, 10, 10): a request server's garbage is mostly short-lived


class JobDocuments:
    """This worker's cache of `GET /v1/jobs/{id}` bodies, kept coherent with Redis: every write to a job hash
    (services/store.py) publishes the job id on the store's change channel in the same transaction, and `follow()`
    drops that job's entry when the message arrives. Entries are kept only while the subscription is up (`live`),
    and a fetch that overlapped an invalidation of its job is not kept (`stamp`). Redis sends the message before
    the writer's own reply, so a read that follows a write (the writer got its answer, then someone asks) finds the
    entry gone. An entry older than `max_age` seconds is fetched again (Plane.cached: in the background, while it
    still answers): the backstop should a message be lost (a half-open connection to a remote Redis). Every method
    runs on the event loop (never in a worker thread), so none needs a lock."""

    def __init__(self, max_age: float = 5.0):
        self.max_age = max_age
        self.entries: dict[str, tuple[bytes, str, float, tuple]] = {}  # id -> (body, state, fetched, headers)
        self.versions: dict[str, int] = {}  # job id -> invalidations seen
        self.generation = 0  # bumped when the whole cache is dropped
        self.live = False

    def get(self, job_id: str) -> tuple[bytes, str, float, tuple] | None:
        """(JSON body, state, when fetched, ASGI response headers), or None."""
        return self.entries.get(job_id) if self.live else None

    def expired(self, entry: tuple) -> bool:
        return time.monotonic() - entry[2] > self.max_age

    def stamp(self, job_id: str) -> tuple[int, int, float]:
        """Taken before a fetch from Redis; `put` keeps the result only if no invalidation came meanwhile."""
        return self.generation, self.versions.get(job_id, 0), time.monotonic()

    def put(self, job_id: str, body: bytes, state: str, stamp: tuple[int, int, float]) -> None:
        if self.live and stamp[:2] == self.stamp(job_id)[:2]:
            headers = ((b"content-length", str(len(body)).encode()), (b"content-type", b"application/json"))
            self.entries[job_id] = (body, state, stamp[2], headers)

    def invalidate(self, job_id: str | None = None) -> None:
        if job_id is None:
            self.generation += 1
            self.entries.clear()
        else:
            self.versions[job_id] = self.versions.get(job_id, 0) + 1
            self.entries.pop(job_id, None)

    async def follow(self, store) -> None:
        """Run for the app's lifetime: subscribe to the change channel and drop entries as messages come; on a lost
        connection stop caching at once, resubscribe, start again from an empty cache (said once, not per retry)."""
        was_live = True
        while True:
            client = store.async_client()
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(store.changes)
                    async for message in pubsub.listen():
                        if message["type"] == "subscribe":
                            self.invalidate()
                            self.live = was_live = True
                        elif message["type"] == "message":
                            self.invalidate(message["data"].decode())
            except Exception as err:  # Redis went away: serve from Redis until the subscription is back
                self.live = False
                if was_live:
                    log.warning("job documents cache off until Redis answers again: %s", err)
                was_live = False
            finally:
                self.live = False
                self.invalidate()
                await client.aclose()
            await asyncio.sleep(0.5)


class Plane:
    """The control plane as the routers see it."""

    def __init__(self, store, jobs, settings: Settings):
        self.store, self.jobs, self.settings = store, jobs, settings
        self.roots = [Path(r).resolve() for r in settings.allowed_roots]
        self.runs_root = Path(settings.runs_root).resolve()
        self.documents = JobDocuments()
        self.asked_ray: dict[str, float] = {}  # job id -> when its Ray job was last asked
        self.background: set[asyncio.Task] = set()  # tasks under way (held so they are not collected)
        self.fetches: dict[str, tuple[tuple, asyncio.Task]] = {}  # job id -> (cache stamp, its fetch under way)

    def under_roots(self, path: Path) -> bool:
        resolved = path.expanduser().resolve()
        return any(resolved == r or r in resolved.parents for r in self.roots)

    def claim_reconcile(self, job_id: str, state: str) -> bool:
        """True (and the time noted) when this running job's Ray job is due to be asked again: at most once per
        `reconcile_every` seconds per job, since the driver reports its own transitions anyway."""
        now = time.monotonic()
        if state in TERMINAL or now - self.asked_ray.get(job_id, -1e9) < self.settings.reconcile_every:
            return False
        self.asked_ray[job_id] = now
        return True

    def reconcile(self, record: dict) -> dict:
        """Bring a non-terminal job in line with its Ray job (the driver may have died without reporting).
        Blocking (Ray's HTTP API): call it from a worker thread."""
        if record["state"] in TERMINAL:
            return record
        self.asked_ray[record["id"]] = time.monotonic()
        ray_job_id = record.get("ray_job_id") or f"leapfrog-{record['id']}"  # RayJobs.submit's submission id
        try:
            status, message = self.jobs.status(ray_job_id)
        except RayUnavailable:
            return record
        if not record.get("ray_job_id"):
            self.store.update(record["id"], ray_job_id=ray_job_id)
        target = RAY_TO_JOB_STATE.get(status)
        try:
            if target == "SUCCEEDED" and record["state"] == "PENDING":
                self.store.transition(record["id"], "RUNNING")
            if target in TERMINAL or (target == "RUNNING" and record["state"] == "PENDING"):
                fields = {"error": message[:2000]} if target == "FAILED" else {}
                return self.store.transition(record["id"], target, **fields)
        except TransitionError:  # the driver or a cancel moved it meanwhile: theirs stands
            pass
        return self.store.get(record["id"])

    def reconcile_all(self) -> list[dict]:
        """Every job in line with Ray now (a control plane starting up after a pause)."""
        return [self.reconcile(j) for j in self.store.list(offset=0, limit=10_000)[0]]

    def fetch_document(self, job_id: str) -> tuple[bytes, str]:
        """(`GET /v1/jobs/{id}` body, state) from Redis. Blocking: call it from a worker thread. JobNotFound when
        there is no such job."""
        record = self.store.get(job_id)
        return job_json(record), record["state"]

    async def document(self, job_id: str) -> bytes:
        """`GET /v1/jobs/{id}`'s body: from the cache, else from Redis (in the threadpool, then cached); a running
        job's Ray job is asked in the background when due, so a read never waits for Ray. Misses of one job share
        one fetch (when the cache entry expires under load, hundreds of reads would otherwise each queue a fetch in
        the threadpool); a read joins a fetch only if no invalidation of the job came since it started."""
        hit = self.cached(job_id)
        if hit is not None:
            body, state = hit[:2]
        else:
            body, state = await asyncio.shield(self.fetch(job_id))
        self.reconcile_later(job_id, state)
        return body

    def cached(self, job_id: str) -> tuple[bytes, str, float, tuple] | None:
        """The cache entry to answer with, or None. One past `max_age` still answers while a fetch refreshes it in
        the background (no read waits for that refresh), so an answer is at most max_age + one fetch old."""
        entry = self.documents.get(job_id)
        if entry is not None and self.documents.expired(entry) and job_id not in self.fetches:
            self.fetch(job_id).add_done_callback(lambda task: task.cancelled() or task.exception())  # retrieved
        return entry

    def fetch(self, job_id: str) -> asyncio.Task:
        """The fetch of this job from Redis under way, joined if no invalidation came since it started, else a new
        one (its result is cached)."""
        stamp = self.documents.stamp(job_id)
        flight = self.fetches.get(job_id)
        if flight is None or flight[0] != stamp[:2]:
            flight = (stamp[:2], asyncio.get_running_loop().create_task(self._fetch(job_id, stamp)))
            self.fetches[job_id] = flight

            def landed(_, flight=flight):
                if self.fetches.get(job_id) is flight:
                    del self.fetches[job_id]

            flight[1].add_done_callback(landed)
        return flight[1]

    async def _fetch(self, job_id: str, stamp: tuple) -> tuple[bytes, str]:
        body, state = await run_in_threadpool(self.fetch_document, job_id)
        self.documents.put(job_id, body, state, stamp)
        return body, state

    def reconcile_later(self, job_id: str, state: str) -> None:
        """On the event loop: when this job is due (`claim_reconcile`), reconcile it in a worker thread in the
        background; its writes reach the cache through the change channel."""
        if self.claim_reconcile(job_id, state):
            self.in_background(self._reconcile(job_id))

    def in_background(self, coroutine) -> None:
        """Run `coroutine` on the event loop without waiting for it (the task is held until it ends)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def warm_up(self) -> None:
        """Load at startup what a request would otherwise load while others wait: the task, algorithm and dataset
        modules of the submission checks (seconds; one default job checked) and Ray's job SDK (the first reconcile
        imported it: 0.9 s holding the interpreter while cached reads queued). Then move everything loaded so far
        out of the garbage collector's sight (gc.freeze) and collect far less often (GC_THRESHOLDS): with SSE
        streams open, full collections every 2-3 s held the loop 10-100 ms. Blocking: runs in a worker thread at
        startup."""
        import gc

        from services.checks import check_job
        from services.config import JobConfig

        try:
            import ray.job_submission  # noqa: F401

            check_job(JobConfig(), "forbidden")
        except Exception as err:  # a warm-up: the first submission then reports whatever this is
            log.warning("warming up the submission checks failed: %s", err)
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        sys.setswitchinterval(SWITCH_INTERVAL)

    async def _reconcile(self, job_id: str) -> None:
        try:
            await run_in_threadpool(lambda: self.reconcile(self.store.get(job_id)))
        except Exception as err:  # a background task: log, the next due read tries again
            log.warning("reconciling job %s with Ray failed: %s", job_id, err)
