"""Rank-GRPO vs GRPO on the ranklist task (ConvRec-R1's claim: Rank-GRPO converges faster and ends higher,
especially at the tail of the list).

Three methods on the bootstrapped ranklist model, same seeds and step budget: GRPO with the sequence reward
NDCG@K, Rank-GRPO with `exp_inf` rank rewards, Rank-GRPO with `log_decay` rank rewards. Greedy Recall@k and
NDCG@k on held-out users every `--eval-every` steps.

    .venv/bin/python bench/rank_grpo.py [--seeds 0 1 2] [--steps 60]
Last line: JSON {"final": {method: {"recall@K", "ndcg@K", ...}}, "steps_to_grpo_final": {method: step or null},
"curves": ..., "tail": {method: recall@K - recall@1}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = {"grpo": {"algorithm": "grpo"},
           "rank_grpo_exp_inf": {"algorithm": "rank_grpo", "rank_reward": "exp_inf"},
           "rank_grpo_log_decay": {"algorithm": "rank_grpo", "rank_reward": "log_decay"}}


def main() -> None:
    from tiny_job import tiny_job

    from learner.bootstrap import bootstrap
    from services.loop import run_job

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    model_dir = bootstrap("ranklist", 0, progress=False)
    curves: dict[str, list[dict]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory(prefix="leapfrog-rank-grpo-") as tmp:
        for method, learner in METHODS.items():
            for seed in args.seeds:
                cfg = tiny_job(model_dir, "ranklist", {"lr": args.lr, "loss_type": "dapo", **learner}, args.steps,
                               args.eval_every, seed)
                summary = run_job(cfg, run_dir=Path(tmp) / f"{method}-{seed}", progress=False)
                curves[method].append({e["step"]: e for e in summary.evals})
                last = summary.evals[-1]
                print(f"{method:20s} seed {seed}: ndcg@5 {summary.evals[0]['ndcg@5']:.3f} -> {last['ndcg@5']:.3f}  "
                      f"recall@5 {last['recall@5']:.3f}", flush=True)
    steps = sorted(curves["grpo"][0])
    keys = [k for k in curves["grpo"][0][steps[-1]] if k.startswith(("recall@", "ndcg@"))]
    mean = {m: {s: {k: sum(c[s][k] for c in runs) / len(runs) for k in keys} for s in steps} for m, runs in curves.items()}
    print(f"\n{'step':>5} " + " ".join(f"{m + ' ndcg@5':>28}" for m in METHODS))
    for s in steps:
        print(f"{s:>5} " + " ".join(f"{mean[m][s]['ndcg@5']:>28.3f}" for m in METHODS))
    grpo_final = mean["grpo"][steps[-1]]["ndcg@5"]
    to_final = {m: next((s for s in steps if s > 0 and mean[m][s]["ndcg@5"] >= grpo_final), None) for m in METHODS}
    final = {m: {k: round(v, 4) for k, v in mean[m][steps[-1]].items()} for m in METHODS}
    tail = {m: round(final[m]["recall@5"] - final[m]["recall@1"], 4) for m in METHODS}
    print(json.dumps({"seeds": args.seeds, "steps": args.steps, "final": final, "steps_to_grpo_final": to_final,
                      "tail": tail, "curves": {m: {s: round(mean[m][s]["ndcg@5"], 4) for s in steps} for m in METHODS}}))


if __name__ == "__main__":
    main()
