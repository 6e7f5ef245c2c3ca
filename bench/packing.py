"""The learner step padded vs padding-free (learner.padding_free) on one batch with a realistic spread of lengths.

SmolLM2-135M-Instruct with LoRA r 8; 64 sequences, prompts of 30-60 tokens, completion lengths drawn from a
log-normal (median 40 tokens, clipped to [4, 256]): RL completions are long-tailed, so padding every micro-batch to
its longest sequence wastes most of it. Each variant runs in its own process (its peak resident memory is its own):
one warm-up step, then --steps timed learner steps (forward, backward, optimizer) on the same batch. Reported per
variant: seconds per step (mean and sample std), peak RSS, the tokens the forward passes process (rows x width) and
the share of them that is padding.

    .venv/bin/python bench/packing.py [--steps 3] [--micro-batch 16]
    .venv/bin/python bench/packing.py --smoke      # the default model, 16 short sequences (the test's)
Last line: JSON {model, sequences, steps, padded: {s_per_step, s_std, peak_rss_mb, forward_tokens, padding_share},
packed: {...}, speedup (padded s / packed s), memory_ratio (packed / padded peak RSS)}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")


def batch(vocab: int, sequences: int, smoke: bool, seed: int = 0):
    rng = random.Random(seed)
    prompts, completions = [], []
    for _ in range(sequences):
        prompts.append([rng.randrange(3, vocab) for _ in range(rng.randint(30, 60) if not smoke else rng.randint(4, 12))])
        n = min(256, max(4, round(rng.lognormvariate(3.7, 0.9)))) if not smoke else rng.randint(1, 16)
        completions.append([rng.randrange(3, vocab) for _ in range(n)])
    return prompts, completions


def run_variant(args) -> dict:
    import torch

    from learner.algorithms import RolloutBatch
    from learner.config import GRPOConfig, ModelConfig
    from learner.learner import Learner
    from learner.losses import LossSettings
    from learner.policy import pack_rows

    torch.set_num_threads(args.threads)
    if args.smoke:
        from learner.bootstrap import bootstrap

        model_dir = bootstrap("arith", 0, progress=False)
    else:
        from learner.models import resolve_model

        model_dir = resolve_model("smollm2-135m-instruct", progress=False)
    cfg = GRPOConfig(lr=1e-4, micro_batch_size=args.micro_batch, padding_free=args.variant == "packed")
    learner = Learner(model_dir, ModelConfig(device="cpu"), cfg, seed=0, total_steps=100, max_new_tokens=256)
    prompts, completions = batch(len(learner.tokenizer), args.sequences, args.smoke)
    rng = random.Random(1)
    rollout = RolloutBatch(prompt_ids=prompts, completion_ids=completions, rewards=[0.0] * len(prompts), group_size=4,
                           loss=LossSettings(), advantages=[rng.gauss(0, 1) for _ in prompts])
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]
    forward, real = 0, sum(lengths)
    for i in range(0, len(lengths), args.micro_batch):
        part = lengths[i:i + args.micro_batch]
        rows = len(pack_rows(part, max(part))) if args.variant == "packed" else len(part)
        forward += rows * max(part)
    learner.step(rollout)  # warm-up
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        learner.step(rollout)
        times.append(time.perf_counter() - t0)
    return {"s_per_step": statistics.mean(times), "s_std": statistics.stdev(times) if len(times) > 1 else 0.0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "forward_tokens": forward,
            "padding_share": 1 - real / forward}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--variant", choices=["padded", "packed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.sequences = 16
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    out = {}
    for variant in ("padded", "packed"):
        cmd = [sys.executable, __file__, "--variant", variant, "--steps", str(args.steps), "--sequences",
               str(args.sequences), "--micro-batch", str(args.micro_batch), "--threads", str(args.threads)]
        res = subprocess.run(cmd + (["--smoke"] if args.smoke else []), capture_output=True, text=True, check=True)
        out[variant] = json.loads(res.stdout.strip().splitlines()[-1])
        f = out[variant]
        print(f"{variant}: {f['s_per_step']:.2f} +- {f['s_std']:.2f} s/step, peak RSS {f['peak_rss_mb']:.0f} MB, "
              f"{f['forward_tokens']} forward tokens ({100 * f['padding_share']:.0f}% padding)", flush=True)
    print(json.dumps({"model": "default (arith)" if args.smoke else "SmolLM2-135M-Instruct",
                      "sequences": args.sequences, "steps": args.steps, **out,
                      "speedup": round(out["padded"]["s_per_step"] / out["packed"]["s_per_step"], 4),
                      "memory_ratio": round(out["packed"]["peak_rss_mb"] / out["padded"]["peak_rss_mb"], 4)}))


if __name__ == "__main__":
    main()
