"""Submissions are checked before a job is recorded, against a real control plane with a token (Redis, Ray head):
an unknown task, `os:system`, a bad model path or a dataset outside the roots answer 422 naming the field and
create no job; user code is refused unimported when the server forbids it (the default with a token) and accepted
(201) when LEAPFROG_ALLOW_USER_CODE allows it; `leapfrog submit` prints the fields."""

from __future__ import annotations

import httpx
import pytest

from services.api import Settings, create_app
from services.cli import main
from services.ray_jobs import RayJobs
from services.store import EmbeddedRedis, connect
from tests.conftest import free_port
from tests.integration.control_plane import LiveServer

pytestmark = pytest.mark.integration
TOKEN = "checks-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/yaml"}
USER_TASK = "tests.integration.user_code:Sums3"


@pytest.fixture(scope="module")
def planes(ray_head, default_model_dir, tmp_path_factory):
    """Two control planes over one Redis and Ray head, both with a token: one with the default (user code
    forbidden), one with LEAPFROG_ALLOW_USER_CODE=1."""
    root = tmp_path_factory.mktemp("checks")
    redis = EmbeddedRedis(root / "redis")
    store = connect(redis.url)
    jobs = RayJobs(ray_head["RAY_ADDRESS"], redis.url)
    roots = [root, default_model_dir.parent]
    forbids = Settings(token=TOKEN, runs_root=root / "forbids", allowed_roots=roots)
    assert not forbids.allow_user_code  # the default with a token
    allows = Settings(token=TOKEN, runs_root=root / "allows", allowed_roots=roots, allow_user_code=True)
    servers = {name: LiveServer(create_app(store, jobs, settings), free_port())
               for name, settings in (("forbids", forbids), ("allows", allows))}
    yield {"store": store, "root": root, "model": default_model_dir, **{k: s.url for k, s in servers.items()}}
    for server in servers.values():
        server.stop()
    redis.stop()


def post(url: str, body: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/jobs", content=body, headers=AUTH, timeout=120)


def job(model, task: str = "arith", extra: str = "") -> str:
    return (f"model:\n  path: {model}\nrollout:\n  task: {task}\n  worker_cpus: 0.5\nlearner:\n  num_cpus: 0.5\n"
            f"run:\n  steps: 1\n{extra}")


def refused(res: httpx.Response) -> dict[str, str]:
    assert res.status_code == 422, res.text
    return {d["field"]: d["message"] for d in res.json()["detail"]}


def test_what_fails_in_the_driver_today_is_refused_at_submission(planes, tmp_path):
    before = planes["store"].list(limit=500)[1]
    for url in (planes["forbids"], planes["allows"]):
        assert "unknown task 'nosuch'" in refused(post(url, job(planes["model"], "nosuch")))["rollout.task"]
        found = refused(post(url, "rollout:\n  task: os:system\n"))
        assert "model.path" in found  # a user task has no bootstrapped default model
        assert ("LEAPFROG_ALLOW_USER_CODE" if url == planes["forbids"] else "lacks 'name'") in found["rollout.task"]
        missing = planes["root"] / "no-such-model"
        assert "neither an existing path" in refused(post(url, job(missing)))["model.path"]
        outside = job(planes["model"], "dataset", f"data:\n  path: {tmp_path}/rows.jsonl\n  prompt_key: q\n"
                                                  f"rewards:\n  - fn: math_accuracy\n")
        assert "allowed root" in refused(post(url, outside))["data.path"]
        assert "unknown reward" in refused(post(url, job(planes["model"], extra="rewards:\n  - fn: nosuch\n")))[
            "rewards[0].fn"]
    assert planes["store"].list(limit=500)[1] == before  # no job recorded
    assert not any(p.is_dir() and any(p.iterdir()) for p in (planes["root"] / "forbids", planes["root"] / "allows")
                   if p.exists())


def test_user_code_is_forbidden_or_allowed_by_the_setting(planes):
    body = job(planes["model"], USER_TASK, "rewards:\n  - fn: tests.integration.user_code:exact\n")
    found = refused(post(planes["forbids"], body))
    assert set(found) == {"rollout.task", "rewards[0].fn"}
    assert all("LEAPFROG_ALLOW_USER_CODE=1" in m for m in found.values())
    res = post(planes["allows"], body)
    assert res.status_code == 201, res.text
    cancel = httpx.post(f"{planes['allows']}/v1/jobs/{res.json()['id']}/cancel", headers=AUTH, timeout=60)
    assert cancel.status_code in (200, 409)  # stopped (or, on a fast machine, already ended)
    bad = job(planes["model"], "tests.integration.user_code:NoSuchClass")
    assert "has no attribute 'NoSuchClass'" in refused(post(planes["allows"], bad))["rollout.task"]


def test_leapfrog_submit_prints_each_field(planes, tmp_path, monkeypatch, capsys):
    config = tmp_path / "job.yaml"
    config.write_text(job(planes["model"], "nosuch"))
    monkeypatch.setenv("LEAPFROG_API_TOKEN", TOKEN)
    assert main(["submit", str(config), "--server", planes["forbids"]]) == 2
    assert "(422): rollout.task: unknown task 'nosuch'" in capsys.readouterr().err
