"""What the routers share: the store, the Ray jobs client, the settings, the reconcile with Ray and the cache of job
documents. One `Plane` per app (per uvicorn worker); the routers get it through `deps.PlaneDep`."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from services.api.models import Settings, job_json
from services.jobs import RAY_TO_JOB_STATE, RayUnavailable
from services.store import TERMINAL, TransitionError

log = logging.getLogger("leapfrog.api")


class JobDocuments:
    """This worker's cache of `GET /v1/jobs/{id}` bodies, kept coherent with Redis: every write to a job hash
    (services/store.py) publishes the job id on the store's change channel in the same transaction, and `follow()`
    drops that job's entry when the message arrives. Entries are only kept while the subscription is up (`live`);
    a fetch that raced with an invalidation is not cached (`epoch`). So a read shows every write whose message this
    worker has received: on loopback that is before the writer's own reply could reach a client and come back.
    get / put / invalidate run on the event loop (never from a worker thread), so they need no lock."""

    def __init__(self):
        self.entries: dict[str, tuple[bytes, str]] = {}  # job id -> (JSON body, state)
        self.epoch = 0  # bumped by every invalidation
        self.live = False

    def get(self, job_id: str) -> tuple[bytes, str] | None:
        return self.entries.get(job_id) if self.live else None

    def put(self, job_id: str, body: bytes, state: str, epoch: int) -> None:
        if self.live and epoch == self.epoch:
            self.entries[job_id] = (body, state)

    def invalidate(self, job_id: str | None = None) -> None:
        self.epoch += 1
        if job_id is None:
            self.entries.clear()
        else:
            self.entries.pop(job_id, None)

    async def follow(self, store) -> None:
        """Run for the app's lifetime: subscribe to the change channel, drop entries as messages come; on a lost
        connection stop caching, resubscribe and start from an empty cache."""
        while True:
            client = store.async_client()
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(store.changes)
                    async for message in pubsub.listen():
                        if message["type"] == "subscribe":
                            self.invalidate()
                            self.live = True
                        elif message["type"] == "message":
                            self.invalidate(message["data"].decode())
            except asyncio.CancelledError:
                raise
            except Exception as err:  # Redis went away: serve from Redis until the subscription is back
                log.warning("job cache off until Redis answers again: %s", err)
                await asyncio.sleep(0.5)
            finally:
                self.live = False
                self.invalidate()
                await client.aclose()


class Plane:
    """The control plane as the routers see it."""

    def __init__(self, store, jobs, settings: Settings):
        self.store, self.jobs, self.settings = store, jobs, settings
        self.roots = [Path(r).resolve() for r in settings.allowed_roots]
        self.runs_root = Path(settings.runs_root).resolve()
        self.documents = JobDocuments()
        self.asked_ray: dict[str, float] = {}  # job id -> when its Ray job was last asked

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

    def fetch_document(self, job_id: str, ask_ray: bool | None = None) -> tuple[bytes, str]:
        """(`GET /v1/jobs/{id}` body, state) from Redis, reconciled with Ray when `ask_ray` (None: when due).
        Blocking: call it from a worker thread. JobNotFound when there is no such job."""
        record = self.store.get(job_id)
        if ask_ray or (ask_ray is None and self.claim_reconcile(job_id, record["state"])):
            record = self.reconcile(record)
        return job_json(record), record["state"]

