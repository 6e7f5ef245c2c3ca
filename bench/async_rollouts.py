"""Asynchronous rollouts on Ray: the same job with rollout.max_off_policy_steps k = 0 (synchronous), 1 and 2, one
rollout worker beside the learner (one CPU each on this 2-core machine), plus k = 2 with the rollout correction off.

Every run trains on the same number of samples (--steps x prompts_per_step x group_size). Per run: seconds per
learner step and samples (completions) per second over the steps after the first (warm-up), the held-out greedy
accuracy at the end with its standard error sqrt(p (1 - p) / n) (n = the job's eval_size problems, the same for
every run), the mean staleness of the batches, and the mismatch between the engine's sampling log-probs and the
learner's (mismatch/kl = mean over tokens of log pi_engine - log pi_learner; mismatch/corrected_fraction = the
share of the correction's weights that were truncated). Seeds: --seeds; figures are means over them (stderr too:
every seed scores the same problems, so it is not divided by the seeds), the standard error of a difference
between two runs sqrt(se_a^2 + se_b^2).

    .venv/bin/python bench/async_rollouts.py [--job deploy/jobs/smollm2.yaml] [--steps 12] [--seeds 0]
    .venv/bin/python bench/async_rollouts.py --smoke       # the default model on arith, 2 steps (the test's)
Last line: JSON {job, steps, seeds, samples_per_step, runs: {k0, k1, k2, k2_uncorrected: {s_per_step,
samples_per_s, acc_before, acc_after, stderr, staleness, mismatch_kl, corrected_fraction}}, speedup: {k1, k2}
(samples per second over k0's), acc_diff_over_se: {k1, k2} (acc_after - k0's, over the difference's standard
error)}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"k0": (0, "auto"), "k1": (1, "auto"), "k2": (2, "auto"), "k2_uncorrected": (2, "off")}


def job(args, seed: int, k: int, correction: str):
    from services.config import load_config

    cfg = load_config(REPO / args.job)
    if args.smoke:
        from learner.bootstrap import bootstrap

        cfg.model.path = str(bootstrap("arith", 0, progress=False))
        cfg.rollout.prompts_per_step, cfg.rollout.group_size, cfg.rollout.eval_size = 8, 4, 16
    cfg.run.seed, cfg.run.steps = seed, args.steps
    cfg.run.eval_every = cfg.run.checkpoint_every = args.steps
    cfg.rollout.engine, cfg.rollout.num_workers, cfg.rollout.worker_cpus = "hf", 1, 1.0
    cfg.rollout.max_off_policy_steps = k
    cfg.learner.num_cpus = 1.0
    cfg.learner.rollout_correction = correction
    return cfg


def figures(run_dir: Path, summary, cfg) -> dict:
    from common.run_dir import METRICS, read_jsonl

    rows = [r for r in read_jsonl(run_dir / METRICS) if "loss" in r]
    times = [r["time"] for r in rows]
    s_per_step = (times[-1] - times[0]) / (len(times) - 1)
    n, acc = cfg.rollout.eval_size, summary.acc_after

    def mean(key):
        values = [r[key] for r in rows if key in r]
        return sum(values) / len(values) if values else 0.0

    return {"s_per_step": s_per_step,
            "samples_per_s": cfg.rollout.prompts_per_step * cfg.rollout.group_size / s_per_step,
            "acc_before": summary.acc_before, "acc_after": acc, "stderr": math.sqrt(acc * (1 - acc) / n),
            "staleness": mean("async/staleness"), "mismatch_kl": mean("mismatch/kl"),
            "corrected_fraction": mean("mismatch/corrected_fraction"), "gen_s": mean("gen_s")}


def main() -> None:
    import ray

    from services.driver import run_on_ray

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default="deploy/jobs/smollm2.yaml")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--smoke", action="store_true", help="the default model on arith (deploy/jobs/arith.yaml)")
    args = parser.parse_args()
    if args.smoke:
        args.job = "deploy/jobs/arith.yaml"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="lfa-", dir="/tmp"))
    per_seed: dict[str, list[dict]] = {name: [] for name in args.variants}
    with tempfile.TemporaryDirectory(prefix="leapfrog-async-") as tmp:
        for seed in args.seeds:
            for name in args.variants:
                cfg = job(args, seed, *VARIANTS[name])
                run_dir = Path(tmp) / f"{name}-seed{seed}"
                summary = run_on_ray(cfg, run_dir, progress=False)
                fig = figures(run_dir, summary, cfg)
                per_seed[name].append(fig)
                print(f"seed {seed} {name}: {fig['s_per_step']:.2f} s/step, {fig['samples_per_s']:.2f} samples/s, "
                      f"acc {fig['acc_before']:.3f} -> {fig['acc_after']:.3f} +- {fig['stderr']:.3f}, staleness "
                      f"{fig['staleness']:.2f}, mismatch kl {fig['mismatch_kl']:.2e}, corrected "
                      f"{fig['corrected_fraction']:.3f}", flush=True)
    ray.shutdown()
    runs = {name: {key: sum(f[key] for f in figs) / len(figs) for key in figs[0]} for name, figs in per_seed.items()}
    base = runs.get("k0")
    speedup, acc_diff = {}, {}
    if base is not None:
        for name in ("k1", "k2"):
            if name in runs:
                speedup[name] = runs[name]["samples_per_s"] / base["samples_per_s"]
                se = math.sqrt(runs[name]["stderr"] ** 2 + base["stderr"] ** 2)
                acc_diff[name] = (runs[name]["acc_after"] - base["acc_after"]) / se if se > 0 else 0.0
    print("| run | s/step | samples/s | held-out acc (+- se) | staleness | mismatch kl | corrected |")
    print("|---|---|---|---|---|---|---|")
    for name, f in runs.items():
        print(f"| {name} | {f['s_per_step']:.2f} | {f['samples_per_s']:.2f} | {f['acc_after']:.3f} +- "
              f"{f['stderr']:.3f} | {f['staleness']:.2f} | {f['mismatch_kl']:.2e} | {f['corrected_fraction']:.3f} |")
    cfg = job(args, args.seeds[0], 0, "auto")
    print(json.dumps({"job": args.job, "steps": args.steps, "seeds": args.seeds,
                      "samples_per_step": cfg.rollout.prompts_per_step * cfg.rollout.group_size,
                      "runs": {n: {k: round(v, 6) for k, v in f.items()} for n, f in runs.items()},
                      "speedup": {k: round(v, 4) for k, v in speedup.items()},
                      "acc_diff_over_se": {k: round(v, 3) for k, v in acc_diff.items()}}))


if __name__ == "__main__":
    main()
