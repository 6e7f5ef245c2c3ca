"""Extrapolators on an exactly linear LoRA trajectory predict the target exactly, and the leap adapter loads in
plain PEFT and in our HF engine and reproduces the predicted weights to 1e-5."""

from __future__ import annotations

import json

import pytest
import torch

from common.run_dir import checkpoint_dir
from extrapolate.extrapolators import LINEAR_METHODS, extrapolate_run
from extrapolate.leap_writer import LeapError
from learner.config import LoraConfig, ModelConfig
from learner.policy import load_policy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def linear_run(tiny_model_dir, tmp_path_factory):
    """Checkpoints at steps 10, 20, 30 with Delta_t = (t / 10) Delta_10 (B_t = (t/10) B, A fixed)."""
    run = tmp_path_factory.mktemp("linear") / "run"
    model, _ = load_policy(tiny_model_dir, ModelConfig(), LoraConfig(r=4, alpha=8), seed=0)
    torch.manual_seed(0)
    base_b = {n: torch.randn_like(p) * 0.05 for n, p in model.named_parameters() if "lora_B" in n}
    for step in (10, 20, 30):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in base_b:
                    p.copy_(base_b[n] * step / 10)
        model.save_pretrained(checkpoint_dir(run, step))
    return run


def merged_delta(tiny_model_dir, adapter_dir, name="model.layers.0.mlp.down_proj"):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    w0 = dict(base.named_parameters())[f"{name}.weight"].detach().clone()
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return dict(merged.named_parameters())[f"{name}.weight"].detach() - w0


@pytest.mark.parametrize("method", LINEAR_METHODS)
def test_linear_trajectory_is_predicted_exactly(method, linear_run, tiny_model_dir, tmp_path):
    leap = extrapolate_run(linear_run, method, window_end=30, target_step=60, out_dir=tmp_path / "leap",
                           window_start=10)
    delta_30 = merged_delta(tiny_model_dir, linear_run / "checkpoints" / "step-000030")
    delta_60 = merged_delta(tiny_model_dir, leap)
    if method == "alpharl":  # only the rank-1 part is extrapolated: x = s1 u1 doubles, the rest stays at t_w
        u, s_vals, vh = torch.linalg.svd(delta_30.double())
        expected = delta_30 + (s_vals[0] * torch.outer(u[:, 0], vh[0])).float()
    else:
        expected = 2 * delta_30
    assert (delta_60 - expected).abs().max().item() < 1e-5
    assert json.loads((leap / "report.json").read_text())["method"] == method


def test_leap_runs_in_our_engine(linear_run, tiny_model_dir, tmp_path):
    from rollout.engines.base import SamplingParams
    from rollout.engines.hf import HFEngine

    leap = extrapolate_run(linear_run, "alpharl", window_end=30, target_step=40, out_dir=tmp_path / "leap")
    engine = HFEngine(tiny_model_dir, adapter_path=leap)
    out = engine.generate([engine.tokenizer("12+34=")["input_ids"]], SamplingParams(n=2, max_new_tokens=4))
    assert len(out[0]) == 2


def test_bad_requests_are_refused(linear_run, tmp_path):
    with pytest.raises(ValueError, match="must be after"):
        extrapolate_run(linear_run, "relex", window_end=30, target_step=20, out_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="no checkpoint at --window-end"):
        extrapolate_run(linear_run, "relex", window_end=25, target_step=40, out_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="at least 2 checkpoints"):
        extrapolate_run(linear_run, "alpharl", window_end=10, target_step=40, out_dir=tmp_path / "c")
    with pytest.raises(LeapError, match="more than 10"):
        extrapolate_run(linear_run, "rl_extra", window_end=30, target_step=3000, out_dir=tmp_path / "d")
    assert not (tmp_path / "d").exists()
    assert sorted(p.name for p in (linear_run / "checkpoints").iterdir()) == [
        "step-000010", "step-000020", "step-000030"]


def test_alpharl_pls_form_inverts_accuracy(linear_run, tiny_model_dir, tmp_path):
    """With accuracies linear in the steps (0.1 per 10 steps), the PLS form at accuracy 0.6 is the step form at 60."""
    run = tmp_path / "run"
    import shutil

    shutil.copytree(linear_run, run)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "eval_accuracy": s / 100}) + "\n"
                                               for s in (0, 10, 20, 30)))
    pls = extrapolate_run(run, "alpharl", window_end=30, target_step=31, out_dir=tmp_path / "pls",
                          window_start=10, target_accuracy=0.6)
    step_form = extrapolate_run(run, "alpharl", window_end=30, target_step=60, out_dir=tmp_path / "step",
                                window_start=10)
    assert (merged_delta(tiny_model_dir, pls) - merged_delta(tiny_model_dir, step_form)).abs().max().item() < 1e-5
    (run / "metrics.jsonl").write_text(json.dumps({"step": 30, "eval_accuracy": 0.3}) + "\n")
    with pytest.raises(ValueError, match=r"none for steps \[10, 20\]"):
        extrapolate_run(run, "alpharl", window_end=30, target_step=31, out_dir=tmp_path / "x", target_accuracy=0.6)
    with pytest.raises(ValueError, match="use it with --method alpharl"):
        extrapolate_run(run, "relex", window_end=30, target_step=31, out_dir=tmp_path / "y", target_accuracy=0.6)


def test_merge_writes_a_full_model(linear_run, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from rollout.engines.base import SamplingParams
    from rollout.engines.hf import HFEngine

    adapter = extrapolate_run(linear_run, "rl_extra", window_end=30, target_step=45, out_dir=tmp_path / "leap")
    merged = extrapolate_run(linear_run, "rl_extra", window_end=30, target_step=45, out_dir=tmp_path / "full",
                             merge=True)
    assert (merged / "config.json").is_file() and (merged / "report.json").is_file()
    name = "model.layers.0.mlp.down_proj.weight"
    w0 = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())[name].detach()
    w = dict(AutoModelForCausalLM.from_pretrained(merged).named_parameters())[name].detach()
    expected = merged_delta(tiny_model_dir, adapter, name.removesuffix(".weight"))
    assert (w - w0 - expected).abs().max().item() < 1e-5
    engine = HFEngine(merged)
    assert len(engine.generate([engine.tokenizer("12+34=")["input_ids"]], SamplingParams(n=1, max_new_tokens=4))[0]) == 1
