"""Smoke version of bench/leap_speedup.py: a two-lr sweep and one outer-momentum method on the default model, a few
steps; the last line is the JSON docs/results.md's table is made from."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_leap_speedup_prints_its_figures(default_model_dir):
    res = subprocess.run([sys.executable, "bench/leap_speedup.py", "--workload", "arith", "--seeds", "0",
                          "--lrs", "1e-3", "3e-3", "--methods", "outer_eta2", "--steps", "4", "--eval-size", "32", "--prompts", "16"],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["eval_every"] == 2 and out["seeds"] == [0] and out["baseline"]["lr"] in (1e-3, 3e-3)
    assert out["prompts_per_step"] == 16  # --prompts replaced the job's 64
    assert set(out["baseline"]["steps_to"]) == {"50", "80", "96"}
    m = out["methods"]["outer_eta2"]
    assert m["lr"] == out["baseline"]["lr"]
    for key in ("steps_to", "compute_to", "speedup_vs_best_lr", "ci"):
        assert set(m[key]) == {"50", "80", "96"}, key
    assert all(m["compute_to"][f] == m["steps_to"][f] for f in m["steps_to"])  # outer momentum: no extra passes
    assert 0 < out["eval_stderr"] < 0.1


def test_every_method_makes_a_valid_job_on_every_workload():
    """Each method's overrides, merged into each workload's job, pass the config's validation (a typo in a method's
    fields would otherwise surface only after the plain sweep, hours into a run)."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("leap_speedup", REPO / "bench" / "leap_speedup.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for name, workload in bench.WORKLOADS.items():
        args = argparse.Namespace(eval_size=32, prompts=None, steps=workload["steps"], eval_every=2)
        for method, overrides in bench.METHODS.items():
            cfg = bench.job(args, workload, 0, bench.method_lr(1e-3, method), overrides)
            assert cfg.run.steps == workload["steps"], (name, method)
            if "extrapolate" in overrides:
                assert cfg.extrapolate.method == overrides["extrapolate"]["method"], (name, method)
            if "run" in overrides:
                assert cfg.run.checkpoint_every == overrides["run"]["checkpoint_every"], (name, method)
