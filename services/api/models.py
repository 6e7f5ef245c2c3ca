"""The API's settings and the request / response documents (their JSON Schemas are the OpenAPI document's)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def user_code_setting(data: dict) -> bool:
    """LEAPFROG_ALLOW_USER_CODE: 1 or 0; unset, off when the server has a token (LEAPFROG_API_TOKEN), on otherwise."""
    value = os.environ.get("LEAPFROG_ALLOW_USER_CODE", "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"LEAPFROG_ALLOW_USER_CODE must be 1 (allow) or 0 (forbid), not {value!r}")
    return value == "1" if value else not data.get("token")


class Settings(BaseModel):
    """How the control plane runs (from the environment in `leapfrog serve`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    token: str | None = Field(None, description="Bearer token for mutating endpoints (LEAPFROG_API_TOKEN).")
    runs_root: Path = Field(Path("runs"), description="Where job run directories are created (LEAPFROG_RUNS_ROOT).")
    allowed_roots: list[Path] = Field(default_factory=list, description="Config paths must lie under one of these.")
    max_body: int = Field(1 << 20, description="Largest accepted request body, bytes.")
    reconcile_every: float = Field(2.0, gt=0, description="Seconds between two questions to Ray about one running "
                                                          "job, per worker (reads in between use the store).")
    allow_user_code: bool = Field(default_factory=user_code_setting, description=(
        "Accept 'module:Class' tasks and 'module:function' rewards in submissions: code of the submitter's choosing, "
        "run in the driver (LEAPFROG_ALLOW_USER_CODE=1/0; unset: off when a token is set, on otherwise)."))


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
    """The Job document of a store record (services/store.py's job hash)."""
    return Job(id=record["id"], name=record["name"], state=record["state"], run_dir=record["run_dir"],
               ray_job_id=record.get("ray_job_id", ""), error=record.get("error", ""),
               created=float(record["created"]), updated=float(record["updated"]),
               summary=json.loads(record["summary"]) if record.get("summary") else None,
               leaps={k.removeprefix("leaps_"): int(v) for k, v in record.items() if k.startswith("leaps_")},
               config=record["config"] if with_config else None)


def job_json(record: dict) -> bytes:
    """`GET /v1/jobs/{id}`'s body, serialised once (the documents cache keeps these bytes)."""
    return job_model(record, with_config=True).model_dump_json().encode()
