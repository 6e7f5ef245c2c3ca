"""The dashboard in a real headless Chromium: the live job page of the control plane (real Redis, real Ray, a
real job) fills its charts from the SSE stream while the job trains and keeps going across a server restart; the
static report of `leapfrog analyze --html` (self-contained: it works from a file:// URL with no server and no
network) shows the same charts. Both with data points and no console error; screenshots in the test's tmp dir
(LEAPFROG_SCREENSHOT=path also saves the live page's there, for the README). The completions table and the
per-reward curves, live (the driver loop writing to the job's streams as under the control plane) and in the
report: every sampled completion newest first, its text shown as text, one curve per reward function."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest

from common.run_dir import METRICS, SAMPLES, append_jsonl, read_jsonl
from services.api import Settings, create_app
from services.config import dump_config, parse_config
from services.loop import run_job
from services.ray_jobs import RayJobs
from services.store import EmbeddedRedis, connect
from tests.conftest import free_port
from tests.e2e.browser import browser_page, chart_points
from tests.e2e.test_cli import leapfrog
from tests.integration.control_plane import LiveServer, wait_for_state

pytestmark = pytest.mark.integration

CHARTS = ["chart-curves", "chart-rewards", "chart-completions", "chart-heatmap", "chart-dominance", "chart-stability",
          "chart-predictability", "chart-candidates", "chart-leap-s1"]


LEAPS = ("extrapolate:\n  window: 2\n  horizon: 2\n  min_horizon: 1\n  start_after: 4\n  judge_after: 2\n"
         "  eval_size: 32\n  backtest_threshold: -1.0\n  accept_margin: 1.0\n")


def test_live_job_page_fills_from_the_stream_and_survives_a_restart(ray_head, default_model_dir, tmp_path):
    redis = EmbeddedRedis(tmp_path / "redis")
    store = connect(redis.url)
    settings = Settings(token="dash-token-123456", runs_root=tmp_path / "runs",
                        allowed_roots=[tmp_path, default_model_dir.parent])

    def app():
        return create_app(store, RayJobs(ray_head["RAY_ADDRESS"], redis.url), settings)

    port = free_port()
    server = LiveServer(app(), port)
    try:
        body = (f"model:\n  path: {default_model_dir}\nrollout:\n  prompts_per_step: 16\n  group_size: 4\n"
                f"  eval_size: 64\n  worker_cpus: 0.5\nlearner:\n  num_cpus: 0.5\nrun:\n  name: dash\n  steps: 32\n"
                f"  checkpoint_every: 2\n  eval_every: 4\n" + LEAPS)
        res = httpx.post(f"{server.url}/v1/jobs", content=body, timeout=60,
                         headers={"Authorization": f"Bearer {settings.token}", "Content-Type": "application/yaml"})
        assert res.status_code == 201, res.text
        job_id = res.json()["id"]
        with browser_page() as (page, errors):
            page.goto(f"{server.url}/jobs/{job_id}")
            page.wait_for_function("document.body.dataset.checkpoints !== undefined", timeout=30_000)
            at_open = int(page.evaluate("document.body.dataset.checkpoints"))
            page.wait_for_function(f"Number(document.body.dataset.checkpoints) >= {max(2, at_open + 1)}",
                                   timeout=240_000)
            before_restart = list(errors)
            server.stop()  # the control plane restarts mid-job; the page's EventSource reconnects and resumes
            server = LiveServer(app(), port)
            seen = int(page.evaluate("document.body.dataset.checkpoints"))
            page.wait_for_function(f"Number(document.body.dataset.checkpoints) > {seen}", timeout=240_000)
            wait_for_state(server.url, job_id, {"SUCCEEDED", "FAILED"})
            page.wait_for_function("document.getElementById('job-state').textContent === 'SUCCEEDED'",
                                   timeout=60_000)
            counts = {c: chart_points(page, c) for c in ["chart-curves", "chart-heatmap", "chart-dominance",
                                                          "chart-stability", "chart-predictability"]}
            page.screenshot(path=str(tmp_path / "live.png"), full_page=True)
            if os.environ.get("LEAPFROG_SCREENSHOT"):
                shutil.copy(tmp_path / "live.png", os.environ["LEAPFROG_SCREENSHOT"])
        assert at_open < 2, "the page should have opened before the rank-1 data existed"
        assert before_restart == [], before_restart
        # the restart itself cuts the open stream: Chromium logs that network error, and nothing else may appear
        network = ("net::ERR_INCOMPLETE_CHUNKED_ENCODING", "net::ERR_CONNECTION_REFUSED", "net::ERR_EMPTY_RESPONSE")
        assert all(e.endswith(network) for e in errors[len(before_restart):]), errors
        assert all(n > 0 for n in counts.values()), counts
    finally:
        server.stop()
        redis.stop()


@pytest.fixture(scope="module")
def leaping_run(default_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    job = tmp / "job.yaml"
    job.write_text(f"model:\n  path: {default_model_dir}\nrollout:\n  prompts_per_step: 16\n  group_size: 4\n"
                   f"  eval_size: 64\nrun:\n  steps: 16\n  checkpoint_every: 2\n  eval_every: 4\n" + LEAPS)
    run_dir = tmp / "run"
    res = leapfrog("run", str(job), "--run-dir", str(run_dir))
    assert res.returncode == 0, res.stderr
    return run_dir


def test_static_report_shows_all_charts(leaping_run, tmp_path):
    out = tmp_path / "report.html"
    res = leapfrog("analyze", str(leaping_run), "--html", str(out))
    assert res.returncode == 0, res.stderr
    html = out.read_text()
    assert "cdn" not in html.lower().split("<body>")[1][:2000] and "<script src=" not in html  # self-contained
    with browser_page() as (page, errors):
        page.goto(out.as_uri())
        page.wait_for_function("Number(document.body.dataset.checkpoints) >= 2", timeout=30_000)
        counts = {c: chart_points(page, c) for c in CHARTS}
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert errors == []
    assert all(n > 0 for n in counts.values()), counts
    assert page_has_verdict(html)


def page_has_verdict(html: str) -> bool:
    return '"type": "leap_paid"' in html or '"type": "leap_rolled_back"' in html


SAMPLED_JOB = {"rollout": {"task": "arith", "prompts_per_step": 4, "group_size": 2, "eval_size": 8, "eval_samples": 3,
                           "max_new_tokens": 4},
               "rewards": [{"fn": "format", "name": "digits", "args": {"pattern": "^[0-9]+$"}},
                           {"fn": "length", "weight": 0.1}],
               "run": {"name": "sampled", "steps": 3, "checkpoint_every": 1, "eval_every": 1}}
# a record as the driver writes it (the last evaluation's step), whose text a page must show and never run
UNSAFE = {"step": 3, "prompt": "<b>12+34=</b>", "completion": '<img src=x onerror="document.body.dataset.hacked=1">',
          "answer": "46", "rewards": {"digits": 0.0, "length": -0.5}, "reward": -0.05}
CALL = '<tool_call>{"name": "add", "arguments": {"a": 12, "b": 34}}</tool_call>'
CONVERSATION = {"step": 3, "prompt": "12+34=", "completion": f"[assistant] {CALL}", "answer": "46",
                "rewards": {"digits": 1.0, "length": -0.2}, "reward": 0.98,
                "conversation": [{"role": "assistant", "content": CALL},
                                 {"role": "user", "content": "<tool_response>\n46\n</tool_response>"},
                                 {"role": "assistant", "content": "46"}]}


def completions_table(page) -> list[list[str]]:
    """The completions table's rows (the header left out), as the cells' text."""
    return page.evaluate("[...document.querySelectorAll('#samples tr')].slice(1)"
                         ".map((tr) => [...tr.children].map((td) => td.textContent))")


def reward_curves(page) -> dict[str, int]:
    """The per-reward chart's traces: name -> points drawn."""
    return page.evaluate("Object.fromEntries((document.getElementById('chart-rewards').data || [])"
                         ".map((t) => [t.name, t.y.filter((v) => v !== null).length]))")


def untouched(page) -> bool:
    """No markup from the run's text became elements, and none of it ran."""
    return page.evaluate("document.body.dataset.hacked === undefined && "
                         "document.querySelector('#samples img, #samples td b') === null")


def test_completions_table_and_reward_curves_live_and_in_the_report(tiny_model_dir, tmp_path):
    cfg = parse_config({"model": {"path": str(tiny_model_dir)}, **SAMPLED_JOB})
    redis = EmbeddedRedis(tmp_path / "redis")
    store = connect(redis.url)
    settings = Settings(token=None, runs_root=tmp_path / "runs", allowed_roots=[tmp_path])
    no_ray = RayJobs(f"http://127.0.0.1:{free_port()}", redis.url)  # nothing listens: the job is not Ray's
    server = LiveServer(create_app(store, no_ray, settings), free_port())
    run_dir = tmp_path / "run"
    job_id = store.create("sampled", dump_config(cfg), str(run_dir))["id"]
    store.transition(job_id, "RUNNING")
    try:
        with browser_page() as (page, errors):
            page.goto(f"{server.url}/jobs/{job_id}")
            page.wait_for_function("document.getElementById('samples-note').textContent !== ''", timeout=30_000)
            assert completions_table(page) == []
            # the driver loop, its sink the job's streams (as services/driver.py gives it under the control plane)
            run_job(cfg, run_dir=run_dir, progress=False, sink=lambda stream, rec: store.append(job_id, stream, rec))
            for sample in (UNSAFE, CONVERSATION):  # a multi-turn job's sample carries its conversation
                append_jsonl(run_dir / SAMPLES, sample)
                store.append(job_id, "samples", sample)
            store.transition(job_id, "SUCCEEDED")
            page.wait_for_function("document.getElementById('job-state').textContent === 'SUCCEEDED'",
                                   timeout=60_000)
            live = completions_table(page), reward_curves(page), untouched(page)
            page.screenshot(path=str(tmp_path / "live.png"), full_page=True)
        assert errors == []
    finally:
        server.stop()
        redis.stop()
    samples = read_jsonl(run_dir / SAMPLES)
    steps = [r["step"] for r in read_jsonl(run_dir / METRICS) if "loss" in r]
    assert len(samples) == 4 * 3 + 2 and steps == [1, 2, 3]  # 3 completions at each of 4 evaluations, and ours
    rows, curves, safe = live
    assert rows[0] == ["3", CONVERSATION["prompt"], f"assistant: {CALL}\nuser: <tool_response>\n46\n"
                       "</tool_response>\nassistant: 46", "46", "0.980", "1.000", "-0.200"]  # the whole conversation
    assert rows[1] == ["3", UNSAFE["prompt"], UNSAFE["completion"], "46", "-0.050", "0.000", "-0.500"]
    assert [int(r[0]) for r in rows] == sorted((s["step"] for s in samples), reverse=True)  # newest first
    assert sorted((r[0], r[1], r[2]) for r in rows[1:]) == sorted((str(s["step"]), s["prompt"], s["completion"])
                                                                  for s in samples[:-1])
    assert curves == {"digits (mean ± std)": len(steps), "length (mean ± std)": len(steps)} and safe

    out = tmp_path / "report.html"
    res = leapfrog("analyze", str(run_dir), "--html", str(out))
    assert res.returncode == 0, res.stderr
    with browser_page() as (page, errors):
        page.goto(out.as_uri())
        page.wait_for_function("document.body.dataset.checkpoints !== undefined", timeout=30_000)
        report = completions_table(page), reward_curves(page), untouched(page)
    assert errors == []
    assert report == live  # the report shows what the live page showed
