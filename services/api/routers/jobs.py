"""Jobs: submit, list, read, cancel; their metrics, rank-1 and samples history (paged) and checkpoints."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import yaml
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from common.run_dir import CHECKPOINTS
from services.api.deps import JobDep, PlaneDep, require_token
from services.api.models import CheckpointInfo, Job, JobPage, StreamItem, StreamPage, job_model
from services.api.plane import Plane
from services.checks import JobCheckError, split_field
from services.config import JobConfig, dump_config
from services.prepare import prepare_job
from services.ray_jobs import RayUnavailable
from services.store import STATES, JobNotFound, TransitionError

router = APIRouter(tags=["jobs"])


@router.get("/v1/jobs/{job_id}", response_model=Job)
async def read_job(job_id: str, plane: PlaneDep):
    """One job; a running job's state is reconciled with Ray at most every `reconcile_every` s (in the background).
    The hot read of every dashboard: cache hits are answered by deps.CachedJobReads before the router, the rest
    here."""
    try:
        return Response(await plane.document(job_id), media_type="application/json")
    except JobNotFound:
        raise HTTPException(404, f"no job {job_id!r}") from None


def parse_job(plane: Plane, raw: bytes, content_type: str) -> JobConfig:
    """The submitted config, validated, with its paths under the allowed roots, then checked as `leapfrog run`
    checks it (services/checks.py; user code imported in a subprocess when the server allows it, refused unimported
    when not); 422 naming each bad field. Blocking (the checks read the dataset): runs in the threadpool."""
    try:
        if content_type in ("application/yaml", "text/yaml"):
            data = yaml.safe_load(raw.decode())
        else:
            data = json.loads(raw or b"{}")
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HTTPException(422, f"the body is not a JSON or YAML job config: {err}") from None
    if not isinstance(data, dict):
        raise HTTPException(422, "the job config must be a mapping (sections model, rollout, learner, run, ...)")
    try:
        cfg = JobConfig.model_validate(data)
    except ValidationError as err:  # a rule across sections has no loc: its message starts with its field
        raise HTTPException(422, [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} if e["loc"] else
                                  asdict(split_field(e["msg"].removeprefix("Value error, "), "(job)"))
                                  for e in err.errors(include_url=False, include_input=False)]) from None
    from learner.models import REGISTRY

    bad = []
    if cfg.model.path is not None and cfg.model.path not in REGISTRY and not plane.under_roots(Path(cfg.model.path)):
        bad.append({"field": "model.path", "message": "must lie under an allowed root (LEAPFROG_ALLOWED_ROOTS)"})
    if cfg.run.runs_root != "runs" and not plane.under_roots(Path(cfg.run.runs_root)):
        bad.append({"field": "run.runs_root", "message": "must lie under an allowed root (LEAPFROG_ALLOWED_ROOTS)"})
    if cfg.data is not None and not plane.under_roots(Path(cfg.data.path)):
        bad.append({"field": "data.path", "message": "must lie under an allowed root (LEAPFROG_ALLOWED_ROOTS)"})
    if bad:  # nothing else is looked at (no probing of paths outside the roots)
        raise HTTPException(422, bad)
    try:  # the static stage of the job's preparation (services/prepare.py); the driver runs every stage
        prepare_job(cfg, "POST /v1/jobs", through="static",
                    user_code_mode="subprocess" if plane.settings.allow_user_code else "forbidden")
    except JobCheckError as err:
        raise HTTPException(422, [asdict(p) for p in err.problems]) from None
    return cfg


def submit_job(plane: Plane, raw: bytes, content_type: str) -> Job:
    """Validate, record, write the run directory, submit to Ray. Blocking (YAML parsing, Redis, the Ray Jobs API):
    runs in the threadpool."""
    cfg = parse_job(plane, raw, content_type)
    store = plane.store
    root = Path(cfg.run.runs_root).resolve() if cfg.run.runs_root != "runs" else plane.runs_root
    config_yaml = dump_config(cfg)
    record = store.create(cfg.run.name, config_yaml, "")
    run_dir = root / record["id"]
    run_dir.mkdir(parents=True, exist_ok=False)
    config_path = run_dir / "submitted.yaml"
    config_path.write_text(config_yaml)
    store.update(record["id"], run_dir=str(run_dir))
    try:
        ray_job_id = plane.jobs.submit(record["id"], config_path, run_dir)
    except RayUnavailable as err:
        store.transition(record["id"], "FAILED", error=str(err))
        raise HTTPException(503, f"job {record['id']} recorded but not started: {err}") from None
    store.update(record["id"], ray_job_id=ray_job_id)
    return job_model(store.get(record["id"]))


@router.post("/v1/jobs", status_code=201, response_model=Job, dependencies=[Depends(require_token)],
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": JobConfig.model_json_schema()},
                 "application/yaml": {"schema": {"type": "string"}}}}})
async def create_job(request: Request, plane: PlaneDep) -> Job:
    raw = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    return await run_in_threadpool(submit_job, plane, raw, content_type)


@router.get("/v1/jobs", response_model=JobPage)
def list_jobs(plane: PlaneDep, state: str | None = Query(None, pattern="^(" + "|".join(STATES) + ")$"),
              offset: int = Query(0, ge=0, le=1_000_000), limit: int = Query(50, ge=1, le=500)) -> JobPage:
    items, total = plane.store.list(state, offset, limit)
    return JobPage(items=[job_model(r) for r in items], total=total, offset=offset, limit=limit)


def cancel(plane: Plane, job_id: str) -> Job:
    """Blocking (Redis, the Ray Jobs API): runs in the threadpool."""
    try:
        record = plane.store.transition(job_id, "CANCELLED")
    except JobNotFound:
        raise HTTPException(404, f"no job {job_id!r}") from None
    except TransitionError as err:
        raise HTTPException(409, str(err)) from None
    if record.get("ray_job_id"):
        try:
            plane.jobs.stop(record["ray_job_id"])
        except RayUnavailable as err:
            plane.store.update(job_id, error=f"cancelled; stopping the Ray job failed: {err}")
    return job_model(plane.store.get(job_id))


@router.post("/v1/jobs/{job_id}/cancel", response_model=Job, dependencies=[Depends(require_token)],
             responses={409: {"description": "the job already ended"}})
async def cancel_job(job_id: str, plane: PlaneDep) -> Job:
    try:
        return await run_in_threadpool(cancel, plane, job_id)
    finally:  # this worker's next read shows the cancel at once, before the change message arrives
        plane.documents.invalidate(job_id)


def page(plane: Plane, job_id: str, stream: str, after: str, limit: int, since_step: int | None) -> StreamPage:
    items = plane.store.read(job_id, stream, after, limit)
    cursor = items[-1][0] if len(items) == limit else None
    if since_step is not None:
        items = [(sid, d) for sid, d in items if d.get("step", 0) >= since_step]
    return StreamPage(items=[StreamItem(id=sid, data=d) for sid, d in items], next=cursor)


cursor_query = Query("0-0", pattern=r"^\d+-\d+$", description="stream id to read after (exclusive)")


@router.get("/v1/jobs/{job_id}/metrics", response_model=StreamPage)
def job_metrics(job_id: str, record: JobDep, plane: PlaneDep, after: str = cursor_query,
                limit: int = Query(500, ge=1, le=5000), since_step: int | None = Query(None, ge=0)) -> StreamPage:
    return page(plane, job_id, "metrics", after, limit, since_step)


@router.get("/v1/jobs/{job_id}/rank1", response_model=StreamPage)
def job_rank1(job_id: str, record: JobDep, plane: PlaneDep, after: str = cursor_query,
              limit: int = Query(100, ge=1, le=1000), since_step: int | None = Query(None, ge=0)) -> StreamPage:
    return page(plane, job_id, "rank1", after, limit, since_step)


@router.get("/v1/jobs/{job_id}/samples", response_model=StreamPage)
def job_samples(job_id: str, record: JobDep, plane: PlaneDep, after: str = cursor_query,
                limit: int = Query(200, ge=1, le=2000), since_step: int | None = Query(None, ge=0)) -> StreamPage:
    """Completions sampled at the evaluations: {step, prompt, completion, answer, rewards: {name: value}, reward}."""
    return page(plane, job_id, "samples", after, limit, since_step)


@router.get("/v1/jobs/{job_id}/checkpoints", response_model=list[CheckpointInfo])
def job_checkpoints(record: JobDep) -> list[CheckpointInfo]:
    run_dir = Path(record["run_dir"] or "/nonexistent")
    out = []
    for meta_file in sorted((run_dir / CHECKPOINTS).glob("step-*/meta.json")):
        meta = json.loads(meta_file.read_text())
        out.append(CheckpointInfo(step=meta["step"], path=str(meta_file.parent), meta=meta))
    return out
