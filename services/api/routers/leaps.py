"""A job's leap candidates, and manual leap requests (an event the driver's leap controller sees)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException

from common.run_dir import LEAPS
from services.api.deps import JobDep, PlaneDep, require_token
from services.api.models import Accepted, LeapInfo, LeapRequest
from services.store import TERMINAL

router = APIRouter(tags=["leaps"])


@router.get("/v1/jobs/{job_id}/leaps", response_model=list[LeapInfo])
def job_leaps(record: JobDep) -> list[LeapInfo]:
    run_dir = Path(record["run_dir"] or "/nonexistent")
    out = []
    for leap in sorted((run_dir / LEAPS).glob("leap-*")):
        candidates = [json.loads(r.read_text()) | {"path": str(r.parent)} for r in sorted(leap.glob("*/report.json"))]
        out.append(LeapInfo(name=leap.name, candidates=candidates))
    return out


@router.post("/v1/jobs/{job_id}/leaps", status_code=202, response_model=Accepted,
             dependencies=[Depends(require_token)])
def request_leap(job_id: str, body: LeapRequest, record: JobDep, plane: PlaneDep) -> Accepted:
    if record["state"] in TERMINAL:
        raise HTTPException(409, f"job {job_id} is {record['state']}; it cannot leap")
    event_id = plane.store.append(job_id, "events", {"type": "leap_request", "horizon": body.horizon,
                                                     "note": body.note, "time": time.time()})
    return Accepted(id=job_id, event_id=event_id)
