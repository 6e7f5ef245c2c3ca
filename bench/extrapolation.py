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

`--protocol P` runs instead one paper's own protocol on `--workload W` (the jobs of bench/leap_speedup.py: arith,
digitsum, smollm2), scaled to the run's length T, scored on the same fresh held-out set with paired standard errors:
- alpharl: a checkpoint every ~T/27 steps (the authors' 27); AlphaRL fitted on the first 30% of the run; the leap
  goes to the run's end, no training after it; against keeping the window end and against the real end checkpoint.
- relex: a checkpoint every step; RELEX fitted on the first 15%; the leap goes to the run's end; same comparisons.
- next: NExt's single leap inside a run (the product's leap, judge none, scale 1.5, always applied): a predictor
  fitted on the checkpoints up to 37.5% of T, a leap of T/8 steps, then T/4 more RL steps (the authors': +50 from
  step 150, 100 more steps, against GRPO at 400); against the plain run at the same learner steps and at T.
- rl_extra: re-grounding, alpha = 2 every K steps (W <- W_(t-K) + 2 (W_t - W_(t-K)): learner.outer_momentum with
  eta 2, mu 0, no guard), for each K of --ks; against the plain run at T/2 and at T.
`--lr` runs a protocol at another learning rate than the job's (the best plain lr of bench/leap_speedup.py, say);
`--curve` (alpharl, relex) also scores the base model and every checkpoint of the run, and reports how many learner
steps plain training needs to reach the leap's accuracy and 80% of the run's gain, against the window's steps.
- past_end: leaping past the end of a finished run (RELEX's claim of extrapolating far past the observed prefix at
  no training cost): a run of T steps (at --lr: the best plain lr, say) with a checkpoint every ~T/20 steps; RELEX
  and AlphaRL fitted on all of its checkpoints predict the weights at T x each of --multiples; each leap against the
  final checkpoint (paired).
Last line: JSON {protocol, workload, steps, eval_size, ...per protocol: accuracies and [diff, se] pairs}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.config import load_config  # noqa: E402
from services.loop import run_job  # noqa: E402

METHODS = ("rl_extra", "alpharl", "relex", "growth", "next")
PROTOCOLS = ("window", "alpharl", "relex", "next", "rl_extra", "past_end")
FRESH_SEED = 424242  # the held-out problems no run evaluates on


def fresh_scores(cfg, eval_size: int):
    """scores(adapter dir) -> per-problem greedy accuracies on eval_size fresh held-out problems of the job's task."""
    from rollout.engines.hf import HFEngine
    from rollout.evaluate import greedy_scores
    from services.prepare import prepare_model

    job = prepare_model(cfg, progress=False)
    examples = job.task.examples("test", eval_size, seed=FRESH_SEED)

    def scores(adapter) -> list[float]:
        return greedy_scores(HFEngine(job.model_dir, adapter_path=adapter), job.scorer, examples, job.encoder,
                             job.max_new_tokens)

    return scores


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def pair(a: list[float], b: list[float]) -> list[float]:
    from rollout.evaluate import paired_difference

    return list(paired_difference(a, b))


def protocol_job(args, seed: int, checkpoint_every: int, steps: int, overrides: dict | None = None):
    """The workload's job (bench/leap_speedup.py) at --lr (default the job's), with this checkpoint spacing and
    length."""
    from leap_speedup import WORKLOADS, job

    workload = WORKLOADS[args.workload]
    lr = args.lr or load_config(REPO / workload["job"]).learner.lr
    ns = argparse.Namespace(eval_size=args.run_eval_size, steps=steps, eval_every=args.target_every,
                            prompts=args.prompts)
    cfg = job(ns, workload, seed, lr, overrides or {})
    cfg.run.checkpoint_every = checkpoint_every
    return cfg


def offline_leap(args, tmp: Path, method: str, window_share: float, checkpoint_every: int) -> dict:
    """AlphaRL / RELEX as their authors ran them: fit on the first window_share of one run, leap to its end."""
    from extrapolate.checkpoints import find_adapter_checkpoints, read_lora
    from extrapolate.extrapolators import EXTRAPOLATORS
    from extrapolate.leap_writer import write_leap_adapter
    from extrapolate.predictability import forecast_error

    cfg = protocol_job(args, args.seed, checkpoint_every, args.steps)
    run_dir = tmp / f"{method}-run"
    run_job(cfg, run_dir=run_dir, progress=False)
    checkpoints = find_adapter_checkpoints(run_dir)
    paths, end = dict(checkpoints), checkpoints[-1][0]
    window = [(s, read_lora(p)) for s, p in checkpoints if s <= window_share * end]
    window_end = window[-1][0]
    prediction = EXTRAPOLATORS.get(method)().fit(window).predict(end)
    leap = write_leap_adapter(tmp / f"{method}-leap", paths[window_end], prediction, {},
                              report={"method": method, "target_step": end})
    scores = fresh_scores(cfg, args.eval_size)
    keep, pred, actual = scores(paths[window_end]), scores(leap), scores(paths[end])
    err = forecast_error(prediction, window[-1][1], read_lora(paths[end]))
    out = {"checkpoint_every": checkpoint_every, "window": [window[0][0], window_end], "target": end,
           "acc_keep": mean(keep), "acc_pred": mean(pred), "acc_actual": mean(actual),
           "pred_minus_keep": pair(pred, keep), "pred_minus_actual": pair(pred, actual),
           "rel_weight_err": err["rel_err"], "cos_disp": err["cos"],
           "step_speedup": end / window_end}
    if args.curve:
        out.update(plain_curve_figures(scores, checkpoints, mean(pred), window_end))
    return out


def past_end(args, tmp: Path) -> dict:
    """Leaps past the end of a finished run: RELEX and AlphaRL fitted on every checkpoint of it, to T x m for each
    multiple m, scored against the final checkpoint on the fresh set (paired)."""
    from extrapolate.checkpoints import find_adapter_checkpoints, read_lora
    from extrapolate.extrapolators import EXTRAPOLATORS
    from extrapolate.leap_writer import write_leap_adapter

    cfg = protocol_job(args, args.seed, max(1, round(args.steps / 20)), args.steps)
    run_dir = tmp / "past-end-run"
    run_job(cfg, run_dir=run_dir, progress=False)
    checkpoints = find_adapter_checkpoints(run_dir)
    paths, end = dict(checkpoints), checkpoints[-1][0]
    window = [(s, read_lora(p)) for s, p in checkpoints]
    scores = fresh_scores(cfg, args.eval_size)
    final = scores(paths[end])
    out = {"checkpoints": [s for s, _ in checkpoints], "acc_final": mean(final), "leaps": {}}
    for method in ("relex", "alpharl"):
        extrapolator = EXTRAPOLATORS.get(method)().fit(window)
        out["leaps"][method] = {}
        for multiple in args.multiples:
            target = round(end * multiple)
            leap = write_leap_adapter(tmp / f"{method}-{target}", paths[end], extrapolator.predict(target), {},
                                      report={"method": method, "target_step": target})
            acc = scores(leap)
            out["leaps"][method][f"{multiple:g}"] = {"target": target, "acc": mean(acc),
                                                     "minus_final": pair(acc, final)}
            print(f"{method:8s} -> step {target:5d} ({multiple:g} x T): {mean(acc):.3f} vs final {mean(final):.3f} "
                  f"({100 * out['leaps'][method][f'{multiple:g}']['minus_final'][0]:+.1f} +- "
                  f"{100 * out['leaps'][method][f'{multiple:g}']['minus_final'][1]:.1f} points)", flush=True)
    return out


def plain_curve_figures(scores, checkpoints: list, acc_leap: float, window_end: int) -> dict:
    """The run's own plain curve on the fresh set (the base model, then every checkpoint) against a leap made at
    window_end: the learner steps plain training needs to reach the leap's accuracy and to 80% of the run's gain
    (base + 0.8 (final - base)), each interpolated between checkpoints (None when never reached), and the leap's
    step ratios: those steps over the window_end learner steps the leap needed (the leap reaches 80% only when
    its accuracy is at that level)."""
    from leap_speedup import crossing

    curve = [(0, mean(scores(None)))] + [(s, mean(scores(p))) for s, p in checkpoints]
    level80 = curve[0][1] + 0.8 * (curve[-1][1] - curve[0][1])
    to_leap, to_80 = crossing(curve, acc_leap), crossing(curve, level80)
    return {"plain_curve": curve, "level80": level80, "plain_steps_to_leap_acc": to_leap, "plain_steps_to_80": to_80,
            "leap_reaches_80": acc_leap >= level80,
            "leap_steps_ratio": to_leap / window_end if to_leap is not None else None,
            "speedup_to_80": to_80 / window_end if to_80 is not None and acc_leap >= level80 else None}


def next_schedule(steps: int) -> tuple[int, int, int, int]:
    """(checkpoint spacing, leap step, horizon, RL steps after the leap) of the NExt protocol on a T-step run: a
    checkpoint every 2 steps (every step below T = 40, so that the window holds NExt's 3 checkpoints), the leap at
    37.5% of T, T/8 ahead, then T/4 more steps."""
    spacing = 2 if steps >= 40 else 1
    return spacing, round(0.375 * steps / spacing) * spacing, max(spacing, steps // 8), steps // 4


def next_protocol(args, tmp: Path) -> dict:
    """NExt's one leap in a run, then continued RL, against plain at the same learner steps and at T."""
    from common.run_dir import checkpoint_dir

    steps = args.steps
    spacing, leap_at, horizon, after = next_schedule(steps)
    leap_cfg = protocol_job(args, args.seed, spacing, leap_at + horizon + after, {"extrapolate": {
        "method": "next", "window": min(64, leap_at // spacing), "horizon": horizon, "min_horizon": 1,
        "max_horizon": max(40, horizon), "scales": [1.5], "start_after": leap_at, "leap_every": 10 * steps,
        "judge": "none", "backtest_threshold": -1, "accept_margin": 1.0, "patience": 1}})
    leap_dir = tmp / "next-run"
    leaping = run_job(leap_cfg, run_dir=leap_dir, progress=False)
    if not leaping.leaps.get("applied"):
        raise SystemExit(f"NExt made no leap at step {leap_at} (leaps: {leaping.leaps}); see {leap_dir}/events.jsonl")
    plain_dir = tmp / "plain-run"  # a checkpoint every step: the leaping run's learner steps may be any number
    run_job(protocol_job(args, args.seed, 1, steps), run_dir=plain_dir, progress=False)
    scores = fresh_scores(leap_cfg, args.eval_size)
    same = leaping.learner_steps
    final, plain_same, plain_end = (scores(checkpoint_dir(leap_dir, leap_cfg.run.steps)),
                                    scores(checkpoint_dir(plain_dir, same)), scores(checkpoint_dir(plain_dir, steps)))
    return {"leap_at": leap_at, "horizon": horizon, "steps_after": after, "learner_steps": same,
            "leaps": leaping.leaps, "acc_next": mean(final), "acc_plain_same_steps": mean(plain_same),
            "acc_plain_end": mean(plain_end), "next_minus_plain_same_steps": pair(final, plain_same),
            "next_minus_plain_end": pair(final, plain_end), "step_speedup_if_equal": steps / same}


def rl_extra_protocol(args, tmp: Path) -> dict:
    """Re-grounding cycles (alpha = 2 every K steps) against plain at T/2 and T."""
    from common.run_dir import checkpoint_dir

    steps, half = args.steps, args.steps // 2 // 2 * 2
    plain_dir = tmp / "plain-run"
    plain_cfg = protocol_job(args, args.seed, 2, steps)
    run_job(plain_cfg, run_dir=plain_dir, progress=False)
    scores = fresh_scores(plain_cfg, args.eval_size)
    plain_half, plain_end = scores(checkpoint_dir(plain_dir, half)), scores(checkpoint_dir(plain_dir, steps))
    out = {"acc_plain_half": mean(plain_half), "acc_plain_end": mean(plain_end), "k": {}}
    for k in args.ks:
        run_dir = tmp / f"rl_extra-k{k}"
        run_job(protocol_job(args, args.seed, 2, steps, {"outer_momentum": {
            "every": k, "eta": 2.0, "mu": 0.0, "guard_margin": None}}), run_dir=run_dir, progress=False)
        at_half, at_end = scores(checkpoint_dir(run_dir, half)), scores(checkpoint_dir(run_dir, steps))
        out["k"][k] = {"acc_half": mean(at_half), "acc_end": mean(at_end),
                       "minus_plain_half": pair(at_half, plain_half), "minus_plain_end": pair(at_end, plain_end),
                       "half_minus_plain_end": pair(at_half, plain_end)}
        print(f"rl_extra K={k}: half {mean(at_half):.3f} (plain {mean(plain_half):.3f}), end {mean(at_end):.3f} "
              f"(plain {mean(plain_end):.3f})", flush=True)
    return out


def run_protocol(args) -> None:
    from leap_speedup import WORKLOADS

    from rollout.tasks import load_task

    args.steps = args.steps or {"smollm2": 20}.get(args.workload, 80)
    cfg = protocol_job(args, args.seed, 1, args.steps)
    try:  # the fresh held-out set must exist before any training is spent
        load_task(cfg.rollout.task, cfg.data).examples("test", args.eval_size, seed=FRESH_SEED)
    except ValueError as err:
        raise SystemExit(f"--eval-size {args.eval_size}: {err}") from err
    offline = {"alpharl": (0.30, max(1, round(args.steps / 27))), "relex": (0.15, 1)}  # window share, spacing
    if args.protocol == "next":
        from extrapolate.next import NExt

        def window(t: int) -> int:
            spacing, leap_at, _, _ = next_schedule(t)
            return leap_at // spacing

        if window(args.steps) < NExt.min_checkpoints:
            shortest = next(t for t in range(args.steps, 100 * args.steps) if window(t) >= NExt.min_checkpoints)
            raise SystemExit(f"--steps {args.steps}: NExt's window before its leap holds {window(args.steps)} "
                             f"checkpoint(s), it needs {NExt.min_checkpoints}; use --steps {shortest} or more")
    if args.protocol in offline:  # the fitted window must hold enough checkpoints before any training is spent
        from extrapolate.extrapolators import EXTRAPOLATORS

        share, spacing = offline[args.protocol]
        have, need = int(share * args.steps) // spacing, EXTRAPOLATORS.get(args.protocol).min_checkpoints
        if have < need:
            shortest = next(t for t in range(args.steps, 100 * args.steps) if int(share * t) // spacing >= need)
            raise SystemExit(f"--steps {args.steps}: {args.protocol}'s window (the first {share:.0%} of the run, a "
                             f"checkpoint every {spacing}) holds {have} checkpoint(s), it needs {need}; use "
                             f"--steps {shortest} or more")
    with tempfile.TemporaryDirectory(prefix="leapfrog-protocol-") as tmp:
        if args.protocol in offline:
            result = offline_leap(args, Path(tmp), args.protocol, *offline[args.protocol])
        elif args.protocol == "next":
            result = next_protocol(args, Path(tmp))
        elif args.protocol == "past_end":
            result = past_end(args, Path(tmp))
        else:
            result = rl_extra_protocol(args, Path(tmp))
    print(json.dumps({"protocol": args.protocol, "workload": args.workload, "job": WORKLOADS[args.workload]["job"],
                      "steps": args.steps, "seed": args.seed, "eval_size": args.eval_size, **result}))


def main() -> None:
    from extrapolate.checkpoints import find_adapter_checkpoints, read_lora
    from extrapolate.extrapolators import EXTRAPOLATORS
    from extrapolate.leap_writer import write_leap_adapter
    from extrapolate.predictability import forecast_error
    from rollout.evaluate import paired_difference

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="deploy/jobs/arith.yaml")
    parser.add_argument("--window-end", type=int, default=30)
    parser.add_argument("--eval-size", type=int, default=2000)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--checkpoint-every", type=int, default=5,
                        help="checkpoint spacing of the run (NExt needs a window of horizon + 2 checkpoints)")
    parser.add_argument("--target-every", type=int, default=10, help="evaluate predictions every this many steps")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="window",
                        help="window: every method from one window (above); else one paper's protocol")
    parser.add_argument("--workload", default="arith", choices=("arith", "digitsum", "smollm2"))
    parser.add_argument("--steps", type=int, help="run length T of a protocol (default 80; smollm2 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--multiples", type=float, nargs="+", default=[1.25, 1.5, 2.0, 4.0, 10.0],
                        help="past_end: leap targets as multiples of the run's length T")
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20], help="rl_extra: re-grounding periods")
    parser.add_argument("--run-eval-size", type=int, default=200, help="a protocol run's own periodic evaluation")
    parser.add_argument("--prompts", type=int, help="a protocol run's rollout.prompts_per_step (default: the job's)")
    parser.add_argument("--lr", type=float, help="a protocol run's learning rate (default: the workload job's)")
    parser.add_argument("--curve", action="store_true",
                        help="alpharl / relex: also score the base model and every checkpoint of the run on the fresh "
                             "set, and report the learner steps plain training needs to the leap's accuracy and to "
                             "80%% of the run's gain")
    args = parser.parse_args()
    if args.protocol != "window":
        return run_protocol(args)
    cfg = load_config(args.config)
    cfg.run.checkpoint_every = args.checkpoint_every
    with tempfile.TemporaryDirectory(prefix="leapfrog-extrapolation-") as tmp:
        run_dir = Path(tmp) / "run"
        summary = run_job(cfg, run_dir=run_dir, progress=True)
        checkpoints = find_adapter_checkpoints(run_dir)
        states = {s: read_lora(p) for s, p in checkpoints}
        paths = dict(checkpoints)
        window = [(s, states[s]) for s, _ in checkpoints if s <= args.window_end]
        targets = [s for s, _ in checkpoints if s > args.window_end and
                   ((s - args.window_end) % args.target_every == 0 or s == checkpoints[-1][0])]
        scores = fresh_scores(cfg, args.eval_size)
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
