"""The learner step on one rank vs a learner group of N ranks (learner.num_workers, sharding ddp or fsdp) on the same
batch and the same cores, side by side.

SmolLM2-135M-Instruct with LoRA r 8, padding-free; 64 sequences with bench/packing.py's realistic length spread
(prompts 30-60 tokens, log-normal completions, median 40). One rank gets every thread (--threads); a group of N ranks
gets threads / N each, one process per rank on gloo, so the comparison spends the same cores. One warm-up step, then
--steps timed steps (forward, backward, gradient reduction, optimizer). Reported per variant: seconds per step (mean
and sample std over the timed steps), each rank's peak RSS, and every step's loss and gradient norm, which must equal
the one rank's up to float32 summation order (the group computes the same update: docs/architecture.md#learner-group;
the gradient norm depends on the weights the earlier steps reached, so it checks the whole trajectory).

    .venv/bin/python bench/learner_group.py [--steps 3] [--ranks 2] [--sharding ddp]
    .venv/bin/python bench/learner_group.py --smoke     # the default model, 12 short sequences, 1 step (the test's)
Last line: JSON {model, sequences, steps, threads, one_rank: {s_per_step, s_std, peak_rss_mb: [per rank], losses},
group: {...}, ranks, sharding, speedup (one-rank s / group s), max_loss_rel_diff, max_grad_norm_rel_diff}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
warnings.filterwarnings("ignore")


def model_dir(smoke: bool) -> Path:
    if smoke:
        from learner.bootstrap import bootstrap

        return bootstrap("arith", 0, progress=False)
    from learner.models import resolve_model

    return resolve_model("smollm2-135m-instruct", progress=False)


def run_rank(rank: int, args, world: int, address: str | None, out_dir: str) -> None:
    """One rank's timed learner steps; its figures to out_dir/rank<r>.json."""
    import torch
    from packing import batch

    from learner.algorithms import RolloutBatch
    from learner.config import GRPOConfig, LoraConfig, ModelConfig
    from learner.learner import Learner
    from learner.losses import LossSettings

    warnings.filterwarnings("ignore")
    cfg = GRPOConfig(lr=1e-4, micro_batch_size=args.micro_batch, padding_free=True, lora=LoraConfig(r=8, alpha=16),
                     num_workers=world, sharding=args.sharding if world > 1 else "none")
    learner = Learner(model_dir(args.smoke), ModelConfig(device="cpu"), cfg, seed=0, total_steps=100,
                      max_new_tokens=256, num_threads=max(1, args.threads // world), rank=rank, group_address=address)
    prompts, completions = batch(len(learner.tokenizer), args.sequences, args.smoke)
    rng = random.Random(1)
    rollout = RolloutBatch(prompt_ids=prompts, completion_ids=completions, rewards=[0.0] * len(prompts), group_size=4,
                           loss=LossSettings(), advantages=[rng.gauss(0, 1) for _ in prompts])
    stats = [learner.step(rollout)]  # warm-up
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        stats.append(learner.step(rollout))
        times.append(time.perf_counter() - t0)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({
        "times": times, "losses": [s["loss"] for s in stats], "grad_norms": [s["grad_norm"] for s in stats],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    learner.group.close()
    torch.set_num_threads(1)


def run_variant(args, world: int) -> dict:
    import tempfile

    import torch.multiprocessing as mp

    from services.runtime import free_port

    with tempfile.TemporaryDirectory(prefix="leapfrog-bench-group-") as out:
        address = f"tcp://127.0.0.1:{free_port()}" if world > 1 else None
        mp.spawn(run_rank, args=(args, world, address, out), nprocs=world)
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
    times = ranks[0]["times"]
    return {"s_per_step": statistics.mean(times), "s_std": statistics.stdev(times) if len(times) > 1 else 0.0,
            "peak_rss_mb": [r["peak_rss_mb"] for r in ranks], "losses": ranks[0]["losses"],
            "grad_norms": ranks[0]["grad_norms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--sharding", choices=["ddp", "fsdp"], default="ddp")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.ranks < 2:
        parser.error("--ranks: a group has 2 ranks or more")
    if args.smoke:
        args.sequences, args.steps, args.micro_batch = 12, 1, 3
    out = {}
    for name, world in (("one_rank", 1), ("group", args.ranks)):
        out[name] = f = run_variant(args, world)
        print(f"{name} ({world} rank(s), {max(1, args.threads // world)} thread(s) each): {f['s_per_step']:.2f} +- "
              f"{f['s_std']:.2f} s/step, peak RSS per rank {', '.join(f'{m:.0f}' for m in f['peak_rss_mb'])} MB",
              flush=True)
    def rel_diff(key: str) -> float:
        return max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(out["one_rank"][key], out["group"][key], strict=True))

    diff, norm_diff = rel_diff("losses"), rel_diff("grad_norms")
    print(f"losses equal to {diff:.1e} and gradient norms to {norm_diff:.1e} relative (float32 summation order)")
    print(json.dumps({"model": "default (arith)" if args.smoke else "SmolLM2-135M-Instruct",
                      "sequences": args.sequences, "steps": args.steps, "threads": args.threads, **out,
                      "ranks": args.ranks, "sharding": args.sharding,
                      "speedup": round(out["one_rank"]["s_per_step"] / out["group"]["s_per_step"], 4),
                      "max_loss_rel_diff": diff, "max_grad_norm_rel_diff": norm_diff}))


if __name__ == "__main__":
    main()
