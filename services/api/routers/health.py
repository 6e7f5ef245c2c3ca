"""`/healthz` (Redis and Ray reachable) and `/metrics` (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from services.api.deps import PlaneDep
from services.api.models import Health
from services.store import STATES

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(plane: PlaneDep):
    try:
        redis_ok = plane.store.ping()
    except Exception:  # any Redis failure means unhealthy
        redis_ok = False
    health = Health(redis=redis_ok, ray=plane.jobs.reachable())
    return JSONResponse(health.model_dump(), status_code=200 if health.redis and health.ray else 503)


@router.get("/metrics", response_class=PlainTextResponse)
def prometheus(plane: PlaneDep) -> str:
    store = plane.store
    records = store.list(offset=0, limit=100_000)[0]
    lines = ["# HELP leapfrog_jobs Jobs by state.", "# TYPE leapfrog_jobs gauge"]
    lines += [f'leapfrog_jobs{{state="{s}"}} {sum(r["state"] == s for r in records)}' for s in STATES]
    lines += ["# HELP leapfrog_job_step Latest trajectory step of a running job.", "# TYPE leapfrog_job_step gauge",
              "# HELP leapfrog_rollout_tokens_per_second Completion tokens per second of the latest step.",
              "# TYPE leapfrog_rollout_tokens_per_second gauge",
              "# HELP leapfrog_leaps_total Leap verdicts.", "# TYPE leapfrog_leaps_total counter"]
    for r in records:
        label = f'job="{r["id"]}"'
        for verdict in ("paid", "rolled_back", "rejected"):
            lines.append(f'leapfrog_leaps_total{{{label},verdict="{verdict}"}} {int(r.get("leaps_" + verdict, 0))}')
        if r["state"] != "RUNNING":
            continue
        last = store.last(r["id"], "metrics") or {}
        if "step" in last:
            lines.append(f"leapfrog_job_step{{{label}}} {last['step']}")
        if last.get("step_s") and "completion_tokens" in last:
            lines.append(f"leapfrog_rollout_tokens_per_second{{{label}}} "
                         f"{last['completion_tokens'] / last['step_s']:.1f}")
    return "\n".join(lines) + "\n"
