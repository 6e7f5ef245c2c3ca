"""The `leapfrog` command as a user runs it: a short run, its outputs, resume, and clear errors on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def leapfrog(*args, cwd=REPO):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def write_job(path, model_dir, steps=3):
    path.write_text(
        f"model:\n  path: {model_dir}\nrollout:\n  prompts_per_step: 4\n  group_size: 2\n  eval_size: 8\n"
        f"run:\n  steps: {steps}\n  checkpoint_every: 2\n  eval_every: 2\n")


def test_run_then_resume(tiny_model_dir, tmp_path):
    job = tmp_path / "job.yaml"
    write_job(job, tiny_model_dir)
    run_dir = tmp_path / "run"
    res = leapfrog("run", str(job), "--run-dir", str(run_dir), "--stop-after", "2")
    assert res.returncode == 0, res.stderr
    assert "held-out greedy accuracy" in res.stdout
    ckpt = run_dir / "checkpoints" / "step-000002"
    for f in ("adapter_model.safetensors", "adapter_config.json", "state.pt", "meta.json"):
        assert (ckpt / f).is_file()
    assert json.loads((ckpt / "meta.json").read_text())["step"] == 2
    res = leapfrog("run", "--resume", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert "resumed from" in res.stdout
    assert (run_dir / "checkpoints" / "step-000003").is_dir()
    steps = [json.loads(x).get("step") for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(3) >= 1 and max(steps) == 3
    res = leapfrog("eval", str(run_dir / "checkpoints" / "step-000003"), "--task", "arith", "--size", "8", "--n", "4")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert set(out["pass_at_k"]) == {"1", "2", "4"} and 0 <= out["greedy_accuracy"] <= 1


def test_bad_input_fails_before_work_and_names_the_field(tiny_model_dir, tmp_path):
    job = tmp_path / "bad.yaml"
    job.write_text("rollout:\n  group_size: 1\nlearner:\n  lr: -0.1\n  bogus: 1\n")
    res = leapfrog("run", str(job), "--run-dir", str(tmp_path / "r"))
    assert res.returncode == 2
    for needle in ("rollout.group_size", "learner.lr", "learner.bogus", "unknown field"):
        assert needle in res.stderr
    assert not (tmp_path / "r").exists()
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"model:\n  path: {tmp_path / 'nowhere'}\n")
    res = leapfrog("run", str(missing), "--run-dir", str(tmp_path / "r2"))
    assert res.returncode == 2 and "model.path" in res.stderr and "bootstrap" in res.stderr


def test_resume_refuses_a_corrupt_checkpoint(tiny_model_dir, tmp_path):
    job = tmp_path / "job.yaml"
    write_job(job, tiny_model_dir, steps=2)
    run_dir = tmp_path / "run"
    assert leapfrog("run", str(job), "--run-dir", str(run_dir)).returncode == 0
    state = run_dir / "checkpoints" / "step-000002" / "state.pt"
    state.write_bytes(b"garbage")
    res = leapfrog("run", "--resume", str(run_dir))
    assert res.returncode == 2 and "corrupt" in res.stderr
    assert state.read_bytes() == b"garbage"  # nothing rewritten


def test_config_schema_is_json():
    res = leapfrog("config", "schema")
    assert res.returncode == 0
    schema = json.loads(res.stdout)
    assert set(schema["properties"]) == {"model", "rollout", "learner", "run", "extrapolate", "data", "rewards"}


def test_eval_base_overrides_a_missing_recorded_base(tiny_model_dir, tmp_path, capsys):
    """An adapter whose recorded base model is gone (moved, another machine) is evaluated on --base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from services.cli import main

    adapter = tmp_path / "adapter"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")}))

    assert main(["eval", str(adapter), "--task", "arith", "--size", "4", "--base", str(tiny_model_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["problems"] == 4 and 0 <= out["greedy_accuracy"] <= 1

    assert main(["eval", str(adapter), "--task", "arith", "--size", "4"]) == 2
    err = capsys.readouterr().err
    assert "gone" in err and "--base DIR" in err
    assert main(["eval", str(adapter), "--task", "arith", "--size", "4", "--base", str(tmp_path / "nowhere")]) == 2
    assert "--base" in capsys.readouterr().err
