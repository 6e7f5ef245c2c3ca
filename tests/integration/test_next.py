"""NExt trains its shared per-size networks on a real run's rank-1 triplets (loss falls) and its leap is a valid
rank r + 1 adapter that loads in PEFT."""

from __future__ import annotations

import json

import pytest
import torch

from extrapolate.checkpoints import find_adapter_checkpoints, read_lora
from extrapolate.extrapolators import extrapolate_run
from extrapolate.next import NExt
from services.config import parse_config
from services.loop import run_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run_dir(default_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("next") / "run"
    cfg = parse_config({"model": {"path": str(default_model_dir)},
                        "rollout": {"prompts_per_step": 16, "group_size": 4, "eval_size": 16},
                        "learner": {"lr": 2e-3}, "run": {"steps": 10, "checkpoint_every": 2, "eval_every": 10}})
    run_job(cfg, run_dir=out, progress=False)
    return out


def test_next_learns_and_writes_a_leap(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(NExt, "train_steps", 200)
    states = [(s, read_lora(p)) for s, p in find_adapter_checkpoints(run_dir) if s <= 8]
    model = NExt().fit(states)
    pred = model.predict(10)
    for losses in model.losses.values():
        assert losses[-1] < losses[0]
    name = "model.layers.0.self_attn.q_proj"
    b, a = pred[name]
    assert b.shape[1] == states[-1][1][name].b.shape[1] + 1 and torch.isfinite(b).all()
    leap = extrapolate_run(run_dir, "next", window_end=8, target_step=10, out_dir=tmp_path / "leap")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = json.loads((leap / "adapter_config.json").read_text())["base_model_name_or_path"]
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(leap))


def test_next_needs_a_long_enough_window(run_dir, tmp_path):
    with pytest.raises(ValueError, match="needs a window"):
        extrapolate_run(run_dir, "next", window_end=6, target_step=20, out_dir=tmp_path / "x")
