"""Do I still need a learning-rate sweep? One run from a guessed lr against a plain lr sweep, per contender.

1. **Sweep.** Plain runs at each --lrs learning rate and seed fix the best lr L* exactly as bench/leap_speedup.py
   does (the reference gain G is the largest mean final gain; L* reaches 80% of G in the fewest mean learner steps
   among the stable lrs).
2. **Contenders**, each from each start lr in {L*/10, L*/3, L*, 3 L*} (the factors "0.1", "0.33", "1", "3"):
   `plain` (factor "1" is the best-lr run), `adaptive` (learner.adaptive_step: the K-step update rescaled along its
   line by the reference answers' log-prob), `lr_control` (learner.lr_control: the reward-trend lr
   controller, no evaluation), `prodigy` (learner.optimizer prodigy, lr 1 and d0 = the start lr; "default": its
   documented d0 1e-6) and `schedule_free` (learner.optimizer schedule_free_adamw at the start lr; "default": its
   documented lr 0.0025).

Per contender and start lr: learner steps to 50 / 80 / 96% of G (interpolated between evaluations; a run that never
gets there counts its whole length), compute to the same levels in learner-step equivalents (a learner step
generates and trains P x G sequences, ~4 forward passes each; an adaptive probe pass scores probe_size reference
answers, ~1 forward pass each: extra = sequences / (4 P G)), final accuracy, and 95% CIs over seeds (mean +- 1.96 SE).
`sweep_compute` is the sweep's total (its runs' learner steps, every lr, one seed's worth); `goal` checks, for the
adaptive controller at every start factor, 80% of G within 1.25x of the best-lr run's steps and a final accuracy
within 2 final_stderr (one evaluation's binomial SE at the best final accuracy) of the best-lr run's.

    .venv/bin/python bench/sweep_free.py --workload arith [--seeds 0 1 2 3 4] [--lrs ...] [--contenders ...]
        [--factors 0.1 0.33 1 3] [--steps N] [--eval-every 2] [--eval-size N] [--prompts N] [--records FILE]
--records FILE reuses and appends finished runs (JSON lines), so a bench stopped part-way continues where it stopped.
Last line: JSON {workload, best_lr, sweep_compute, seeds, steps, gain, base_acc, final_stderr, sweep: {lr: {final_acc,
steps_to_80}}, contenders: {name: {factor: {lr, steps_to, steps_ci, compute_to, final_acc, ci, reached, run_compute}}},
goal: {factor: {steps_ratio_80, final_gap, met}}, goal_met}.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from leap_speedup import (  # noqa: E402
    FRACTIONS,
    compute_to,
    job,
    mean_ci,
    parse_run_arguments,
    run_record,
    steps_to,
)

from common.run_dir import METRICS, append_jsonl, read_jsonl  # noqa: E402
from services.loop import run_job  # noqa: E402

FACTORS = ("0.1", "0.33", "1", "3")
PROBE_SIZE = 64
CONTENDERS = {  # name -> (start lr, factor) -> learner overrides; the lr given is the start lr
    "plain": lambda lr: {},
    "adaptive": lambda lr: {"adaptive_step": {"every": 2, "probe_size": PROBE_SIZE}},
    "lr_control": lambda lr: {"lr_control": {"every": 2}},
    "prodigy": lambda lr: {"optimizer": "prodigy", "lr": 1.0, "prodigy_d0": lr},
    "schedule_free": lambda lr: {"optimizer": "schedule_free_adamw"},
}
DEFAULTS = {  # the documented settings, beside the start lrs
    "prodigy": ({"optimizer": "prodigy", "lr": 1.0, "prodigy_d0": 1e-6}, 1.0),
    "schedule_free": ({"optimizer": "schedule_free_adamw"}, 0.0025),
}


def probe_extra(run_dir: Path, probe_size: int) -> list[tuple[float, int]]:
    """(time, sequences scored) of the adaptive controller's probe passes, from the metrics rows' running count."""
    out, seen = [], 0
    for row in read_jsonl(run_dir / METRICS):
        passes = row.get("adaptive/probe_passes")
        if passes is not None and passes > seen:
            out.append((row["time"], (passes - seen) * probe_size))
            seen = passes
    return out


def total_compute(record: dict) -> float:
    """A whole run's compute in learner-step equivalents (its learner steps plus its extra passes)."""
    return record["learner_steps"] + sum(n for _, n in record["extra"]) / (4 * record["step_sequences"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["arith", "digitsum", "smollm2"], default="arith")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--lrs", type=float, nargs="+", help="the plain sweep (default: the workload's)")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    parser.add_argument("--factors", nargs="+", default=list(FACTORS), choices=list(FACTORS))
    args, workload = parse_run_arguments(parser)
    done = {r["key"]: r for r in read_jsonl(args.records)} if args.records else {}

    with tempfile.TemporaryDirectory(prefix="leapfrog-sweep-free-") as tmp:
        def run(name: str, seed: int, lr: float, overrides: dict) -> dict:
            key = json.dumps(["sweep_free", args.workload, name, seed, lr, args.steps, args.eval_every,
                              args.eval_size, overrides] + ([args.prompts] if args.prompts else []))
            if key in done:
                return done[key]
            cfg = job(args, workload, seed, lr, overrides)
            out = Path(tmp) / f"{name}-s{seed}"
            summary = run_job(cfg, run_dir=out, progress=False)
            step_sequences = cfg.rollout.prompts_per_step * cfg.rollout.group_size
            record = {"steps": args.steps, **run_record(out, summary, args.eval_size, step_sequences)}
            record["extra"] += probe_extra(out, PROBE_SIZE)
            print(f"{name:24s} seed {seed}: lr {lr:.3g}, final {summary.acc_after:.3f}, {summary.seconds:.0f} s",
                  flush=True)
            if args.records:
                append_jsonl(args.records, {"key": key, **record})
            return record

        sweep = {lr: [run(f"plain-lr{lr:g}", s, lr, {}) for s in args.seeds] for lr in args.lrs}
        base_acc = sweep[args.lrs[0]][0]["curve"][0][1]
        finals = {lr: statistics.mean(r["final_acc"] for r in runs) for lr, runs in sweep.items()}
        best_final = max(finals.values())
        gain = best_final - base_acc
        final_stderr = math.sqrt(max(best_final * (1 - best_final), 1e-9) / args.eval_size)
        level = {f: base_acc + f / 100 * gain for f in FRACTIONS}
        mean_steps = {lr: statistics.mean(steps_to(r, level[80])[0] for r in runs) for lr, runs in sweep.items()}
        best_lr = min((lr for lr in args.lrs if finals[lr] >= best_final - 2 * final_stderr),
                      key=lambda lr: mean_steps[lr])

        runs: dict[str, dict[str, tuple[float, list[dict]]]] = {}
        for name in args.contenders:
            runs[name] = {}
            for factor in args.factors:
                lr = best_lr * float(factor) if factor != "0.33" else best_lr / 3
                if name == "plain" and factor == "1":
                    runs[name][factor] = (lr, sweep[best_lr])
                    continue
                runs[name][factor] = (lr, [run(f"{name}-x{factor}", s, lr, CONTENDERS[name](lr)) for s in args.seeds])
            if name in DEFAULTS:
                overrides, lr = DEFAULTS[name]
                runs[name]["default"] = (lr, [run(f"{name}-default", s, lr, overrides) for s in args.seeds])

    def figures(lr: float, records: list[dict]) -> dict:
        out = {"lr": lr, "steps_to": {}, "steps_ci": {}, "compute_to": {}, "reached": {}}
        for f in FRACTIONS:
            steps = [steps_to(r, level[f]) for r in records]
            out["steps_to"][f], out["steps_ci"][f] = mean_ci([s for s, _ in steps])
            out["reached"][f] = [ok for _, ok in steps]
            out["compute_to"][f] = statistics.mean(compute_to(r, level[f]) for r in records)
        out["final_acc"], out["ci"] = mean_ci([r["final_acc"] for r in records])
        out["run_compute"] = statistics.mean(total_compute(r) for r in records)
        return out

    contenders = {name: {factor: figures(lr, records) for factor, (lr, records) in by_factor.items()}
                  for name, by_factor in runs.items()}
    best = figures(best_lr, sweep[best_lr])
    goal = {}
    for factor, fig in contenders.get("adaptive", {}).items():
        ratio = fig["steps_to"][80] / best["steps_to"][80] if best["steps_to"][80] > 0 else None
        gap = fig["final_acc"] - best["final_acc"]
        goal[factor] = {"steps_ratio_80": ratio, "final_gap": gap,
                        "met": ratio is not None and ratio <= 1.25 and all(fig["reached"][80])
                        and gap >= -2 * final_stderr}
    result = {"workload": args.workload, "best_lr": best_lr, "seeds": args.seeds, "steps": args.steps,
              "eval_every": args.eval_every, "eval_size": args.eval_size, "base_acc": base_acc, "gain": gain,
              "final_stderr": final_stderr, "sweep_compute": float(len(args.lrs) * args.steps),
              "sweep": {f"{lr:g}": {"final_acc": finals[lr], "steps_to_80": mean_steps[lr]} for lr in args.lrs},
              "contenders": contenders, "goal": goal, "goal_met": bool(goal) and all(g["met"] for g in goal.values())}
    print(markdown_table(result))
    print(json.dumps(result))


def markdown_table(result: dict) -> str:
    """docs/results.md's table of one workload: each contender at each start lr."""
    lines = [f"workload {result['workload']}: best plain lr {result['best_lr']:g}, base {result['base_acc']:.3f}, "
             f"gain to reach {result['gain']:.3f}, {len(result['seeds'])} seeds x {result['steps']} steps, evaluation "
             f"every {result['eval_every']} steps on {result['eval_size']} problems (SE {result['final_stderr']:.3f}); "
             f"the sweep costs {result['sweep_compute']:.0f} learner steps per seed", "",
             "| contender | start lr | learner steps to 50 / 80 / 96% of the gain [95% CI] | compute to 80% | "
             "whole run's compute | final acc [95% CI] |", "|---|---|---|---|---|---|"]
    for name, by_factor in result["contenders"].items():
        for factor, fig in by_factor.items():
            steps = " / ".join(
                f"{fig['steps_to'][f]:.1f} [{fig['steps_ci'][f][0]:.1f}, {fig['steps_ci'][f][1]:.1f}]"
                + ("" if all(fig["reached"][f]) else f" ({sum(fig['reached'][f])}/{len(fig['reached'][f])})")
                for f in FRACTIONS)
            start = f"{fig['lr']:.3g}" + (f" (x{factor})" if factor != "default" else " (documented)")
            lines.append(f"| {name} | {start} | {steps} | {fig['compute_to'][80]:.1f} | {fig['run_compute']:.1f} | "
                         f"{fig['final_acc']:.3f} [{fig['ci'][0]:.3f}, {fig['ci'][1]:.3f}] |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
