"""The dashboard: the jobs list, the live job page (services/static/job.html with the job id filled into its slot)
and the scripts they load (Plotly from the plotly wheel: no CDN)."""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

from services.api.deps import JobDep

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).resolve().parents[2] / "static"


@cache
def scripts() -> dict[str, Path]:
    from services.dashboard import plotly_js_path

    return {"plotly.min.js": plotly_js_path(), "dashboard.js": STATIC / "dashboard.js", "live.js": STATIC / "live.js"}


@cache
def live_template() -> str:
    from services.dashboard import live_page_template

    return live_page_template()


@router.get("/static/{name}")
def static(name: str):
    if name not in scripts():
        raise HTTPException(404, "no such file")
    return FileResponse(scripts()[name], media_type="application/javascript")


@router.get("/", response_class=HTMLResponse)
def index() -> str:
    return (STATIC / "index.html").read_text()


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(record: JobDep) -> str:
    from services.dashboard import JOB_SLOT

    return live_template().replace(JOB_SLOT, html.escape(record["id"]))
