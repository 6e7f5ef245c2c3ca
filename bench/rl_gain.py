"""Does RL improve the bootstrapped default model? The reference arith job for several seeds.

Runs deploy/jobs/arith.yaml (bootstrapping the default model first if needed) once per RL seed and reports
held-out greedy accuracy before and after, the accuracy curve, and how the gain splits between the first and
second half of the step budget (both positive = still rising at the end, not a plateau).

    .venv/bin/python bench/rl_gain.py [--seeds 0 1 2] [--config deploy/jobs/arith.yaml]
Last line: JSON with acc_before, acc_after (lists, one per seed), min_gain_points, curves, half-budget gains.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.config import load_config  # noqa: E402
from services.loop import run_job  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="deploy/jobs/arith.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    before, after, curves, first_half, second_half, seconds = [], [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="leapfrog-rl-gain-") as tmp:
        for seed in args.seeds:
            cfg = load_config(args.config)
            cfg.run.seed = seed
            cfg.extrapolate = None  # plain RL
            summary = run_job(cfg, run_dir=Path(tmp) / f"seed{seed}", progress=True)
            curve = {e["step"]: e["accuracy"] for e in summary.evals}
            mid = min(curve, key=lambda s: abs(s - cfg.run.steps / 2))
            before.append(summary.acc_before)
            after.append(summary.acc_after)
            curves.append(curve)
            first_half.append(curve[mid] - summary.acc_before)
            second_half.append(summary.acc_after - curve[mid])
            seconds.append(summary.seconds)
            print(f"seed {seed}: {summary.acc_before:.3f} -> {summary.acc_after:.3f} "
                  f"(step {mid}: {curve[mid]:.3f}) in {summary.seconds:.0f} s", flush=True)
    gains = [100 * (a - b) for a, b in zip(after, before, strict=True)]
    result = {"config": args.config, "seeds": args.seeds, "steps": cfg.run.steps, "eval_size": cfg.rollout.eval_size,
              "acc_before": before, "acc_after": after, "gain_points": gains, "min_gain_points": min(gains),
              "first_half_gain_points": [100 * g for g in first_half],
              "second_half_gain_points": [100 * g for g in second_half],
              "curves": curves, "seconds": seconds}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
