"""The run dashboard's pages: the static report of `leapfrog analyze RUN_DIR --html OUT.html` (self-contained:
Plotly and the dashboard script inlined, the run's data embedded) and the live job page the control plane serves
(same template and script, fed by the job's SSE stream). Plotly.js comes from the plotly wheel: no CDN.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from common.run_dir import CONFIG, EVENTS, METRICS, SAMPLES, read_jsonl

STATIC = Path(__file__).parent / "static"
MAX_SAMPLES = 500  # the newest sampled completions a page holds


def plotly_js_path() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def rank1_records(run_dir: Path, max_backtests: int = 30) -> list[dict]:
    """Per checkpoint step, the record the extrapolation service streams live at that checkpoint (the rank-1 rows
    of every module, by_type with the growth exponent, backtest, linear_r2: extrapolate.analyze.checkpoint_figures,
    so the report and the live page agree); backtests for the newest `max_backtests` checkpoints only."""
    from extrapolate.analyze import RunAnalysis

    return RunAnalysis(run_dir).history(max_backtests)


def run_view(run_dir: Path) -> dict:
    """Everything the dashboard draws, from a run directory (runs analyze first if rank1/ is missing)."""
    from extrapolate.analyze import analyze_run

    run_dir = Path(run_dir)
    analyze_run(run_dir, progress=False)
    metrics = read_jsonl(run_dir / METRICS)
    evals = {}
    for r in metrics:
        if "eval_accuracy" in r:
            evals[r["step"]] = {"step": r["step"], "accuracy": r["eval_accuracy"]}
    config = (run_dir / CONFIG).read_text() if (run_dir / CONFIG).is_file() else ""
    return {"job": {"name": run_dir.name}, "config": config, "metrics": [r for r in metrics if "loss" in r],
            "evals": sorted(evals.values(), key=lambda e: e["step"]), "rank1": rank1_records(run_dir),
            "events": leap_events(read_jsonl(run_dir / EVENTS)),
            "samples": read_jsonl(run_dir / SAMPLES)[-MAX_SAMPLES:]}


def leap_events(events: list[dict], limit: int = 500) -> list[dict]:
    """The events the dashboard draws: every leap event (the last `limit`) and the latest "no_leap" reason."""
    keep = [e for e in events if e.get("type") != "no_leap"][-limit:]
    last_reason = [e for e in events if e.get("type") == "no_leap"][-1:]
    return sorted(keep + last_reason, key=lambda e: e.get("time", 0))


JOB_SLOT = "__JOB_ID__"  # the job id's slot in services/static/job.html (a meta tag, the title)


def page(title: str, boot_js: str, inline: bool, live: bool = False, job_id: str = "") -> str:
    """The job page from services/static/job.html: Plotly and dashboard.js inlined (a self-contained report) or
    linked from /static; `live` adds live.js (the SSE feed); `job_id` fills the leapfrog-job-id meta tag."""
    if inline:
        plotly = f"<script>{plotly_js_path().read_text()}</script>"
        dashboard = f"<script>{(STATIC / 'dashboard.js').read_text()}</script>"
    else:
        plotly = '<script src="/static/plotly.min.js"></script>'
        dashboard = '<script src="/static/dashboard.js"></script>'
    slots = {"__TITLE__": html.escape(title), "__PLOTLY__": plotly, "__DASHBOARD__": dashboard,
             "__LIVE__": '<script src="/static/live.js"></script>' if live else "", JOB_SLOT: html.escape(job_id),
             "__BOOT__": f"<script>{boot_js}</script>"}
    template = (STATIC / "job.html").read_text()  # one pass: text filled into a slot is never scanned again
    return re.sub("|".join(slots), lambda m: slots[m.group(0)], template)


def live_page_template() -> str:
    """The control plane's live job page with JOB_SLOT left in for the job id (the server fills it per request):
    live.js starts from the leapfrog-job-id meta tag."""
    boot = 'LF.bindSlider(); LFLive.start(document.querySelector(\'meta[name="leapfrog-job-id"]\').content);'
    return page(f"job {JOB_SLOT}", boot, inline=False, live=True, job_id=JOB_SLOT)


def write_report(run_dir: Path, out: Path) -> Path:
    """`leapfrog analyze RUN_DIR --html OUT`: a self-contained HTML report with the dashboard's charts."""
    view = run_view(run_dir)
    from services.store import finite

    data = json.dumps(finite(view), allow_nan=False).replace("</", "<\\/")  # no </script> inside the document
    boot = f"LF.bindSlider(); LF.render({data});"
    out = Path(out)
    out.write_text(page(f"run {Path(run_dir).name}", boot, inline=True))
    return out
