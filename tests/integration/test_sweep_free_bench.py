"""Smoke version of bench/sweep_free.py: a two-lr sweep, then plain and the adaptive controller from L*/10, a few
steps on the default model; the last line is the JSON docs/results.md's tables are made from. And every contender
makes a valid job on every workload (a typo would otherwise surface only after the sweep)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def load_bench():
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("sweep_free", REPO / "bench" / "sweep_free.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_sweep_free_prints_its_figures(default_model_dir):
    res = subprocess.run([sys.executable, "bench/sweep_free.py", "--workload", "arith", "--seeds", "0", "--lrs", "1e-3",
                          "3e-3", "--contenders", "plain", "adaptive", "--factors", "0.1", "--steps", "2",
                          "--eval-size", "16", "--prompts", "16"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["best_lr"] in (1e-3, 3e-3) and out["seeds"] == [0] and out["sweep_compute"] == 4.0
    assert set(out["contenders"]) == {"plain", "adaptive"} and set(out["contenders"]["adaptive"]) == {"0.1"}
    fig = out["contenders"]["adaptive"]["0.1"]
    assert abs(fig["lr"] - out["best_lr"] / 10) < 1e-12
    for key in ("steps_to", "compute_to"):
        assert set(fig[key]) == {"50", "80", "96"}
    assert fig["run_compute"] > 2  # its probe passes count: 3 candidates scored at step 2
    assert all(fig["compute_to"][f] >= fig["steps_to"][f] for f in fig["steps_to"])
    assert set(out["goal"]) == {"0.1"} and isinstance(out["goal_met"], bool) and 0 < out["final_stderr"] < 0.2


def test_every_contender_makes_a_valid_job_on_every_workload():
    bench = load_bench()
    workloads = sys.modules["leap_speedup"].WORKLOADS  # the module sweep_free takes its workloads from
    for name in ("arith", "digitsum", "smollm2"):
        workload = workloads[name]
        args = argparse.Namespace(eval_size=32, prompts=None, steps=workload["steps"], eval_every=2)
        for contender, overrides in bench.CONTENDERS.items():
            cfg = bench.job(args, workload, 0, 1e-4, overrides(1e-4))
            assert cfg.learner.optimizer == overrides(1e-4).get("optimizer", "adamw"), (name, contender)
        for overrides, lr in bench.DEFAULTS.values():
            assert bench.job(args, workload, 0, lr, overrides).learner.optimizer == overrides["optimizer"]
