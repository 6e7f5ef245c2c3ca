"""The control plane through its REST API, against a real Redis server and a real Ray head (no mocks): jobs
submitted over REST run on Ray and report back; validation, auth, size limits and path roots; SSE with resume;
cancel; a control-plane restart mid-job loses nothing; Prometheus metrics; a bounded concurrent load."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from services.api import Settings, create_app
from services.ray_jobs import RayJobs
from services.store import EmbeddedRedis, connect
from tests.conftest import free_port
from tests.integration.control_plane import LiveServer, wait_for_state

pytestmark = pytest.mark.integration
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def plane(ray_head, default_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("plane")
    redis = EmbeddedRedis(root / "redis")
    settings = Settings(token=TOKEN, runs_root=root / "runs", allowed_roots=[root, default_model_dir.parent])
    store = connect(redis.url)
    jobs = RayJobs(ray_head["RAY_ADDRESS"], redis.url)
    server = LiveServer(create_app(store, jobs, settings), free_port())
    plane = {"url": server.url, "store": store, "jobs": jobs, "settings": settings, "redis": redis, "server": server,
             "model": default_model_dir}
    yield plane
    plane["server"].stop()  # the restart test replaces it
    redis.stop()


def job_yaml(model_dir, steps: int, name: str = "apitest") -> str:
    return (f"model:\n  path: {model_dir}\nrollout:\n  prompts_per_step: 8\n  group_size: 4\n  eval_size: 32\n"
            f"  worker_cpus: 0.5\nlearner:\n  num_cpus: 0.5\nrun:\n  name: {name}\n  steps: {steps}\n"
            f"  checkpoint_every: 2\n  eval_every: 2\n")


def submit(plane, body: str, headers=AUTH):
    return httpx.post(f"{plane['url']}/v1/jobs", content=body, timeout=60,
                      headers={**headers, "Content-Type": "application/yaml"})


def test_bad_requests_get_clear_errors(plane):
    url = plane["url"]
    res = httpx.post(f"{url}/v1/jobs", json={"rollout": {"group_size": 1}, "run": {"stepz": 3}}, headers=AUTH)
    assert res.status_code == 422
    fields = {d["field"] for d in res.json()["detail"]}
    assert {"rollout.group_size", "run.stepz"} <= fields
    assert submit(plane, "model: [unclosed").status_code == 422
    assert submit(plane, job_yaml(plane["model"], 2), headers={}).status_code == 401
    wrong = submit(plane, job_yaml(plane["model"], 2), headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and TOKEN not in wrong.text
    huge = httpx.post(f"{url}/v1/jobs", content=b"x" * (2 << 20), headers={**AUTH, "Content-Type": "application/yaml"})
    assert huge.status_code == 413
    escape = submit(plane, job_yaml("/tmp/../etc", 2))
    assert escape.status_code == 422 and escape.json()["detail"][0]["field"] == "model.path"
    outside = submit(plane, job_yaml(plane["model"], 2) + "  runs_root: /etc/leapfrog\n")
    assert outside.status_code == 422 and outside.json()["detail"][0]["field"] == "run.runs_root"
    assert httpx.get(f"{url}/v1/jobs/nope").status_code == 404
    assert httpx.get(f"{url}/v1/jobs", params={"state": "DONE"}).status_code == 422
    assert httpx.post(f"{url}/v1/jobs/nope/cancel", headers=AUTH).status_code == 404


def test_job_runs_on_ray_and_reports_back(plane):
    url = plane["url"]
    res = submit(plane, job_yaml(plane["model"], 4))
    assert res.status_code == 201, res.text
    job_id = res.json()["id"]
    assert res.json()["state"] == "PENDING" and res.json()["ray_job_id"]
    job = wait_for_state(url, job_id, {"SUCCEEDED", "FAILED"})
    assert job["state"] == "SUCCEEDED", job["error"]
    assert job["summary"]["steps"] == 4 and 0 <= job["summary"]["acc_after"] <= 1
    page = httpx.get(f"{url}/v1/jobs/{job_id}/metrics", params={"limit": 3}).json()
    assert len(page["items"]) == 3 and page["next"] == page["items"][-1]["id"]
    rest = httpx.get(f"{url}/v1/jobs/{job_id}/metrics", params={"after": page["next"], "limit": 1000}).json()
    steps = [i["data"]["step"] for i in page["items"] + rest["items"] if "loss" in i["data"]]
    assert steps == [1, 2, 3, 4] and rest["next"] is None
    late = httpx.get(f"{url}/v1/jobs/{job_id}/metrics", params={"since_step": 3, "limit": 1000}).json()
    assert all(i["data"]["step"] >= 3 for i in late["items"])
    rank1 = httpx.get(f"{url}/v1/jobs/{job_id}/rank1").json()["items"]
    assert [r["data"]["step"] for r in rank1 if r["data"]["rows"]] == [4]  # from the second checkpoint on
    assert [c["step"] for c in httpx.get(f"{url}/v1/jobs/{job_id}/checkpoints").json()] == [2, 4]
    listed = httpx.get(f"{url}/v1/jobs", params={"state": "SUCCEEDED"}).json()
    assert job_id in [j["id"] for j in listed["items"]]
    assert httpx.post(f"{url}/v1/jobs/{job_id}/cancel", headers=AUTH).status_code == 409  # already ended
    text = httpx.get(f"{url}/metrics").text
    assert 'leapfrog_jobs{state="SUCCEEDED"}' in text and "# TYPE leapfrog_leaps_total counter" in text
    health = httpx.get(f"{url}/healthz")
    assert health.status_code == 200 and health.json() == {"redis": True, "ray": True}


def sse_events(url: str, headers: dict | None = None, limit: int = 100, timeout: float = 30) -> list[dict]:
    """Read SSE messages (id, event, data) until `limit` or the stream ends."""
    out, current = [], {}
    with httpx.stream("GET", url, headers=headers or {}, timeout=timeout) as res:
        assert res.status_code == 200 and res.headers["content-type"].startswith("text/event-stream")
        for line in res.iter_lines():
            if not line:
                if current.get("data") is not None:
                    out.append(current)
                    if len(out) >= limit:
                        break
                current = {}
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            current[key] = value.strip()
    return out


def test_sse_events_resume_with_last_event_id(plane):
    store, url = plane["store"], plane["url"]
    job = store.create("sse", "{}", "")
    for i in range(3):
        store.append(job["id"], "events", {"type": "leap_paid", "step": i})
    store.transition(job["id"], "RUNNING")
    store.transition(job["id"], "SUCCEEDED")
    events = sse_events(f"{url}/v1/jobs/{job['id']}/events")
    leaps = [e for e in events if e["event"] == "events"]
    assert [json.loads(e["data"])["step"] for e in leaps] == [0, 1, 2] and events[-1]["event"] == "end"
    resumed = sse_events(f"{url}/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": leaps[0]["id"]})
    assert [json.loads(e["data"])["step"] for e in resumed if e["event"] == "events"] == [1, 2]


def test_cancel_and_restart_mid_job_lose_nothing(plane, tmp_path):
    url, store = plane["url"], plane["store"]
    res = submit(plane, job_yaml(plane["model"], 200, name="long"))
    job_id = res.json()["id"]
    wait_for_state(url, job_id, {"RUNNING"})
    deadline = time.time() + 120
    while not store.read(job_id, "metrics", "0-0", 10) and time.time() < deadline:
        time.sleep(0.5)
    # restart the control plane: a new app process-equivalent over the same Redis and Ray
    plane["server"].stop()
    app = create_app(connect(plane["redis"].url), RayJobs(plane["jobs"].address, plane["redis"].url),
                     plane["settings"])
    app.state.reconcile_all()
    plane["server"] = LiveServer(app, free_port())
    url = plane["url"] = plane["server"].url
    assert job_id in [j["id"] for j in httpx.get(f"{url}/v1/jobs").json()["items"]]
    assert httpx.get(f"{url}/v1/jobs/{job_id}").json()["state"] == "RUNNING"
    live = sse_events(f"{url}/v1/jobs/{job_id}/stream", limit=3, timeout=120)
    assert {e["event"] for e in live} & {"metrics", "state"}
    cancelled = httpx.post(f"{url}/v1/jobs/{job_id}/cancel", headers=AUTH)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
    deadline = time.time() + 60
    while plane["jobs"].status(cancelled.json()["ray_job_id"])[0] not in ("STOPPED", "FAILED", "SUCCEEDED"):
        assert time.time() < deadline, "the Ray job did not stop"
        time.sleep(0.5)
    assert plane["jobs"].status(cancelled.json()["ray_job_id"])[0] == "STOPPED"
    assert httpx.get(f"{url}/v1/jobs/{job_id}").json()["state"] == "CANCELLED"  # the driver's end did not win


def test_bounded_concurrent_load(plane):
    """60 clients for 3 s mixing list / get / metrics, with 10 SSE listeners: no errors, p99 stated."""
    url, store = plane["url"], plane["store"]
    job = store.create("load", "{}", "")
    for i in range(50):
        store.append(job["id"], "metrics", {"step": i, "loss": 0.0})
    latencies, errors = [], []
    clients = [httpx.Client(timeout=30) for _ in range(60)]  # made before the clock starts (each costs CPU)
    stop = time.time() + 3

    def client(i):
        with clients[i] as c:
            while time.time() < stop:
                path = ["/v1/jobs", f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/metrics"][i % 3]
                t0 = time.perf_counter()
                r = c.get(url + path)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(r.status_code)

    def listener():
        try:
            with httpx.stream("GET", f"{url}/v1/jobs/{job['id']}/events", timeout=4) as res:
                for _ in res.iter_lines():
                    if time.time() > stop:
                        break
        except httpx.ReadTimeout:
            pass

    threads = [threading.Thread(target=client, args=(i,)) for i in range(60)]
    threads += [threading.Thread(target=listener) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    print(f"load: {len(latencies)} requests, p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms, errors {len(errors)}")
    assert errors == [] and len(latencies) > 100 and p99 < 5.0


def test_manual_leap_request_is_served_by_the_running_job(plane):
    """A job whose policy would never leap (backtest threshold 1, start after the end) leaps when asked, by the
    horizon the request names."""
    url = plane["url"]
    body = job_yaml(plane["model"], 14, name="asked") + (
        "extrapolate:\n  window: 2\n  horizon: 2\n  min_horizon: 1\n  start_after: 1000\n  judge_after: 2\n"
        "  eval_size: 24\n  backtest_threshold: 1.0\n  accept_margin: 1.0\n")
    job_id = submit(plane, body).json()["id"]
    asked = httpx.post(f"{url}/v1/jobs/{job_id}/leaps", json={"note": "try now", "horizon": 3}, headers=AUTH)
    assert asked.status_code == 202
    assert httpx.post(f"{url}/v1/jobs/{job_id}/leaps", json={"note": "x"}).status_code == 401
    job = wait_for_state(url, job_id, {"SUCCEEDED", "FAILED"})
    assert job["state"] == "SUCCEEDED", job["error"]
    events = [data for _, data in plane["store"].read(job_id, "events", "0-0", 1000)]
    proposals = [e for e in events if e["type"] == "proposal"]
    assert len(proposals) == 1 and proposals[0]["requested"] is True
    assert proposals[0]["horizon"] == 3  # the request's horizon, not the policy's 2
    assert any(e["type"] in ("leap_paid", "leap_rolled_back", "leap_rejected") for e in events)


def test_openapi_is_served_and_names_every_route(plane):
    spec = httpx.get(f"{plane['url']}/openapi.json").json()
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/metrics",
                 "/v1/jobs/{job_id}/rank1", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/checkpoints",
                 "/v1/jobs/{job_id}/leaps", "/healthz", "/metrics"):
        assert path in spec["paths"], path
    assert "application/yaml" in spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]


def test_sse_refuses_a_malformed_last_event_id_and_a_second_app_streams_the_same_store(plane):
    store = plane["store"]
    job = store.create("sse2", "{}", "")
    store.append(job["id"], "events", {"type": "leap_paid", "step": 7})
    store.transition(job["id"], "CANCELLED")
    bad = httpx.get(f"{plane['url']}/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "garbage"})
    assert bad.status_code == 422 and "Last-Event-ID" in bad.text
    app = create_app(store, plane["jobs"], plane["settings"])  # a second app over the same store
    server = LiveServer(app, free_port())
    try:
        events = sse_events(f"{server.url}/v1/jobs/{job['id']}/events")
        assert [json.loads(e["data"])["step"] for e in events if e["event"] == "events"] == [7]
        assert events[-1]["event"] == "end"
    finally:
        server.stop()


def test_job_recorded_but_never_given_its_ray_id_is_reconciled(plane, tmp_path):
    """The control plane died between storing the job and storing its Ray id: a later GET finds the Ray job by its
    deterministic submission id and follows it to the end."""
    store, jobs = plane["store"], plane["jobs"]
    record = store.create("orphan", job_yaml(plane["model"], 2), "")
    run_dir = plane["settings"].runs_root / record["id"]
    run_dir.mkdir(parents=True)
    (run_dir / "submitted.yaml").write_text(job_yaml(plane["model"], 2, name="orphan"))
    jobs.submit(record["id"], run_dir / "submitted.yaml", run_dir)  # its id is never written to the store
    job = wait_for_state(plane["url"], record["id"], {"SUCCEEDED", "FAILED"})
    assert job["state"] == "SUCCEEDED" and job["ray_job_id"] == f"leapfrog-{record['id']}"


def test_multi_turn_job_runs_through_rest_with_rank1_and_a_leap(plane):
    """A conversation job (SmolLM2-135M-Instruct in the built-in sums_retry game) submitted over REST: it trains on
    Ray with the environment's reward beside a reward function, its checkpoints feed the rank-1 analysis, an asked-for
    leap is served, and the samples stream carries whole conversations."""
    url = plane["url"]
    body = ("model:\n  path: smollm2-135m-instruct\nrollout:\n  task: sums\n  environment: sums_retry\n"
            "  max_turns: 2\n  max_episode_tokens: 64\n  system_prompt: Be brief.\n  prompts_per_step: 4\n"
            "  group_size: 2\n  max_new_tokens: 10\n  eval_size: 8\n  eval_samples: 2\n  worker_cpus: 0.5\n"
            "rewards:\n  - fn: length\n    weight: 0.1\n"
            "learner:\n  num_cpus: 0.5\n  lr: 2.0e-4\nrun:\n  name: conversations\n  steps: 3\n  checkpoint_every: 1\n"
            "  eval_every: 2\nextrapolate:\n  window: 2\n  horizon: 2\n  min_horizon: 1\n  start_after: 1000\n"
            "  judge: none\n  eval_size: 20\n  backtest_threshold: 1.0\n  accept_margin: 1.0\n")
    res = submit(plane, body)
    assert res.status_code == 201, res.text
    job_id = res.json()["id"]
    assert httpx.post(f"{url}/v1/jobs/{job_id}/leaps", json={"note": "now", "horizon": 1}, headers=AUTH).status_code \
        == 202
    job = wait_for_state(url, job_id, {"SUCCEEDED", "FAILED"}, timeout=600)
    assert job["state"] == "SUCCEEDED", job["error"]
    metrics = httpx.get(f"{url}/v1/jobs/{job_id}/metrics", params={"limit": 1000}).json()["items"]
    steps = [m["data"] for m in metrics if "loss" in m["data"]]
    assert steps and all(s["multi_turn/turns"] >= 1 and "rewards/SumsRetry/mean" in s and "rewards/length/mean" in s
                         for s in steps)
    rank1 = httpx.get(f"{url}/v1/jobs/{job_id}/rank1").json()["items"]
    assert any(r["data"]["rows"] for r in rank1)
    events = [data for _, data in plane["store"].read(job_id, "events", "0-0", 1000)]
    # the request is served at a checkpoint: a proposal judged by greedy conversations, or the reason there is none
    # (a zero update when no group's rewards differ: which one depends on the sampled trajectory)
    assert any(e["type"] == "proposal" and e["requested"] or e["type"] == "no_leap" for e in events), events
    samples = [data for _, data in plane["store"].read(job_id, "samples", "0-0", 1000)]
    assert samples and all(s["conversation"][0]["role"] == "assistant" for s in samples)
