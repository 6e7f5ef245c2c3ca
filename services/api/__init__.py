"""The control plane's REST API (FastAPI) and the dashboard it serves (docs/architecture.md#rest-api).

    POST /v1/jobs                       submit a job config (JSON, or YAML with Content-Type application/yaml)
    GET  /v1/jobs?state=&offset=&limit= list jobs, newest first
    GET  /v1/jobs/{id}                  one job (its state reconciled with Ray when not terminal)
    POST /v1/jobs/{id}/cancel           stop the Ray job; state CANCELLED
    GET  /v1/jobs/{id}/metrics|rank1    stream history, paged (?after=<cursor>&limit=&since_step=)
    GET  /v1/jobs/{id}/events           leap and lifecycle events as Server-Sent Events (Last-Event-ID resumes)
    GET  /v1/jobs/{id}/stream           metrics, rank-1 and events together as SSE (the dashboard's feed)
    GET  /v1/jobs/{id}/checkpoints      checkpoints of the run;  GET /v1/jobs/{id}/leaps  its leap candidates
    POST /v1/jobs/{id}/leaps            ask the run for a leap (an event the driver's leap controller sees)
    GET  /healthz   Redis and Ray reachable;   GET /metrics   Prometheus text
    GET  /  and /jobs/{id}              the dashboard (Plotly from the plotly wheel; no CDN)

Mutating endpoints need `Authorization: Bearer <LEAPFROG_API_TOKEN>` when a token is configured (constant-time
comparison). Bodies above `max_body` bytes get 413. Paths in a submitted config (model.path, run.runs_root) must
lie under the allowed roots (a registered model name in model.path is not a path).
"""

from __future__ import annotations

import hmac
import json
import re
import time
from pathlib import Path
from typing import Any

import yaml
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.config import JobConfig, dump_config
from services.jobs import RAY_TO_JOB_STATE, RayUnavailable
from services.store import STATES, TERMINAL, JobNotFound, TransitionError

STATIC = Path(__file__).parent / "static"


class Settings(BaseModel):
    """How the control plane runs (from the environment in `leapfrog serve`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    token: str | None = Field(None, description="Bearer token for mutating endpoints (LEAPFROG_API_TOKEN).")
    runs_root: Path = Field(Path("runs"), description="Where job run directories are created (LEAPFROG_RUNS_ROOT).")
    allowed_roots: list[Path] = Field(default_factory=list, description="Config paths must lie under one of these.")
    max_body: int = Field(1 << 20, description="Largest accepted request body, bytes.")


class Job(BaseModel):
    id: str
    name: str
    state: str
    run_dir: str
    ray_job_id: str = ""
    error: str = ""
    created: float
    updated: float
    summary: dict | None = None
    leaps: dict[str, int] = Field(default_factory=dict, description="Leap verdicts so far: paid, rolled back, "
                                                                    "rejected.")
    config: str | None = Field(None, description="The job config (YAML), on single-job reads.")


class JobPage(BaseModel):
    items: list[Job]
    total: int
    offset: int
    limit: int


class StreamItem(BaseModel):
    id: str
    data: dict[str, Any]


class StreamPage(BaseModel):
    items: list[StreamItem]
    next: str | None = Field(None, description="Cursor for the next page (pass as ?after=); null when at the end.")


class CheckpointInfo(BaseModel):
    step: int
    path: str
    meta: dict[str, Any]


class LeapInfo(BaseModel):
    name: str
    candidates: list[dict[str, Any]]


class LeapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    horizon: int | None = Field(None, ge=1, le=100_000, description="Steps to leap (default: the policy's).")
    note: str = Field("", max_length=500)


class Accepted(BaseModel):
    id: str
    event_id: str


class Health(BaseModel):
    redis: bool
    ray: bool


def job_model(record: dict, with_config: bool = False) -> Job:
    return Job(id=record["id"], name=record["name"], state=record["state"], run_dir=record["run_dir"],
               ray_job_id=record.get("ray_job_id", ""), error=record.get("error", ""),
               created=float(record["created"]), updated=float(record["updated"]),
               summary=json.loads(record["summary"]) if record.get("summary") else None,
               leaps={k.removeprefix("leaps_"): int(v) for k, v in record.items() if k.startswith("leaps_")},
               config=record["config"] if with_config else None)


class BodyLimit:
    """ASGI middleware: 413 for bodies over `limit` bytes (declared or streamed)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await JSONResponse({"detail": f"request body over {self.limit} bytes"}, 413)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        return await self.app(scope, limited, send)


def create_app(store, jobs, settings: Settings) -> FastAPI:
    """The app over a JobStore (services/store.py; its Redis also feeds the SSE readers) and a RayJobs
    (services/jobs.py)."""
    app = FastAPI(title="Leapfrog control plane", version="1.0",
                  description="RL for LLMs with rank-1 trajectory leaps: jobs, metrics, rank-1 history, events.")
    app.add_middleware(BodyLimit, limit=settings.max_body)
    roots = [Path(r).resolve() for r in settings.allowed_roots]
    runs_root = Path(settings.runs_root).resolve()

    def require_token(request: Request) -> None:
        if not settings.token:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), settings.token.encode()):
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer <LEAPFROG_API_TOKEN>)",
                                headers={"WWW-Authenticate": "Bearer"})

    def get_job(job_id: str) -> dict:
        try:
            return store.get(job_id)
        except JobNotFound:
            raise HTTPException(404, f"no job {job_id!r}") from None

    asked_ray: dict[str, float] = {}  # job id -> when its Ray job was last asked (reads poll; Ray is asked rarely)

    def reconcile(record: dict, max_age: float = 2.0) -> dict:
        """Bring a non-terminal job in line with its Ray job (the driver may have died without reporting); Ray is
        asked at most once per `max_age` seconds per job, since the driver reports its own transitions anyway."""
        if record["state"] in TERMINAL or time.monotonic() - asked_ray.get(record["id"], -1e9) < max_age:
            return record
        asked_ray[record["id"]] = time.monotonic()
        ray_job_id = record.get("ray_job_id") or f"leapfrog-{record['id']}"  # RayJobs.submit's submission id
        try:
            status, message = jobs.status(ray_job_id)
        except RayUnavailable:
            return record
        if not record.get("ray_job_id"):
            store.update(record["id"], ray_job_id=ray_job_id)
        target = RAY_TO_JOB_STATE.get(status)
        try:
            if target == "SUCCEEDED" and record["state"] == "PENDING":
                store.transition(record["id"], "RUNNING")
            if target in TERMINAL or (target == "RUNNING" and record["state"] == "PENDING"):
                fields = {"error": message[:2000]} if target == "FAILED" else {}
                return store.transition(record["id"], target, **fields)
        except TransitionError:  # the driver or a cancel moved it meanwhile: theirs stands
            pass
        return store.get(record["id"])

    def under_roots(path: Path) -> bool:
        resolved = path.expanduser().resolve()
        return any(resolved == r or r in resolved.parents for r in roots)

    app.state.reconcile_all = lambda: [reconcile(j, max_age=0) for j in store.list(offset=0, limit=10_000)[0]]

    json_schema = JobConfig.model_json_schema()

    @app.post("/v1/jobs", status_code=201, response_model=Job, dependencies=[Depends(require_token)],
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": json_schema},
                  "application/yaml": {"schema": {"type": "string"}}}}})
    async def create_job(request: Request) -> Job:
        raw = await request.body()
        try:
            if request.headers.get("content-type", "").split(";")[0].strip() in ("application/yaml", "text/yaml"):
                data = yaml.safe_load(raw.decode())
            else:
                data = json.loads(raw or b"{}")
        except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise HTTPException(422, f"the body is not a JSON or YAML job config: {err}") from None
        if not isinstance(data, dict):
            raise HTTPException(422, "the job config must be a mapping (sections model, rollout, learner, run, ...)")
        try:
            cfg = JobConfig.model_validate(data)
        except ValidationError as err:
            raise HTTPException(422, [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]}
                                      for e in err.errors(include_url=False, include_input=False)]) from None
        bad = []
        from learner.models import REGISTRY

        if cfg.model.path is not None and cfg.model.path not in REGISTRY and not under_roots(Path(cfg.model.path)):
            bad.append({"field": "model.path", "message": "must lie under an allowed root (LEAPFROG_ALLOWED_ROOTS)"})
        custom_root = cfg.run.runs_root != "runs"
        if custom_root and not under_roots(Path(cfg.run.runs_root)):
            bad.append({"field": "run.runs_root", "message": "must lie under an allowed root (LEAPFROG_ALLOWED_ROOTS)"})
        if bad:
            raise HTTPException(422, bad)
        root = Path(cfg.run.runs_root).resolve() if custom_root else runs_root
        record = store.create(cfg.run.name, dump_config(cfg), "")
        run_dir = root / record["id"]
        run_dir.mkdir(parents=True, exist_ok=False)
        config_path = run_dir / "submitted.yaml"
        config_path.write_text(dump_config(cfg))
        store.update(record["id"], run_dir=str(run_dir))
        try:
            ray_job_id = jobs.submit(record["id"], config_path, run_dir)
        except RayUnavailable as err:
            store.transition(record["id"], "FAILED", error=str(err))
            raise HTTPException(503, f"job {record['id']} recorded but not started: {err}") from None
        store.update(record["id"], ray_job_id=ray_job_id)
        return job_model(store.get(record["id"]))

    @app.get("/v1/jobs", response_model=JobPage)
    def list_jobs(state: str | None = Query(None, pattern="^(" + "|".join(STATES) + ")$"),
                  offset: int = Query(0, ge=0, le=1_000_000), limit: int = Query(50, ge=1, le=500)) -> JobPage:
        items, total = store.list(state, offset, limit)
        return JobPage(items=[job_model(r) for r in items], total=total, offset=offset, limit=limit)

    @app.get("/v1/jobs/{job_id}", response_model=Job)
    def read_job(job_id: str) -> Job:
        return job_model(reconcile(get_job(job_id)), with_config=True)

    @app.post("/v1/jobs/{job_id}/cancel", response_model=Job, dependencies=[Depends(require_token)],
              responses={409: {"description": "the job already ended"}})
    def cancel_job(job_id: str) -> Job:
        record = get_job(job_id)
        try:
            record = store.transition(job_id, "CANCELLED")
        except TransitionError as err:
            raise HTTPException(409, str(err)) from None
        if record.get("ray_job_id"):
            try:
                jobs.stop(record["ray_job_id"])
            except RayUnavailable as err:
                store.update(job_id, error=f"cancelled; stopping the Ray job failed: {err}")
        return job_model(store.get(job_id))

    def page(job_id: str, stream: str, after: str, limit: int, since_step: int | None) -> StreamPage:
        get_job(job_id)
        items = store.read(job_id, stream, after, limit)
        cursor = items[-1][0] if len(items) == limit else None
        if since_step is not None:
            items = [(sid, d) for sid, d in items if d.get("step", 0) >= since_step]
        return StreamPage(items=[StreamItem(id=sid, data=d) for sid, d in items], next=cursor)

    cursor_query = Query("0-0", pattern=r"^\d+-\d+$", description="stream id to read after (exclusive)")

    @app.get("/v1/jobs/{job_id}/metrics", response_model=StreamPage)
    def job_metrics(job_id: str, after: str = cursor_query, limit: int = Query(500, ge=1, le=5000),
                    since_step: int | None = Query(None, ge=0)) -> StreamPage:
        return page(job_id, "metrics", after, limit, since_step)

    @app.get("/v1/jobs/{job_id}/rank1", response_model=StreamPage)
    def job_rank1(job_id: str, after: str = cursor_query, limit: int = Query(100, ge=1, le=1000),
                  since_step: int | None = Query(None, ge=0)) -> StreamPage:
        return page(job_id, "rank1", after, limit, since_step)

    async def sse(request: Request, job_id: str, streams: tuple[str, ...], start: str | None):
        """Server-Sent Events over the job's streams: id = the cursors joined by '|', event = the stream name;
        a `state` event when the job's state changes; `end` once the job is terminal and drained."""
        from sse_starlette.sse import EventSourceResponse

        get_job(job_id)
        header = request.headers.get("last-event-id")
        if header is not None and not re.fullmatch(r"\d+-\d+(\|\d+-\d+)*", header):
            raise HTTPException(422, "Last-Event-ID must be an id this stream sent (stream ids like 1700000000000-0, "
                                     "joined by '|'); drop the header to start from the beginning")
        given = (header or start or "").split("|")
        cursors = {s: (given[i] if i < len(given) and given[i] else "0-0") for i, s in enumerate(streams)}
        client = store.async_client()

        async def generate():
            last_state = None
            try:
                while not await request.is_disconnected():
                    keys = {store.key(job_id, s): c for s, c in cursors.items()}
                    result = await client.xread(keys, count=200, block=1000)
                    for key, entries in result or []:
                        stream = key.decode().rsplit(":", 1)[1]
                        for sid, fields in entries:
                            cursors[stream] = sid.decode()
                            yield {"id": "|".join(cursors[s] for s in streams), "event": stream,
                                   "data": fields[b"data"].decode()}
                    state = (await client.hget(store.key(job_id), "state") or b"").decode()
                    if state != last_state:
                        last_state = state
                        yield {"event": "state", "data": json.dumps({"state": state})}
                    if state in TERMINAL and not result:
                        yield {"event": "end", "data": json.dumps({"state": state})}
                        return
            finally:
                await client.aclose()

        return EventSourceResponse(generate(), ping=15)

    sse_responses = {200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}}

    @app.get("/v1/jobs/{job_id}/events", response_class=JSONResponse, responses=sse_responses)
    async def job_events(request: Request, job_id: str, after: str | None = Query(None, pattern=r"^\d+-\d+$")):
        return await sse(request, job_id, ("events",), after)

    @app.get("/v1/jobs/{job_id}/stream", response_class=JSONResponse, responses=sse_responses)
    async def job_stream(request: Request, job_id: str,
                         after: str | None = Query(None, pattern=r"^\d+-\d+(\|\d+-\d+){2}$")):
        return await sse(request, job_id, ("metrics", "rank1", "events"), after)

    @app.get("/v1/jobs/{job_id}/checkpoints", response_model=list[CheckpointInfo])
    def job_checkpoints(job_id: str) -> list[CheckpointInfo]:
        run_dir = Path(get_job(job_id)["run_dir"] or "/nonexistent")
        out = []
        for meta_file in sorted((run_dir / "checkpoints").glob("step-*/meta.json")):
            meta = json.loads(meta_file.read_text())
            out.append(CheckpointInfo(step=meta["step"], path=str(meta_file.parent), meta=meta))
        return out

    @app.get("/v1/jobs/{job_id}/leaps", response_model=list[LeapInfo])
    def job_leaps(job_id: str) -> list[LeapInfo]:
        run_dir = Path(get_job(job_id)["run_dir"] or "/nonexistent")
        out = []
        for leap in sorted((run_dir / "leaps").glob("leap-*")):
            candidates = [json.loads(r.read_text()) | {"path": str(r.parent)} for r in sorted(leap.glob("*/report.json"))]
            out.append(LeapInfo(name=leap.name, candidates=candidates))
        return out

    @app.post("/v1/jobs/{job_id}/leaps", status_code=202, response_model=Accepted,
              dependencies=[Depends(require_token)])
    def request_leap(job_id: str, body: LeapRequest) -> Accepted:
        record = get_job(job_id)
        if record["state"] in TERMINAL:
            raise HTTPException(409, f"job {job_id} is {record['state']}; it cannot leap")
        event_id = store.append(job_id, "events", {"type": "leap_request", "horizon": body.horizon,
                                                   "note": body.note, "time": time.time()})
        return Accepted(id=job_id, event_id=event_id)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    def healthz():
        try:
            redis_ok = store.ping()
        except Exception:  # any Redis failure means unhealthy
            redis_ok = False
        health = Health(redis=redis_ok, ray=jobs.reachable())
        return JSONResponse(health.model_dump(), status_code=200 if health.redis and health.ray else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
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

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        from services.dashboard import plotly_js_path

        files = {"plotly.min.js": plotly_js_path(), "dashboard.js": STATIC / "dashboard.js",
                 "live.js": STATIC / "live.js"}
        if name not in files:
            raise HTTPException(404, "no such file")
        return FileResponse(files[name], media_type="application/javascript")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return (STATIC / "index.html").read_text()

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(job_id: str) -> str:
        from services.dashboard import page as render_page

        get_job(job_id)
        boot = f"LF.bindSlider(); LFLive.start({json.dumps(job_id)});"
        return render_page(f"job {job_id}", boot, inline=False).replace(
            '<script src="/static/dashboard.js"></script>',
            '<script src="/static/dashboard.js"></script><script src="/static/live.js"></script>')

    return app
