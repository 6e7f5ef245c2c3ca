"""The live job page is services/static/job.html with the job id filled into its slot (a meta tag the page's
script starts from, and the title): no placeholder is left, nothing else is added per request. Real Redis."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from services.api import Settings, create_app
from services.dashboard import JOB_SLOT, live_page_template, page
from services.ray_jobs import RayJobs
from services.store import EmbeddedRedis, connect
from tests.conftest import free_port

pytestmark = pytest.mark.integration
SLOT = re.compile(r"__[A-Z]+(_[A-Z]+)*__")


def test_job_page_is_the_template_with_the_job_id_in_its_slot(tmp_path):
    redis = EmbeddedRedis(tmp_path / "redis")
    try:
        store = connect(redis.url)
        job = store.create("paged", "{}", "")
        app = create_app(store, RayJobs(f"http://127.0.0.1:{free_port()}", redis.url),
                         Settings(runs_root=tmp_path / "runs", allowed_roots=[tmp_path]))
        with TestClient(app) as client:
            res = client.get(f"/jobs/{job['id']}")
            assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
            assert res.text == live_page_template().replace(JOB_SLOT, job["id"])
            assert f'<meta name="leapfrog-job-id" content="{job["id"]}">' in res.text
            assert '<script src="/static/live.js"></script>' in res.text and not SLOT.search(res.text)
            assert client.get("/jobs/nope").status_code == 404
    finally:
        redis.stop()
    report = page("run x", "LF.render({});", inline=False)
    assert "live.js" not in report and not SLOT.search(report) and "<body>" in report
