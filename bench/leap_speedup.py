"""Do leaps make RL reach its accuracy in fewer learner steps? Plain vs leaping vs a learning-rate control.

For each seed, the reference job (deploy/jobs/arith.yaml) is run (a) as plain GRPO + LoRA (its `extrapolate:`
section removed), (b) with leaps, once per extrapolator (the job's leap policy with `method` swapped; the job's
own method is the default policy), and (c) as a plain run whose learning rate is raised by the step-size boost the
leaps implied (trajectory steps per learner step of the default-policy run, at least 1.25x), so a forecast is told
apart from a bigger step. Same seeds, data order and evaluation problems everywhere (held-out greedy accuracy,
run.eval_every). For each: the learner steps (and wall seconds, extrapolation and leap evaluation included) until
held-out accuracy first reaches 96% of (a)'s final accuracy, on the run's final trajectory, and the final accuracy.

    .venv/bin/python bench/leap_speedup.py [--seeds 0 1 2] [--methods growth rl_extra alpharl relex next growth+reset growth+trend]
Last line: JSON {"baseline": {"steps", "final_acc", "steps_to_target"}, "methods": {m: {"steps_to_target",
"speedup", "final_acc", "wall_speedup", "net_steps_saved"}}, "lr_control": {...}, "best_speedup", "seeds"}
(means over seeds; a run that never reaches the target counts its full learner steps, flagged in "reached").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learner.run_dir import read_jsonl  # noqa: E402
from services.config import load_config  # noqa: E402
from services.runner import run_job  # noqa: E402


def reach(run_dir: Path, summary, target: float) -> dict:
    """Learner steps and wall seconds at the first evaluation on the final trajectory with accuracy >= target."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    start = rows[0]["time"]
    times = {(r["step"], r.get("learner_steps")): r["time"] - start for r in rows if "eval_accuracy" in r}
    for e in summary.evals:
        if e["accuracy"] >= target:
            return {"reached": True, "steps": e["learner_steps"], "seconds": times[(e["step"], e["learner_steps"])]}
    return {"reached": False, "steps": summary.learner_steps, "seconds": summary.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="deploy/jobs/arith.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["growth", "rl_extra", "alpharl", "relex", "next"])
    args = parser.parse_args()
    policy = load_config(args.config).extrapolate
    if policy is None:
        raise SystemExit(f"{args.config} has no extrapolate: section (the default leap policy)")
    runs: dict[str, list] = {"baseline": [], "lr_control": [], **{m: [] for m in args.methods}}
    with tempfile.TemporaryDirectory(prefix="leapfrog-leap-speedup-") as tmp:
        for seed in args.seeds:
            def run(name: str, extrapolate, lr_factor: float = 1.0, seed: int = seed):
                cfg = load_config(args.config)
                cfg.run.seed = seed
                cfg.extrapolate = extrapolate
                cfg.learner.lr *= lr_factor
                out = Path(tmp) / f"{name}-s{seed}"
                summary = run_job(cfg, run_dir=out, progress=False)
                print(f"seed {seed} {name:10s}: final {summary.acc_after:.3f}, {summary.learner_steps} learner steps, "
                      f"{summary.seconds:.0f} s" + (f", leaps {summary.leaps}" if summary.leaps else ""), flush=True)
                return out, summary

            base_dir, base = run("baseline", None)
            target = 0.96 * base.acc_after
            runs["baseline"].append({"final_acc": base.acc_after, **reach(base_dir, base, target),
                                     "steps_total": base.learner_steps})
            boost = 1.25
            for method in args.methods:  # variants: "growth+reset" (Adam's moments of B reset at each leap),
                name, *variants = method.split("+")  # "growth+trend" (judged by the trend, no control branch)
                unknown = set(variants) - {"reset", "trend"}
                if unknown:
                    raise SystemExit(f"unknown variant(s) {sorted(unknown)} in {method!r}: use +reset and/or +trend")
                out, summary = run(method, policy.model_copy(update={
                    "method": name, "reset_optimizer": "reset" in variants,
                    "judge": "trend" if "trend" in variants else policy.judge}))
                runs[method].append({"final_acc": summary.acc_after, **reach(out, summary, target),
                                     "net_steps_saved": summary.leaps["net_steps_saved"]})
                if method == policy.method:
                    boost = max(1.25, summary.steps / summary.learner_steps)
            out, summary = run("lr_control", None, boost)
            runs["lr_control"].append({"final_acc": summary.acc_after, **reach(out, summary, target), "lr_factor": boost})

    def mean(name, key):
        return statistics.mean(r[key] for r in runs[name])

    base_steps = mean("baseline", "steps")
    base_seconds = mean("baseline", "seconds")

    def entry(name):
        return {"steps_to_target": mean(name, "steps"), "speedup": base_steps / mean(name, "steps"),
                "wall_speedup": base_seconds / mean(name, "seconds"), "final_acc": mean(name, "final_acc"),
                "reached": [r["reached"] for r in runs[name]],
                **({"net_steps_saved": mean(name, "net_steps_saved")} if name in args.methods else {})}

    methods = {m: entry(m) for m in args.methods}
    result = {"config": args.config, "seeds": args.seeds, "default_method": policy.method,
              "baseline": {"steps": load_config(args.config).run.steps, "final_acc": mean("baseline", "final_acc"),
                           "steps_to_target": base_steps, "reached": [r["reached"] for r in runs["baseline"]]},
              "methods": methods, "lr_control": {**entry("lr_control"), "lr_factor": mean("lr_control", "lr_factor")},
              "best_speedup": max(m["speedup"] for m in methods.values())}
    print(f"baseline: {base_steps:.1f} learner steps to 96% of its final accuracy {result['baseline']['final_acc']:.3f}")
    for name, m in [*methods.items(), ("lr_control", result["lr_control"])]:
        print(f"{name:10s}: {m['steps_to_target']:.1f} steps (speedup {m['speedup']:.2f}x, wall {m['wall_speedup']:.2f}x), "
              f"final {m['final_acc']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
