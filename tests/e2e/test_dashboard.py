"""The dashboard in a real headless Chromium: the static report of `leapfrog analyze --html` (self-contained: it
works from a file:// URL with no server and no network) shows every chart with data and logs no console error."""

from __future__ import annotations

import pytest

from tests.e2e.browser import browser_page, chart_points
from tests.e2e.test_cli import leapfrog

pytestmark = pytest.mark.integration

CHARTS = ["chart-curves", "chart-heatmap", "chart-dominance", "chart-stability", "chart-predictability",
          "chart-candidates", "chart-leap-s1"]


@pytest.fixture(scope="module")
def leaping_run(default_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    job = tmp / "job.yaml"
    job.write_text(f"model:\n  path: {default_model_dir}\nrollout:\n  prompts_per_step: 16\n  group_size: 4\n"
                   f"  eval_size: 64\nrun:\n  steps: 16\n  checkpoint_every: 2\n  eval_every: 4\n"
                   f"extrapolate:\n  window: 2\n  horizon: 2\n  min_horizon: 1\n  start_after: 4\n  judge_after: 2\n"
                   f"  eval_size: 32\n  backtest_threshold: -1.0\n  accept_margin: 1.0\n")
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
