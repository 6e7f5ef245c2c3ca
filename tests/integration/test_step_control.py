"""The step controllers and the lr-free optimizers in real runs of the default model: the adaptive step controller
with c fixed at 1 is plain training bit for bit; it lowers c on a run whose lr is far too high and raises it on one
far too low; a run stopped and resumed mid-run continues exactly like the run that was not stopped, for the
controller, the reward-trend lr controller, Prodigy and Schedule-Free AdamW; Schedule-Free's checkpoints hold its
evaluation weights x, and they load in `leapfrog eval` and `export`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.run_dir import checkpoint_dir, read_jsonl
from services.config import parse_config
from services.loop import run_job

pytestmark = pytest.mark.integration

ADAPTIVE = {"adaptive_step": {"every": 2, "probe_size": 16}}


def job(model_dir, learner: dict, steps: int = 4, lr: float = 2e-3):
    return parse_config({
        "model": {"path": str(model_dir)},
        "rollout": {"task": "arith", "prompts_per_step": 8, "group_size": 4, "eval_size": 16},
        "learner": {"lr": lr, **learner},
        "run": {"steps": steps, "checkpoint_every": 2, "eval_every": steps, "seed": 3},
    })


def adapter(run_dir, step):
    return load_file(str(checkpoint_dir(run_dir, step) / "adapter_model.safetensors"))


def step_rows(run_dir):
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


@pytest.fixture(scope="module")
def plain_run(default_model_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("plain") / "run"
    run_job(job(default_model_dir, {}), run_dir=run_dir, progress=False)
    return run_dir


def test_fixed_scale_one_is_plain_training_bit_for_bit(default_model_dir, plain_run, tmp_path):
    fixed = {"adaptive_step": {**ADAPTIVE["adaptive_step"], "fixed_scale": 1.0}}
    run_job(job(default_model_dir, fixed), run_dir=tmp_path / "fixed", progress=False)
    plain, ours = adapter(plain_run, 4), adapter(tmp_path / "fixed", 4)
    assert plain.keys() == ours.keys() and all(torch.equal(plain[k], ours[k]) for k in plain)
    assert [r["loss"] for r in step_rows(plain_run)] == [r["loss"] for r in step_rows(tmp_path / "fixed")]
    decisions = [r["adaptive/decision"] for r in step_rows(tmp_path / "fixed") if "adaptive/decision" in r]
    assert decisions == ["fixed", "fixed"]  # the probe was scored at steps 2 and 4 and changed nothing


@pytest.mark.parametrize(("lr", "direction"), [(1e-5, "up"), (0.05, "down")])
def test_the_controller_lengthens_a_tiny_step_and_shortens_a_huge_one(default_model_dir, tmp_path, lr, direction):
    """The first decision (step 2: no reward history yet, so no brake). Checked on seeds 0, 1, 2 and 5: a
    1e-5 step is always lengthened and a 0.05 step always shortened, whatever the sampled trajectory."""
    run_job(job(default_model_dir, ADAPTIVE, steps=2, lr=lr), run_dir=tmp_path / "run", progress=False)
    scale = step_rows(tmp_path / "run")[-1]["adaptive/applied_scale"]
    assert (scale > 1) if direction == "up" else (scale < 1), scale


@pytest.mark.parametrize("learner", [
    ADAPTIVE, {"lr_control": {"every": 1}}, {"optimizer": "prodigy", "lr": 1.0, "prodigy_d0": 1e-3},
    {"optimizer": "schedule_free_adamw", "warmup_steps": 1}], ids=["adaptive", "lr_control", "prodigy", "schedule_free"])
def test_stop_and_resume_equals_the_straight_run(default_model_dir, tmp_path, learner):
    run_job(job(default_model_dir, learner), run_dir=tmp_path / "straight", progress=False)
    stopped = tmp_path / "stopped"
    run_job(job(default_model_dir, learner), run_dir=stopped, progress=False, stop_after=2)
    run_job(job(default_model_dir, learner), run_dir=stopped, resume=True, progress=False)
    a, b = adapter(tmp_path / "straight", 4), adapter(stopped, 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    keys = [k for k in step_rows(stopped)[-1] if k.startswith(("adaptive/scale", "lr", "prodigy_d", "loss"))]
    assert keys and [{k: r[k] for k in keys} for r in step_rows(tmp_path / "straight")] == \
        [{k: r[k] for k in keys} for r in step_rows(stopped)]


@pytest.mark.parametrize("optimizer", ["prodigy", "schedule_free_adamw"])
def test_checkpoints_load_in_eval_and_export(default_model_dir, tmp_path, capsys, optimizer):
    """Schedule-Free's checkpoints hold its evaluation weights x (saved in eval mode); Prodigy's and Schedule-Free's
    checkpoints are standard adapters that `leapfrog eval` and `export` take."""
    from services.cli import main

    run_job(job(default_model_dir, {"optimizer": optimizer}, steps=2), run_dir=tmp_path / "run", progress=False)
    ckpt = checkpoint_dir(tmp_path / "run", 2)
    if optimizer == "schedule_free_adamw":
        state = torch.load(ckpt / "state.pt", weights_only=False)
        assert state["optimizer"]["param_groups"][0]["train_mode"] is False  # the weights written are x, not y
        assert all("z" in s for s in state["optimizer"]["state"].values())
    assert main(["eval", str(ckpt), "--task", "arith", "--size", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == 4
    assert main(["export", str(ckpt), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    assert (tmp_path / "merged" / "config.json").is_file()


@pytest.mark.parametrize("learner", [{"optimizer": "prodigy", "lr": 1.0, "prodigy_d0": 1e-3},
                                     {"optimizer": "schedule_free_adamw"}], ids=["prodigy", "schedule_free"])
def test_the_optimizers_train_on_ray_as_in_one_process(ray_local, default_model_dir, tmp_path, learner):
    from services.driver import run_on_ray

    cfg = parse_config({**job(default_model_dir, learner, steps=2).model_dump(mode="json", exclude_unset=True),
                        "learner": {"lr": 2e-3, **learner, "num_cpus": 0.5}})
    cfg.rollout.engine, cfg.rollout.worker_cpus = "hf", 0.5
    run_job(cfg, run_dir=tmp_path / "local", progress=False)
    run_on_ray(cfg, tmp_path / "ray", progress=False)
    a, b = step_rows(tmp_path / "local"), step_rows(tmp_path / "ray")
    assert [r["reward_mean"] for r in a] == [r["reward_mean"] for r in b]  # step 2 sampled the same weights
    assert all(abs(x["loss"] - y["loss"]) < 1e-5 for x, y in zip(a, b, strict=True))
    assert checkpoint_dir(tmp_path / "ray", 2).is_dir()


def test_a_leap_moves_schedule_free_z_with_x(tiny_model_dir, tmp_path):
    """Schedule-Free trains at y, an interpolation of z and x: a leap that moved x alone would be half undone at the
    next step, so apply_leap moves z by the same displacement."""
    from safetensors.torch import save_file

    from learner.algorithms import GRPO
    from learner.config import GRPOConfig, LoraConfig, ModelConfig
    from learner.learner import Learner
    from rollout.engines.base import SamplingParams
    from rollout.engines.hf import HFEngine

    cfg = GRPOConfig(lr=1e-2, lora=LoraConfig(r=2, alpha=4), optimizer="schedule_free_adamw")
    learner = Learner(tiny_model_dir, ModelConfig(device="cpu"), cfg, seed=0, total_steps=2, max_new_tokens=4)
    prompts = [learner.tokenizer(p)["input_ids"] for p in ("12+34=", "5+55=")]
    groups = HFEngine(model=learner.model, tokenizer=learner.tokenizer).generate(
        prompts, SamplingParams(n=4, max_new_tokens=4, seed=0))
    learner.step(GRPO(cfg).make_batch(groups, [float(i % 2) for i in range(8)]))
    path, _ = learner.publish_weights(tmp_path)
    weights = load_file(str(Path(path) / "adapter_model.safetensors"))
    save_file({k: v + 0.01 for k, v in weights.items()}, str(Path(path) / "adapter_model.safetensors"))
    before = {n: (p.detach().clone(), learner.optimizer.state[p]["z"].clone()) for n, p in learner.trainable.items()}
    learner.apply_leap(path, horizon=1)
    for name, p in learner.trainable.items():
        x0, z0 = before[name]
        assert torch.allclose(p - x0, torch.full_like(p, 0.01), atol=1e-6)
        assert torch.allclose(learner.optimizer.state[p]["z"] - z0, p - x0, atol=1e-6)
