"""Where do leaps pay at our scale? A sweep of gradient signal-to-noise: prompts per step x learning rate.

For each regime, the job (--config, default deploy/jobs/arith.yaml, with its leap policy; a job without one, such as
deploy/jobs/smollm2.yaml, gets bench/leap_speedup.py's growth_none policy) with rollout.prompts_per_step and
learner.lr replaced is run plain and with leaps (same seed). Reported per regime: the growth exponent p of the
plain run's update (median over modules; 1 = steady drift, 0.5 = random walk), the backtest cosine of the leap
method on the plain run (forecasting its last checkpoint from the one before; NaN, with `backtest_reason`, when the
method cannot fit that window), and the leap speedup: learner steps
for the plain run to reach 96% of its final held-out accuracy over the leaping run's steps to the same target
(the crossing interpolated between evaluations, bench/leap_speedup.py's steps_to).

    .venv/bin/python bench/leap_regimes.py [--prompts 16 64 128] [--lrs 2e-4 5e-4] [--steps 80] [--seed 0]
        [--config JOB] [--checkpoint-every N] [--eval-every N] [--eval-size N] [--policy '{"horizon": 2}']
Last line: JSON {"regimes": [{"prompts", "lr", "params", "p", "backtest_cos", "backtest_reason", "speedup", "final_plain",
"final_leap", "net_steps_saved"}]}.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

from common.run_dir import CHECKPOINTS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.leap_speedup import LEAP, run_record, steps_to  # noqa: E402
from extrapolate.analyze import analyze_run  # noqa: E402
from services.config import ExtrapolateConfig, load_config, parse_config  # noqa: E402
from services.loop import run_job  # noqa: E402


def base_params(run_dir: Path) -> int:
    """Parameter count of the run's base model (from its safetensors headers)."""
    from safetensors import safe_open

    meta = json.loads(next((run_dir / CHECKPOINTS).glob("step-*")).joinpath("meta.json").read_text())
    total = 0
    for file in Path(meta["base_model"]).glob("model*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                total += math.prod(handle.get_slice(key).get_shape())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="deploy/jobs/arith.yaml")
    parser.add_argument("--prompts", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--lrs", type=float, nargs="+", default=[2e-4, 5e-4])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, help="default: the job's")
    parser.add_argument("--eval-every", type=int, help="default: the job's")
    parser.add_argument("--eval-size", type=int, help="held-out problems per evaluation (default: the job's)")
    parser.add_argument("--policy", type=json.loads, default={},
                        help="JSON object of extrapolate fields over the leap policy (a short run needs a short "
                             "window and horizon: a proposal needs window + horizon / checkpoint_every checkpoints)")
    args = parser.parse_args()
    regimes = []
    job = load_config(args.config)
    policy = job.extrapolate or ExtrapolateConfig(**LEAP, method="growth", judge="none")
    policy = ExtrapolateConfig(**policy.model_dump() | ({"eval_size": args.eval_size} if args.eval_size else {})
                               | args.policy)
    method = policy.method
    base = job.model_dump(mode="json", exclude_unset=True)
    base.pop("extrapolate", None)
    with tempfile.TemporaryDirectory(prefix="leapfrog-leap-regimes-") as tmp:
        for prompts in args.prompts:
            for lr in args.lrs:
                def run(name, leaps, prompts=prompts, lr=lr):
                    d = copy.deepcopy(base)
                    d["rollout"] = {**d["rollout"], "prompts_per_step": prompts}
                    d["learner"] = {**d["learner"], "lr": lr}
                    d["run"] = {**d["run"], "steps": args.steps, "seed": args.seed}
                    for section, key in (("run", "checkpoint_every"), ("run", "eval_every"), ("rollout", "eval_size")):
                        if getattr(args, key):
                            d[section][key] = getattr(args, key)
                    if leaps:
                        d["extrapolate"] = policy.model_dump(mode="json")
                    cfg = parse_config(d)
                    out = Path(tmp) / f"{name}-p{prompts}-lr{lr:g}"
                    summary = run_job(cfg, run_dir=out, progress=False)
                    sequences = cfg.rollout.prompts_per_step * cfg.rollout.group_size
                    return out, summary, run_record(out, summary, cfg.rollout.eval_size, sequences)

                plain_dir, plain, plain_record = run("plain", False)
                _, leap, leap_record = run("leap", True)
                target = 0.96 * plain.acc_after
                analysis = analyze_run(plain_dir, progress=False)
                p = statistics.median(t["growth_p"] for t in analysis["by_type"].values())
                regime = {"prompts": prompts, "lr": lr, "params": base_params(plain_dir), "p": p,
                          "backtest_cos": analysis["backtest"][method]["cos"],
                          "backtest_reason": analysis["backtest"][method].get("reason"),
                          "speedup": steps_to(plain_record, target)[0] / steps_to(leap_record, target)[0],
                          "final_plain": plain.acc_after, "final_leap": leap.acc_after,
                          "net_steps_saved": leap.leaps["net_steps_saved"], "leaps": leap.leaps}
                regimes.append(regime)
                print(f"prompts {prompts:4d} lr {lr:g}: p {p:.2f}, backtest cos {regime['backtest_cos']:.2f}, "
                      f"speedup {regime['speedup']:.2f}x, final plain {plain.acc_after:.3f} / leaping "
                      f"{leap.acc_after:.3f}, net steps saved {regime['net_steps_saved']}"
                      + (f" (no backtest: {regime['backtest_reason']})" if regime["backtest_reason"] else ""), flush=True)
    print(json.dumps({"config": args.config, "steps": args.steps, "seed": args.seed, "regimes": regimes}))


if __name__ == "__main__":
    main()
