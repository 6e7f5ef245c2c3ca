"""Full-parameter RL (learner.lora: null) on the default model: checkpoints are whole HF model directories, the KL
term has a frozen copy of the base, the run is analysed (dense rank-1 path), leapt (dense leaps from the exact
factors of W_t - W_0), and resumed; a stopped run resumes to the same losses as an uninterrupted one; rollout
engines load the published full weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from common.run_dir import checkpoint_dir, list_checkpoints, read_jsonl
from extrapolate.analyze import analyze_run
from services.config import ConfigError, parse_config
from services.loop import run_job

pytestmark = pytest.mark.integration

Q = "model.layers.0.self_attn.q_proj.weight"


def full_job(model_dir, steps: int, extrapolate: dict | None = None, beta: float = 0.0, seed: int = 3):
    return parse_config({
        "model": {"path": str(model_dir)},
        "rollout": {"prompts_per_step": 8, "group_size": 4, "eval_size": 32},
        "learner": {"lr": 1e-4, "lora": None, "beta": beta},
        "run": {"steps": steps, "checkpoint_every": 2, "eval_every": steps, "seed": seed},
        **({"extrapolate": extrapolate} if extrapolate else {})})


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r}


def test_full_parameter_run_is_analysed_leapt_and_resumed(default_model_dir, tmp_path):
    leap = {"method": "growth", "window": 2, "horizon": 2, "min_horizon": 2, "max_horizon": 2, "scales": [2.0],
            "start_after": 4, "leap_every": 100, "backtest_threshold": -1.0, "judge": "none", "accept_margin": 1.0,
            "eval_size": 20}  # accept_margin 1: any candidate is kept, so the leap is certain to be applied
    run = tmp_path / "run"
    summary = run_job(full_job(default_model_dir, 8, leap, beta=0.05), run_dir=run, progress=False)

    checkpoints = list_checkpoints(run)
    assert [s for s, _ in checkpoints] == [2, 4, 8]  # the leap from step 4 skipped steps 5 and 6
    for _, path in checkpoints:
        files = {f.name for f in path.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "state.pt", "meta.json"} <= files
        assert "adapter_config.json" not in files
        assert json.loads((path / "meta.json").read_text())["base_model"] == str(default_model_dir.resolve())
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 7, 8]
    assert max(r["kl"] for r in rows[1:]) > 0  # the reference is a frozen copy: the trained policy moves away from it

    events = read_jsonl(run / "events.jsonl")
    applied = [e for e in events if e["type"] == "leap_applied"]
    assert [(e["step"], e["to_step"]) for e in applied] == [(4, 6)] and summary.leaps["paid"] == 1
    proposal = next(e for e in events if e["type"] == "proposal")
    candidate = proposal["candidates"][0]["path"]
    base, pre, leapt = (load_file(str(p / "model.safetensors")) for p in
                        (default_model_dir, checkpoint_dir(run, 4), type(checkpoint_dir(run, 4))(candidate)))
    d_pre, d_leap = pre[Q].double() - base[Q].double(), leapt[Q].double() - base[Q].double()
    # growth with scale 2: W' - W_0 = (2 (6/4)^p - 1)(W_4 - W_0), p in [0, 1]: the same direction, at least as long
    cos = float((d_pre * d_leap).sum() / (d_pre.norm() * d_leap.norm()))
    assert cos == pytest.approx(1.0, abs=1e-5) and 1.0 - 1e-5 <= float(d_leap.norm() / d_pre.norm()) <= 2 * 1.5 - 1
    assert torch.equal(leapt["model.norm.weight"], pre["model.norm.weight"])  # not a target module: kept

    result = analyze_run(run, progress=False)  # the base is the one the checkpoints record
    assert result["steps"] == [2, 4, 8] and {"q_proj", "down_proj"} <= set(result["by_type"])
    assert all(0 < s["energy1"] <= 1 for s in result["by_type"].values())

    resumed = run_job(full_job(default_model_dir, 10, leap, beta=0.05), run_dir=run, resume=True, progress=False)
    assert [s for s, _ in list_checkpoints(run)] == [2, 4, 8, 10] and resumed.learner_steps >= 2
    assert sorted(losses(run)) == [1, 2, 3, 4, 7, 8, 9, 10]


def test_full_parameter_resume_reproduces_the_next_steps(default_model_dir, tmp_path):
    cfg = full_job(default_model_dir, 4, seed=5)
    run_job(cfg, run_dir=tmp_path / "straight", progress=False)
    run_job(cfg, run_dir=tmp_path / "stopped", progress=False, stop_after=2)
    run_job(cfg, run_dir=tmp_path / "stopped", resume=True, progress=False)
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "stopped")
    assert sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])
    straight = load_file(str(checkpoint_dir(tmp_path / "straight", 4) / "model.safetensors"))
    stopped = load_file(str(checkpoint_dir(tmp_path / "stopped", 4) / "model.safetensors"))
    assert max(float((straight[k] - stopped[k]).abs().max()) for k in straight) < 1e-6

    from rollout.engines.hf import HFEngine

    engine = HFEngine(default_model_dir)  # a standalone rollout engine syncs by loading the published weights
    engine.load_adapter(checkpoint_dir(tmp_path / "straight", 4), version="000004")
    assert torch.equal(dict(engine.model.named_parameters())[Q].detach(), straight[Q])


def test_full_parameter_refuses_vllm(default_model_dir):
    with pytest.raises(ConfigError, match="full-parameter RL.*rollout.engine: hf"):
        parse_config({"model": {"path": str(default_model_dir)}, "learner": {"lora": None},
                      "rollout": {"engine": "vllm"}})
