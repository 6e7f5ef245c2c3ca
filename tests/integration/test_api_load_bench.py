"""Smoke version of bench/api_load.py with each generator (this process's strict pacer, and Debian's wrk in its own
process): a few seconds per phase, few clients; the last line is the JSON docs/results.md's row is made from."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("generator", ["python", "wrk"])
def test_api_load_prints_its_figures(generator):
    res = subprocess.run([sys.executable, "bench/api_load.py", "--generator", generator, "--seconds", "3",
                          "--saturate-seconds", "1", "--rounds", "1", "--clients", "20", "--listeners", "5"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["generator"] == generator and out["bare_max_rps"] > 0 and out["max_rps"] > 0
    assert out["errors"] == 0 and out["sse_events"] > 0 and out["sse_events_lost"] == 0
    assert out["offered_rps"] == pytest.approx(out["bare_max_rps"] / 2, rel=1e-3)
    assert out["rps"] > 0.5 * out["offered_rps"]  # the pacing offered what it said (the server keeps up at half load)
    assert 0 < out["p50_ms"] <= out["p99_ms"] <= out["max_ms"] and out["bare_paced_p99_ms"] > 0
    assert out["submissions"] > 0 and set(out["submit_statuses"]) <= {"201", "503"}
