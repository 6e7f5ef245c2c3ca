"""GRPO vs the unlikeliness reward (He et al. 2025, arXiv 2506.02355) on the many-valid-answers task.

The paper's claim: GRPO sharpens the policy, so pass@N at large N falls toward (or below) the base model's,
while the unlikeliness reward keeps pass@large-N above GRPO's at a small pass@1 cost; mu = 2 helps further.
On the bootstrapped digitsum model, same seeds and step budget: GRPO, GRPO + unlikeliness (beta_u 0.25, all-equal
groups dropped), and the same with mu = 2. pass@k for k = 1, 2, 4, ..., 64 from 64 samples per held-out problem
(unbiased estimator), at temperature 1.0, for the base model and each method's final policy.

    .venv/bin/python bench/unlikeliness.py [--seeds 0 1 2] [--steps 60]
Last line: JSON {"pass_at": {"base": {"1": .., "64": ..}, "grpo": .., "unlikeliness": .., "unlikeliness_mu2": ..},
"seeds": 3, ...} (means over seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = {"grpo": {},
           "unlikeliness": {"reward_shaping": "unlikeliness", "drop_uniform_groups": True},
           "unlikeliness_mu2": {"reward_shaping": "unlikeliness", "drop_uniform_groups": True, "updates_per_batch": 2}}


def main() -> None:
    from tiny_job import tiny_job

    from common.run_dir import checkpoint_dir
    from learner.bootstrap import bootstrap
    from rollout.engines.hf import HFEngine
    from rollout.evaluate import sampled_pass_at_k
    from rollout.prompts import PromptEncoder
    from rollout.rewards import Scorer
    from rollout.tasks import load_task
    from services.loop import run_job

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--n", type=int, default=64, help="samples per problem (pass@k up to k = n)")
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    model_dir = bootstrap("digitsum", 0, progress=False)
    task = load_task("digitsum")
    problems = task.examples("test", args.problems, seed=777)

    encoder = PromptEncoder.from_model_dir(model_dir)

    def pass_at(engine) -> dict[int, float]:
        return sampled_pass_at_k(engine, Scorer.for_job([], task, task.max_new_tokens), problems, encoder, n=args.n,
                                 max_new_tokens=task.max_new_tokens, temperature=1.0, seed=99)

    results = {"base": [pass_at(HFEngine(model_dir))]}
    with tempfile.TemporaryDirectory(prefix="leapfrog-unlikely-") as tmp:
        for method, learner in METHODS.items():
            results[method] = []
            for seed in args.seeds:
                cfg = tiny_job(model_dir, "digitsum", {"lr": args.lr, "loss_type": "grpo", **learner}, args.steps,
                               args.steps, seed)
                run_dir = Path(tmp) / f"{method}-{seed}"
                run_job(cfg, run_dir=run_dir, progress=False)
                engine = HFEngine(model_dir, adapter_path=checkpoint_dir(run_dir, args.steps))
                results[method].append(pass_at(engine))
                print(f"{method:18s} seed {seed}: pass@1 {results[method][-1][1]:.3f}  "
                      f"pass@{args.n} {results[method][-1][args.n]:.3f}", flush=True)
    ks = sorted(results["base"][0])
    mean = {m: {str(k): round(sum(r[k] for r in runs) / len(runs), 4) for k in ks} for m, runs in results.items()}
    print(f"\n{'method':18s} " + " ".join(f"{'pass@' + str(k):>9}" for k in ks))
    for m, row in mean.items():
        print(f"{m:18s} " + " ".join(f"{row[str(k)]:>9.3f}" for k in ks))
    print(json.dumps({"pass_at": mean, "seeds": len(args.seeds), "steps": args.steps, "n": args.n,
                      "problems": args.problems}))


if __name__ == "__main__":
    main()
