"""Do the extrapolators predict a real run? Every method, from one window, against the checkpoints it forecasts.

One run of the reference job (deploy/jobs/arith.yaml: 80 GRPO steps, here with a checkpoint every 5), then from the
window of checkpoints ending at --window-end (default 30, 37% of the run) every extrapolator (rl_extra, alpharl step form,
relex, growth, next) predicts the weights at each later checkpoint. Each prediction is written as a leap adapter
and evaluated greedily on a fresh held-out set (--eval-size problems drawn with a seed the run never used; no
method has a tunable fitted on it), paired with the actual checkpoint at that step and with simply keeping the
window-end checkpoint ("keep"); a target a method cannot reach from this window (NExt: horizon + 2 checkpoints)
is reported as such. Printed per method and target: acc_pred, acc_actual, the paired difference to
keep with its standard error, and the relative weight error ||W^ - W_T|| / ||W_T - W_0|| (and the cosine of
predicted vs actual displacement from the window end).

    .venv/bin/python bench/extrapolation.py [--config deploy/jobs/arith.yaml] [--window-end 30] [--eval-size 2000]
Last line: JSON {"window_end", "eval_size", "keep_acc", "methods": {m: {target: {acc_pred, acc_actual,
rel_weight_err, cos_disp, diff_vs_keep, se_vs_keep}}}, "winner": {target: best method}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.config import load_config  # noqa: E402
from services.runner import run_job  # noqa: E402

METHODS = ("rl_extra", "alpharl", "relex", "growth", "next")


def main() -> None:
    from extrapolate.checkpoints import find_adapter_checkpoints, read_lora
    from extrapolate.extrapolators import EXTRAPOLATORS
    from extrapolate.leap import write_leap_adapter
    from extrapolate.predictability import forecast_error
    from rollout.engines.hf import HFEngine
    from rollout.evaluate import greedy_scores, paired_difference
    from rollout.prompts import PromptEncoder
    from rollout.rewards import Scorer
    from rollout.tasks import load_task

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="deploy/jobs/arith.yaml")
    parser.add_argument("--window-end", type=int, default=30)
    parser.add_argument("--eval-size", type=int, default=2000)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--checkpoint-every", type=int, default=5,
                        help="checkpoint spacing of the run (NExt needs a window of horizon + 2 checkpoints)")
    parser.add_argument("--target-every", type=int, default=10, help="evaluate predictions every this many steps")
    args = parser.parse_args()
    cfg = load_config(args.config)
    cfg.run.checkpoint_every = args.checkpoint_every
    task = load_task(cfg.rollout.task)
    examples = task.examples("test", args.eval_size, seed=424242)
    with tempfile.TemporaryDirectory(prefix="leapfrog-extrapolation-") as tmp:
        run_dir = Path(tmp) / "run"
        summary = run_job(cfg, run_dir=run_dir, progress=True)
        checkpoints = find_adapter_checkpoints(run_dir)
        states = {s: read_lora(p) for s, p in checkpoints}
        paths = dict(checkpoints)
        base_dir = json.loads((paths[args.window_end] / "adapter_config.json").read_text())["base_model_name_or_path"]
        window = [(s, states[s]) for s, _ in checkpoints if s <= args.window_end]
        targets = [s for s, _ in checkpoints if s > args.window_end and
                   ((s - args.window_end) % args.target_every == 0 or s == checkpoints[-1][0])]

        encoder = PromptEncoder.from_model_dir(base_dir, cfg.rollout.chat_template, cfg.rollout.system_prompt)

        def scores(adapter) -> list[float]:
            return greedy_scores(HFEngine(base_dir, adapter_path=adapter), Scorer.for_job([], task, task.max_new_tokens),
                                 examples, encoder, task.max_new_tokens)

        keep = scores(paths[args.window_end])
        actual = {t: scores(paths[t]) for t in targets}
        table: dict = {}
        for method in args.methods:
            extrapolator = EXTRAPOLATORS.get(method)().fit(window)
            table[method] = {}
            for target in targets:
                try:
                    prediction = extrapolator.predict(target)
                except ValueError as err:  # e.g. NExt: a horizon longer than its window supports
                    table[method][target] = {"error": str(err)}
                    print(f"{method:9s} -> step {target:4d}: no prediction ({err})", flush=True)
                    continue
                leap = write_leap_adapter(Path(tmp) / f"{method}-{target}", paths[args.window_end], prediction, {},
                                          report={"method": method, "target_step": target})
                pred = scores(leap)
                diff, se = paired_difference(pred, keep)
                err = forecast_error(prediction, states[args.window_end], states[target])
                table[method][target] = {"acc_pred": sum(pred) / len(pred), "acc_actual": sum(actual[target]) /
                                         len(actual[target]), "rel_weight_err": err["rel_err"],
                                         "cos_disp": err["cos"], "diff_vs_keep": diff, "se_vs_keep": se}
                print(f"{method:9s} -> step {target:4d}: predicted {table[method][target]['acc_pred']:.3f}, actual "
                      f"{table[method][target]['acc_actual']:.3f}, keep {sum(keep) / len(keep):.3f} "
                      f"(pred - keep {100 * diff:+.1f} +- {100 * se:.1f} points), rel. weight error "
                      f"{err['rel_err']:.2f}, cos(displacement) {err['cos']:.2f}", flush=True)
    winner = {t: max((m for m in table if "acc_pred" in table[m][t]), key=lambda m: table[m][t]["acc_pred"])
              for t in targets}
    print(json.dumps({"config": args.config, "steps": cfg.run.steps, "window_end": args.window_end,
                      "eval_size": args.eval_size, "run_acc_after": summary.acc_after,
                      "keep_acc": sum(keep) / len(keep), "methods": table, "winner": winner}))


if __name__ == "__main__":
    main()
