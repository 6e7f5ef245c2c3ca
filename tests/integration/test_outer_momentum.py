"""Outer momentum in real runs of the default model: eta = 1, mu = 0 is plain training bit for bit (adapter and
losses); eta > 1 moves the weights; a run stopped and resumed between outer updates continues exactly (the anchor,
buffer and reward history are in the checkpoint)."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from common.run_dir import checkpoint_dir, read_jsonl
from services.config import parse_config
from services.loop import run_job

pytestmark = pytest.mark.integration


def job(model_dir, outer: dict | None, steps: int = 4):
    return parse_config({
        "model": {"path": str(model_dir)},
        "rollout": {"task": "arith", "prompts_per_step": 8, "group_size": 4, "eval_size": 16},
        "learner": {"lr": 2e-3, "outer_momentum": outer},
        "run": {"steps": steps, "checkpoint_every": 2, "eval_every": steps, "seed": 3},
    })


def adapter(run_dir, step):
    return load_file(str(checkpoint_dir(run_dir, step) / "adapter_model.safetensors"))


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


def test_eta_one_mu_zero_is_plain_training_bit_for_bit(default_model_dir, tmp_path):
    run_job(job(default_model_dir, None), run_dir=tmp_path / "plain", progress=False)
    run_job(job(default_model_dir, {"every": 2, "eta": 1.0, "mu": 0.0, "guard_margin": None}),
            run_dir=tmp_path / "outer1", progress=False)
    plain, outer = adapter(tmp_path / "plain", 4), adapter(tmp_path / "outer1", 4)
    assert plain.keys() == outer.keys()
    assert all((plain[k] == outer[k]).all() and plain[k].dtype == outer[k].dtype for k in plain)
    assert losses(tmp_path / "plain") == losses(tmp_path / "outer1")
    applied = [r["outer/applied"] for r in read_jsonl(tmp_path / "outer1" / "metrics.jsonl") if "outer/applied" in r]
    assert applied == [1.0, 1.0]  # steps 2 and 4 ran the outer update (exact zeros added)


def test_eta_above_one_extrapolates_and_resumes_exactly(default_model_dir, tmp_path):
    outer = {"every": 2, "eta": 2.0, "mu": 0.5, "guard_margin": None}
    run_job(job(default_model_dir, outer), run_dir=tmp_path / "straight", progress=False)
    run_job(job(default_model_dir, None), run_dir=tmp_path / "plain", progress=False)
    moved = adapter(tmp_path / "straight", 2)
    plain = adapter(tmp_path / "plain", 2)
    assert any(not (moved[k] == plain[k]).all() for k in plain)
    stopped = tmp_path / "stopped"
    run_job(job(default_model_dir, outer), run_dir=stopped, progress=False, stop_after=2)
    run_job(job(default_model_dir, outer), run_dir=stopped, resume=True, progress=False)
    a, b = adapter(tmp_path / "straight", 4), adapter(stopped, 4)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
