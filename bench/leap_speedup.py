"""Do leaps beat the best learning rate? Learner steps to 50 / 80 / 96% of the best plain run's gain, at >= 5 seeds.

One workload (`--workload`): arith (the tiny model, deploy/jobs/arith.yaml), arith_full (the same job,
full-parameter: learner.lora null), digitsum (the same job on the sharpening task digitsum) or smollm2
(SmolLM2-135M-Instruct on deploy/jobs/smollm2.yaml); --prompts replaces the job's prompts per step. Every run evaluates
held-out greedy accuracy every --eval-every learner steps on the same --eval-size problems (paired across runs;
`eval_stderr` is one evaluation's binomial standard error at the baseline's final accuracy).

1. **Sweep.** Plain runs at each --lrs learning rate, each seed. The reference gain G is the largest mean final gain
   over the sweep (final accuracy minus the base model's). The best lr is the one that reaches 80% of G in the
   fewest mean learner steps among the stable ones (mean final accuracy within 2 eval_stderr of the best); the
   sweep should reach past it (`sweep_passes_best`: some larger lr is slower or unstable).
2. **Methods**, each at the best lr: outer momentum (learner.outer_momentum: `outer_eta*`, `snoo`), no extra
   passes, and outer momentum at a fraction of it (`outer_eta2_half_lr`, `outer_eta3_third_lr`: the outer step
   amplifies the K-step net displacement of a smaller, less noisy inner step); checkpoint-based leaps judged by their paired evaluation alone (`*_none`, extrapolate.judge: none) or
   against a control branch (`*_control`); `relex_early`, one leap at step 2 from the checkpoints of steps 1 and 2,
   for runs too short for the leap policy above, `relex_early_logprob`, the same decided by the reference answers'
   log-prob, and `relex_early_scales`, the same with a half-length candidate beside it (a method may set `run` fields too: its checkpoint spacing).

For a run, steps_to[f] is the learner step at which held-out accuracy first reaches base + f% of G, linearly
interpolated between the two evaluations around the crossing (a run that never gets there counts the run's whole
length, run.steps, even when leaps skipped some of it, and is flagged in `reached`). Learner steps include a control branch's. compute_to[f] adds each run's extra
passes up to that point in step equivalents: a learner step generates and trains P x G sequences (~4 forward
passes each: one to sample, three for the update), a leap evaluation scores eval_size greedy sequences (~1 forward
pass each) per candidate, per current policy and per judged branch, so extra = sequences / (4 P G).
speedup_vs_best_lr[f] = mean baseline steps / mean method steps (null when there is no gain to reach); `ci` is
its 95% bootstrap interval over seeds
(paired resampling, 4000 draws; crude with few seeds); `steps_ci` (the baseline's `ci`) is mean +- 1.96 SE over seeds.
Before the JSON it prints the workload's Markdown table (docs/results.md's).

    .venv/bin/python bench/leap_speedup.py --workload arith [--seeds 0 1 2 3 4] [--lrs ...] [--methods ...]
        [--steps N] [--eval-every 2] [--eval-size N] [--prompts N] [--records FILE]
With --records, every finished run's record is appended to FILE (JSON lines) and a later invocation with the same
file reuses the runs it holds (same workload, name, seed, lr, steps, eval settings): a bench stopped part-way
continues where it stopped.
Last line: JSON {workload, prompts_per_step, baseline: {lr, final_acc, steps_to {50, 80, 96}, ci}, methods: {m: {lr, steps_to,
steps_ci, compute_to, final_acc, speedup_vs_best_lr, ci (of the speedup), reached}}, sweep: {lr: {final_acc, steps_to}}, gain, base_acc,
seeds, eval_every, eval_stderr, sweep_passes_best}.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.run_dir import EVENTS, METRICS, append_jsonl, read_jsonl  # noqa: E402
from services.config import load_config, parse_config  # noqa: E402
from services.loop import run_job  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FRACTIONS = (50, 80, 96)
WORKLOADS = {  # job file, task override, lr sweep, run length, evaluation set size
    "arith": {"job": "deploy/jobs/arith.yaml", "task": None, "lrs": [5e-4, 1e-3, 2e-3, 3e-3, 4e-3], "steps": 60,
              "eval_size": 300},
    "digitsum": {"job": "deploy/jobs/arith.yaml", "task": "digitsum", "lrs": [5e-4, 1e-3, 2e-3, 3e-3], "steps": 60,
                 "eval_size": 300},
    "smollm2": {"job": "deploy/jobs/smollm2.yaml", "task": None, "lrs": [5e-4, 1e-3, 2e-3], "steps": 8,
                "eval_size": 64},  # ~30 s per step on one CPU thread: 8-step runs, 2 seeds (--seeds 0 1)
    # full-parameter RL (learner.lora: null), the regime of three of the four papers; leaps are dense
    "arith_full": {"job": "deploy/jobs/arith.yaml", "task": None, "lrs": [2.5e-5, 5e-5, 1e-4, 2e-4, 4e-4],
                   "steps": 60, "eval_size": 300, "learner": {"lora": None}},
}
OUTER = {"every": 4, "mu": 0.0, "guard_margin": 0.0}
LEAP = {"window": 3, "horizon": 6, "min_horizon": 2, "start_after": 6, "leap_every": 6, "judge_after": 3,
        "backtest_threshold": 0.5}
METHODS = {
    "outer_eta1.5": {"outer_momentum": {**OUTER, "eta": 1.5}},
    "outer_eta2": {"outer_momentum": {**OUTER, "eta": 2.0}},
    "snoo": {"outer_momentum": {**OUTER, "eta": 1.0, "mu": 0.5}},
    "growth_none": {"extrapolate": {**LEAP, "method": "growth", "judge": "none"}},
    "rl_extra_none": {"extrapolate": {**LEAP, "method": "rl_extra", "judge": "none"}},
    # the rank-1 leap: the window-end weights plus the line-fitted growth of each module's top direction only
    # (proposed whatever its backtest: its forecast of the next checkpoint sits below the growth gate of 0.5)
    "alpharl_none": {"extrapolate": {**LEAP, "method": "alpharl", "judge": "none", "backtest_threshold": -1.0}},
    "growth_control": {"extrapolate": {**LEAP, "method": "growth", "judge": "control"}},
    # one early leap for short runs (a pretrained model that gets most of its gain in a few steps): RELEX's line
    # through the checkpoints of steps 1 and 2 (a checkpoint every step), 4 steps ahead, kept if its paired
    # evaluation beats the current policy by accept_margin; then training goes on from it
    "relex_early": {"run": {"checkpoint_every": 1}, "extrapolate": {
        "method": "relex", "window": 2, "horizon": 4, "min_horizon": 4, "scales": [1.0], "start_after": 2,
        "leap_every": 1000, "judge": "none", "backtest_threshold": -1.0}},
    # the same line with a half-length candidate beside it (+2 and +4 steps): the paired evaluation keeps the better
    # one, so an overshooting line can still leap a shorter way
    "relex_early_scales": {"run": {"checkpoint_every": 1}, "extrapolate": {
        "method": "relex", "window": 2, "horizon": 4, "min_horizon": 4, "scales": [0.5, 1.0], "start_after": 2,
        "leap_every": 1000, "judge": "none", "backtest_threshold": -1.0}},
    # the same leap decided by the reference answers' mean token log-prob (smooth) instead of greedy accuracy
    "relex_early_logprob": {"run": {"checkpoint_every": 1}, "extrapolate": {
        "method": "relex", "window": 2, "horizon": 4, "min_horizon": 4, "scales": [1.0], "start_after": 2,
        "leap_every": 1000, "judge": "none", "backtest_threshold": -1.0, "decision_metric": "reference_logprob"}},
    # outer momentum on a smaller inner step: does amplifying the K-step net displacement beat the bigger step?
    "outer_eta2_half_lr": {"lr_factor": 0.5, "outer_momentum": {**OUTER, "eta": 2.0}},
    "outer_eta3_third_lr": {"lr_factor": 1 / 3, "outer_momentum": {**OUTER, "eta": 3.0}},
}


def crossing(curve: list[tuple[int, float]], level: float) -> float | None:
    """The learner step where the accuracy curve [(learner_steps, acc), ...] first reaches `level`, interpolated
    linearly between the evaluation below it and the one at or above it; None when it never does."""
    if curve and curve[0][1] >= level:
        return float(curve[0][0])
    for (s0, a0), (s1, a1) in pairwise(curve):
        if a1 >= level:  # a0 < level <= a1
            return s0 + (level - a0) / (a1 - a0) * (s1 - s0)
    return None


def extra_sequences(run_dir: Path, eval_size: int) -> list[tuple[float, int]]:
    """(time, greedy sequences scored) of every leap evaluation in a run: a proposal scores the current policy and
    each candidate; a control branch, its leap branch; a verdict, the branch it judges."""
    out = []
    for e in read_jsonl(run_dir / EVENTS) if (run_dir / EVENTS).exists() else []:
        if e["type"] == "proposal":
            out.append((e["time"], eval_size * (1 + len(e["candidates"]))))
        elif e["type"] == "control_branch" or (e["type"] in ("leap_paid", "leap_rolled_back")
                                                and e.get("judge") in ("control", "trend")):
            out.append((e["time"], eval_size))
    return out


def run_record(run_dir: Path, summary, leap_eval_size: int, step_sequences: int) -> dict:
    """A run's accuracy curve (learner steps, accuracy, time) and its extra passes."""
    rows = [r for r in read_jsonl(run_dir / METRICS) if "eval_accuracy" in r]
    times = {(r["step"], r["learner_steps"]): r["time"] for r in rows}
    curve = [(e["learner_steps"], e["accuracy"], times[(e["step"], e["learner_steps"])]) for e in summary.evals]
    return {"curve": curve, "final_acc": summary.acc_after, "learner_steps": summary.learner_steps,
            "extra": extra_sequences(run_dir, leap_eval_size), "step_sequences": step_sequences}


def steps_to(record: dict, level: float) -> tuple[float, bool]:
    """(learner steps to `level`, reached); a run that never gets there counts its whole length (`steps`)."""
    s = crossing([(c[0], c[1]) for c in record["curve"]], level)
    return (s, True) if s is not None else (float(record.get("steps", record["learner_steps"])), False)


def compute_to(record: dict, level: float) -> float:
    """steps_to plus the extra passes made before the crossing, in learner-step equivalents."""
    steps, reached = steps_to(record, level)
    curve = record["curve"]
    if not reached:
        until = math.inf
    else:  # the wall time at the crossing, interpolated like the step
        until = curve[-1][2]
        for (s0, _, t0), (s1, _, t1) in pairwise(curve):
            if s1 >= steps:
                until = t0 + (steps - s0) / (s1 - s0) * (t1 - t0) if s1 > s0 else t1
                break
    sequences = sum(n for t, n in record["extra"] if t <= until)
    return steps + sequences / (4 * record["step_sequences"])


def mean_ci(values: list[float]) -> tuple[float, list[float]]:
    m = statistics.mean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return m, [m - half, m + half]


def speedup(base: list[float], method: list[float]) -> float | None:
    """mean(base) / mean(method); None when the method's runs are at the level from step 0 (no gain to reach, as
    when the sweep did not improve on the base model)."""
    return statistics.mean(base) / statistics.mean(method) if statistics.mean(method) > 0 else None


def ratio_ci(base: list[float], method: list[float], draws: int = 4000) -> list[float] | None:
    """95% bootstrap interval of mean(base) / mean(method), resampling seeds (pairs) with replacement; None when a
    resample has no method steps to divide by."""
    rng, n, ratios = random.Random(0), len(base), []
    for _ in range(draws):
        idx = [rng.randrange(n) for _ in range(n)]
        ratio = speedup([base[i] for i in idx], [method[i] for i in idx])
        if ratio is None:
            return None
        ratios.append(ratio)
    ratios.sort()
    return [ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]]


def ratio_text(ratio: float | None, ci: list[float] | None) -> str:
    return "no gain to reach" if ratio is None or ci is None else f"{ratio:.2f}x [{ci[0]:.2f}, {ci[1]:.2f}]"


def method_lr(best_lr: float, name: str) -> float:
    """A method's inner learning rate: the best plain lr, times its lr_factor when it has one."""
    return best_lr * METHODS[name].get("lr_factor", 1.0)


def markdown_table(result: dict) -> str:
    """docs/results.md's table of one workload: the plain sweep, then each method at the best lr (steps to 50 / 80 / 96%
    of the gain with 95% CIs, the speedup at each with its bootstrap CI, compute to 80%, final accuracy)."""
    def steps(fig: dict) -> str:  # (k/n): only k of the n seeds got there (the others count their full run)
        return " / ".join(f"{fig['steps_to'][f]:.1f} [{fig['steps_ci'][f][0]:.1f}, {fig['steps_ci'][f][1]:.1f}]"
                          + ("" if all(fig["reached"][f]) else f" ({sum(fig['reached'][f])}/{len(fig['reached'][f])})")
                          for f in FRACTIONS)

    lines = [f"workload {result['workload']}: base {result['base_acc']:.3f}, gain to reach {result['gain']:.3f}, "
             f"{len(result['seeds'])} seeds, evaluation every {result['eval_every']} steps on {result['eval_size']} "
             f"problems (SE {result['eval_stderr']:.3f}), {result['prompts_per_step']} prompts per step", "",
             "| run | lr | learner steps to 50 / 80 / 96% of the gain [95% CI] | speedup vs best lr at 50 / 80 / 96% "
             "[95% CI] | compute to 80% | final acc |", "|---|---|---|---|---|---|"]
    for lr, fig in result["sweep"].items():
        best = " (best)" if float(lr) == result["baseline"]["lr"] else ""
        lines.append(f"| plain{best} | {lr} | 80%: {fig['steps_to_80']:.1f} | | | {fig['final_acc']:.3f} |")
    base = result["baseline"]
    lines.append(f"| plain, best lr | {base['lr']:g} | {steps(base)} | 1 | {base['compute_to'][80]:.1f} | "
                 f"{base['final_acc']:.3f} |")
    for name, m in result["methods"].items():
        lines.append(f"| {name} | {m['lr']:g} | {steps(m)} | "
                     + " / ".join(ratio_text(m["speedup_vs_best_lr"][f], m["ci"][f]) for f in FRACTIONS)
                     + f" | {m['compute_to'][80]:.1f} | {m['final_acc']:.3f} |")
    return "\n".join(lines)


def job(args, workload: dict, seed: int, lr: float, overrides: dict):
    """The workload's job at this seed and lr, evaluated every eval_every steps, with a method's overrides."""
    d = load_config(REPO / workload["job"]).model_dump(mode="json", exclude_unset=True)
    d.pop("extrapolate", None)
    if workload["task"]:
        d["rollout"]["task"] = workload["task"]
    d["rollout"]["eval_size"] = args.eval_size
    if getattr(args, "prompts", None):
        d["rollout"]["prompts_per_step"] = args.prompts
    learner = {k: v for k, v in overrides.items() if k not in ("extrapolate", "lr_factor", "run")}
    d["learner"] = {**d["learner"], **workload.get("learner", {}), "lr": lr, **learner}
    d["run"] = {**d["run"], "seed": seed, "steps": args.steps, "eval_every": args.eval_every, "checkpoint_every": 2,
                **overrides.get("run", {})}
    if "extrapolate" in overrides:
        d["extrapolate"] = {**overrides["extrapolate"], "eval_size": args.eval_size}
    return parse_config(d)


def parse_run_arguments(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, dict]:
    """Add the arguments every run of a workload takes, parse, and fill the workload's defaults: (args, workload)."""
    parser.add_argument("--steps", type=int, help="learner steps per run (default: the workload's)")
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--eval-size", type=int, help="held-out problems per evaluation (default: the workload's)")
    parser.add_argument("--prompts", type=int, help="rollout.prompts_per_step (default: the job's)")
    parser.add_argument("--records", type=Path, help="JSON-lines file of finished runs, reused and appended to")
    args = parser.parse_args()
    workload = WORKLOADS[args.workload]
    args.lrs = args.lrs or workload["lrs"]
    args.steps = args.steps or workload["steps"]
    args.eval_size = args.eval_size or workload["eval_size"]
    return args, workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="arith")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--lrs", type=float, nargs="+", help="the plain sweep (default: the workload's)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args, workload = parse_run_arguments(parser)
    runs: dict[str, list[dict]] = {}
    done = {r["key"]: r for r in read_jsonl(args.records)} if args.records else {}

    with tempfile.TemporaryDirectory(prefix="leapfrog-leap-speedup-") as tmp:
        def run(name: str, seed: int, lr: float, overrides: dict) -> dict:
            key = json.dumps([args.workload, name, seed, lr, args.steps, args.eval_every, args.eval_size, overrides]
                             + ([args.prompts] if args.prompts else []))
            if key in done:
                return {"steps": args.steps, **done[key]}
            cfg = job(args, workload, seed, lr, overrides)
            out = Path(tmp) / f"{name}-s{seed}"
            summary = run_job(cfg, run_dir=out, progress=False)
            record = {"steps": args.steps, **run_record(out, summary, args.eval_size,
                                                          cfg.rollout.prompts_per_step * cfg.rollout.group_size)}
            print(f"{name:18s} seed {seed}: lr {lr:.2g}, final {summary.acc_after:.3f}, {summary.learner_steps} "
                  f"learner steps, {summary.seconds:.0f} s" + (f", leaps {summary.leaps}" if summary.leaps else ""),
                  flush=True)
            if args.records:
                append_jsonl(args.records, {"key": key, **record})
            return record

        for lr in args.lrs:
            runs[f"lr={lr:g}"] = [run(f"plain-lr{lr:g}", seed, lr, {}) for seed in args.seeds]
        base_acc = runs[f"lr={args.lrs[0]:g}"][0]["curve"][0][1]  # step 0: the base model, the same for every run
        finals = {lr: statistics.mean(r["final_acc"] for r in runs[f"lr={lr:g}"]) for lr in args.lrs}
        gain = max(finals.values()) - base_acc
        best_final = max(finals.values())
        eval_stderr = math.sqrt(max(best_final * (1 - best_final), 1e-9) / args.eval_size)
        level = {f: base_acc + f / 100 * gain for f in FRACTIONS}
        mean_steps = {lr: statistics.mean(steps_to(r, level[80])[0] for r in runs[f"lr={lr:g}"]) for lr in args.lrs}
        stable = [lr for lr in args.lrs if finals[lr] >= best_final - 2 * eval_stderr]
        best_lr = min(stable, key=lambda lr: mean_steps[lr])
        base_runs = runs[f"lr={best_lr:g}"]
        for name in args.methods:
            runs[name] = [run(name, seed, method_lr(best_lr, name), METHODS[name]) for seed in args.seeds]

    def figures(records: list[dict]) -> dict:
        out = {"steps_to": {}, "steps_ci": {}, "compute_to": {}, "reached": {}}
        for f in FRACTIONS:
            steps = [steps_to(r, level[f]) for r in records]
            out["steps_to"][f], out["steps_ci"][f] = mean_ci([s for s, _ in steps])
            out["reached"][f] = [ok for _, ok in steps]
            out["compute_to"][f] = statistics.mean(compute_to(r, level[f]) for r in records)
        out["final_acc"] = statistics.mean(r["final_acc"] for r in records)
        return out

    baseline = {"lr": best_lr, **figures(base_runs)}
    baseline["ci"] = baseline["steps_ci"]
    methods = {}
    for name in args.methods:
        m = {"lr": method_lr(best_lr, name), **figures(runs[name])}
        base_steps = {f: [steps_to(r, level[f])[0] for r in base_runs] for f in FRACTIONS}
        m_steps = {f: [steps_to(r, level[f])[0] for r in runs[name]] for f in FRACTIONS}
        m["speedup_vs_best_lr"] = {f: speedup(base_steps[f], m_steps[f]) for f in FRACTIONS}
        m["ci"] = {f: ratio_ci(base_steps[f], m_steps[f]) for f in FRACTIONS}
        methods[name] = m
    sweep = {f"{lr:g}": {"final_acc": finals[lr], "steps_to_80": mean_steps[lr]} for lr in args.lrs}
    prompts = job(args, workload, args.seeds[0], best_lr, {}).rollout.prompts_per_step
    result = {"workload": args.workload, "prompts_per_step": prompts, "baseline": baseline, "methods": methods,
              "sweep": sweep, "gain": gain,
              "base_acc": base_acc, "seeds": args.seeds, "steps": args.steps, "eval_every": args.eval_every,
              "eval_size": args.eval_size, "eval_stderr": eval_stderr,
              "sweep_passes_best": any(lr > best_lr for lr in args.lrs)}
    print(markdown_table(result))
    print(f"base {base_acc:.3f}, gain {gain:.3f} (eval SE {eval_stderr:.3f}); best plain lr {best_lr:g}: steps to "
          + ", ".join(f"{f}% {baseline['steps_to'][f]:.1f}" for f in FRACTIONS))
    for name, m in methods.items():
        print(f"{name:18s}: " + ", ".join(f"{f}% {m['steps_to'][f]:.1f} ({ratio_text(m['speedup_vs_best_lr'][f], m['ci'][f])})"
                                          for f in FRACTIONS) + f", final {m['final_acc']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
