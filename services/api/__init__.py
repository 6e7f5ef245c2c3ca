"""The control plane's REST API (FastAPI) and the dashboard it serves (docs/architecture.md#rest-api).

    POST /v1/jobs                       submit a job config (JSON, or YAML with Content-Type application/yaml)
    GET  /v1/jobs?state=&offset=&limit= list jobs, newest first
    GET  /v1/jobs/{id}                  one job (its state reconciled with Ray when not terminal)
    POST /v1/jobs/{id}/cancel           stop the Ray job; state CANCELLED
    GET  /v1/jobs/{id}/metrics|rank1|samples   stream history, paged (?after=<cursor>&limit=&since_step=)
    GET  /v1/jobs/{id}/events           leap and lifecycle events as Server-Sent Events (Last-Event-ID resumes)
    GET  /v1/jobs/{id}/stream           metrics, rank-1, events and samples together as SSE (the dashboard's feed)
    GET  /v1/jobs/{id}/checkpoints      checkpoints of the run;  GET /v1/jobs/{id}/leaps  its leap candidates
    POST /v1/jobs/{id}/leaps            ask the run for a leap (an event the driver's leap controller sees)
    GET  /healthz   Redis and Ray reachable;   GET /metrics   Prometheus text
    GET  /  and /jobs/{id}              the dashboard (Plotly from the plotly wheel; no CDN)

Layout: `routers/` holds one APIRouter per concern (jobs, streams, leaps, health, pages); `plane.Plane` is what
they share (store, Ray jobs client, settings, the reconcile with Ray, the cache of job documents), injected with
`Depends` (`deps.py`: the plane, the bearer token, an existing job). No handler blocks the event loop: `def` routes
run in the threadpool, `async def` ones await (redis.asyncio for the SSE streams, `run_in_threadpool` for
submissions and cache misses).

Mutating endpoints need `Authorization: Bearer <LEAPFROG_API_TOKEN>` when a token is configured (constant-time
comparison). Bodies above `max_body` bytes get 413. Paths in a submitted config (model.path, run.runs_root) must
lie under the allowed roots (a registered model name in model.path is not a path).
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from services.api.deps import BodyLimit, CachedJobReads
from services.api.models import Settings
from services.api.plane import Plane
from services.api.routers import health, jobs, leaps, pages, streams

__all__ = ["Settings", "create_app"]


class ControlPlaneApp(FastAPI):
    """FastAPI with the job documents cache in front of its whole middleware stack: a cached `GET /v1/jobs/{id}`
    (the hot read of every dashboard) costs about what a bare ASGI endpoint does (bench/api_load.py)."""

    def build_middleware_stack(self):
        return CachedJobReads(super().build_middleware_stack(), self.state.plane)


def create_app(store, jobs_client, settings: Settings, warm: bool = False) -> FastAPI:
    """The app over a JobStore (services/store.py; its Redis also feeds the SSE readers and the documents cache)
    and a RayJobs (services/ray_jobs.py). `app.state.reconcile_all()` brings every job in line with Ray. `warm`: at
    startup, load in the background what the first submission's checks would (`leapfrog serve` does)."""
    plane = Plane(store, jobs_client, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        follower = asyncio.create_task(plane.documents.follow(store))
        if warm:
            plane.in_background(run_in_threadpool(plane.warm_up))
        try:
            yield
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    app = ControlPlaneApp(title="Leapfrog control plane", version="1.0", lifespan=lifespan,
                          description="RL for LLMs with rank-1 trajectory leaps: jobs, metrics, rank-1 history, "
                                      "events.")
    app.add_middleware(BodyLimit, limit=settings.max_body)
    app.state.plane = plane
    app.state.reconcile_all = plane.reconcile_all
    for module in (jobs, streams, leaps, health, pages):
        app.include_router(module.router)
    return app
