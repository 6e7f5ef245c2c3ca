"""GPU readiness: the SmolLM2 reference job for a few steps on every GPU of the machine, on Ray: a learner group
of one rank per GPU (learner.num_workers = the GPU count; sharding ddp, or --sharding fsdp, with 2 or more) on CUDA in
bfloat16, and one vLLM rollout worker (the CUDA `vllm` package) per GPU beside it (fixed memory shares), then the
engine-vs-learner log-prob agreement on a fresh vLLM batch.

Prints s/step, rollout tokens/s, learner tokens/s (completion tokens trained per second of learner step), each rank's
peak allocated GPU memory and the device's used memory, and the agreement (mean and max |log p_vLLM - log p_learner|
per token; bf16 on both sides, so ~1e-2 is expected). Checks: every step ran, the loss is finite, mean |diff| < 0.05.
Finishes in a few minutes on one GPU. On a machine without CUDA (or without vLLM) it says so and exits 0 without
doing anything.

    .venv/bin/python bench/gpu_check.py [--steps 4] [--sharding ddp|fsdp]
Last line: JSON {gpu, ok, gpus, sharding, s_per_step, tokens_per_s, learner_tokens_per_s, learner_gpu_peak_mb,
learner_gpu_peak_mb_per_rank, device_used_mb, logprob_mean_abs_diff, logprob_max_abs_diff, checks}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def gpu_job(args, gpus: int):
    from services.config import load_config

    cfg = load_config(ROOT / "deploy" / "jobs" / "smollm2.yaml")
    cfg.model.device, cfg.model.dtype = "cuda", "bfloat16"
    cfg.rollout.engine = "vllm"
    cfg.rollout.vllm.gpu_memory_utilization = args.vllm_memory
    cfg.rollout.vllm.max_model_len = 512
    # colocated: on every GPU one learner rank and one rollout worker, a fixed share each
    cfg.learner.num_workers, cfg.learner.sharding = gpus, args.sharding if gpus > 1 else "none"
    cfg.rollout.num_workers = gpus
    cfg.learner.num_gpus, cfg.rollout.worker_gpus = 0.5, 0.5
    cfg.learner.num_cpus, cfg.rollout.worker_cpus = 1.0, 1.0
    cfg.rollout.prompts_per_step, cfg.rollout.group_size = args.prompts, args.group
    cfg.rollout.eval_size = 64
    cfg.run.steps, cfg.run.eval_every, cfg.run.checkpoint_every = args.steps, args.steps, args.steps
    return cfg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--vllm-memory", type=float, default=0.3)
    parser.add_argument("--sharding", choices=["ddp", "fsdp"], default="ddp", help="the learner group's, with 2+ GPUs")
    args = parser.parse_args()
    import torch

    from rollout.engines.vllm import vllm_available

    if not torch.cuda.is_available() or not vllm_available():
        reason = "no CUDA GPU visible" if not torch.cuda.is_available() else "vLLM is not installed"
        print(f"gpu_check: {reason}; nothing to check on this machine (run it where a GPU and the vllm package are)")
        print(json.dumps({"gpu": False, "ok": None, "reason": reason}))
        return 0
    import ray

    from common.run_dir import METRICS, read_jsonl
    from rollout.engines.base import SamplingParams
    from services.driver import run_on_ray
    from services.prepare import prepare_job
    from services.runtime import RayRuntime

    gpus = torch.cuda.device_count()
    cfg = gpu_job(args, gpus)
    ray.init(num_gpus=gpus, num_cpus=max(2 * gpus, os.cpu_count() or 2), include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    checks = {}
    with tempfile.TemporaryDirectory(prefix="leapfrog-gpu-check-") as tmp:
        started = time.time()
        summary = run_on_ray(cfg, Path(tmp) / "run", progress=False)
        rows = read_jsonl(Path(tmp) / "run" / METRICS)
        steps = [r for r in rows if "loss" in r]
        checks["all_steps_ran"] = summary.steps == args.steps and len(steps) == args.steps
        checks["loss_finite"] = all(r["loss"] == r["loss"] and abs(r["loss"]) < 1e6 for r in steps)
        timed = steps[1:] or steps  # the first step pays for compilation and CUDA graphs
        s_per_step = sum(r["step_s"] for r in timed) / len(timed)
        tokens_per_s = sum(r["completion_tokens"] for r in timed) / sum(r["gen_s"] for r in timed)
        learner_tokens_per_s = sum(r["completion_tokens"] for r in timed) / sum(r["learner_s"] for r in timed)
        learner_peak = max(r.get("gpu_peak_mb", 0.0) for r in steps)
        per_rank = [max(r.get(f"gpu_peak_mb/rank{k}", r.get("gpu_peak_mb", 0.0)) for r in steps) for k in range(gpus)]
        used = [torch.cuda.mem_get_info(k) for k in range(gpus)]
        device_used = max(total - free for free, total in used) / 2**20  # before the runtime below is torn down:
        # vLLM's share is still held

        job = prepare_job(cfg, "bench/gpu_check.py", runtime="ray", progress=False)
        runtime = RayRuntime(job, Path(tmp) / "agree")
        try:
            runtime.publish()
            prompts = job.encoder.ids(job.task.examples("test", 32, seed=3))
            flat = [c for g in runtime.generate(prompts, SamplingParams(n=4, max_new_tokens=32, seed=0)) for c in g]
            learner_logp = runtime._learner("logprobs", [c.prompt_ids for c in flat], [c.token_ids for c in flat])
        finally:
            runtime.close()
        diffs = [abs(a - b) for c, lp in zip(flat, learner_logp, strict=True)
                 for a, b in zip(c.logprobs, lp, strict=True)]
        mean_diff, max_diff = sum(diffs) / len(diffs), max(diffs)
        checks["logprobs_agree"] = mean_diff < 0.05
        seconds = time.time() - started
    ok = all(checks.values())
    print(f"gpu_check: {'OK' if ok else 'FAILED'} in {seconds:.0f} s on {gpus} GPU(s), learner "
          f"{cfg.learner.sharding if gpus > 1 else 'one rank'}: {s_per_step:.2f} s/step, {tokens_per_s:.0f} rollout "
          f"tokens/s, {learner_tokens_per_s:.0f} learner tokens/s, learner peak per rank "
          f"{', '.join(f'{m:.0f}' for m in per_rank)} MB, device used {device_used:.0f} MB, "
          f"log-prob |diff| mean {mean_diff:.4f} max {max_diff:.3f}; checks {checks}")
    print(json.dumps({"gpu": True, "ok": ok, "device": torch.cuda.get_device_name(0), "gpus": gpus,
                      "sharding": cfg.learner.sharding, "s_per_step": s_per_step, "tokens_per_s": tokens_per_s,
                      "learner_tokens_per_s": learner_tokens_per_s, "learner_gpu_peak_mb": learner_peak,
                      "learner_gpu_peak_mb_per_rank": per_rank, "device_used_mb": device_used,
                      "logprob_mean_abs_diff": mean_diff, "logprob_max_abs_diff": max_diff, "tokens_compared": len(diffs),
                      "checks": checks, "seconds": seconds, "steps": args.steps}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
