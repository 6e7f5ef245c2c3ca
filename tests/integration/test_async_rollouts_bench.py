"""Smoke version of bench/async_rollouts.py: k = 0 and k = 2 on Ray, two steps of the default model on arith; the
last line is the JSON docs/results.md's table is made from."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_async_rollouts_bench_prints_its_figures(default_model_dir):
    res = subprocess.run([sys.executable, "bench/async_rollouts.py", "--smoke", "--steps", "3", "--variants", "k0",
                          "k2"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out["runs"]) == {"k0", "k2"} and out["samples_per_step"] == 32 and out["steps"] == 3
    assert out["runs"]["k0"]["staleness"] == 0 and out["runs"]["k2"]["staleness"] == 1.0  # (0 + 1 + 2) / 3
    assert set(out["speedup"]) == {"k2"} and out["runs"]["k2"]["samples_per_s"] > 0
