"""A real-model reference job run end to end for each seed, in this process, on the CPU: by default
deploy/jobs/smollm2.yaml (SmolLM2-135M-Instruct, chat template, GRPO + LoRA on the `sums` task); `--job
deploy/jobs/word_problems.yaml` runs the GSM8K-format word problems (a `dataset` task scored by math_accuracy and
format), where the accuracy is the held-out math_accuracy; `--job deploy/jobs/sums_retry.yaml` the multi-turn game,
evaluated by greedy episodes in the same environment (its accuracy is the environment's reward, 1 / attempts).

For each seed: the job as configured, then the base model and the final adapter scored greedily on the same
held-out problems (the job's evaluation set) by the job's accuracy reward, so the gain comes with its paired
standard error sqrt(var(after - before) / n). The acceptance figure is gain_over_stderr_min (> 3 expected).
s_per_step is the mean wall time of a learner step (generation + scoring + update); peak_rss_mb is this process's
peak resident memory. Run it from the repository root (a job's data.path is relative to it).

    .venv/bin/python bench/real_model.py [--job deploy/jobs/word_problems.yaml] [--seeds 0 1] [--steps N]
Last line: JSON {model, task, data, acc_before, acc_after, eval_n, stderr, s_per_step, peak_rss_mb,
gain_over_stderr_min, runs: [{seed, acc_before, acc_after, gain, stderr, gain_over_stderr, s_per_step, seconds,
mean_completion_tokens_before, mean_completion_tokens_after}, ...]} (top-level figures are means over the seeds;
stderr the largest).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")
JOB = Path(__file__).resolve().parents[1] / "deploy" / "jobs" / "smollm2.yaml"


def mean_tokens(completions) -> float:
    return sum(len(c.token_ids) for c in completions) / len(completions)


def run_seed(seed: int, args, tmp: Path) -> dict:
    from common.run_dir import METRICS, checkpoint_dir, read_jsonl
    from rollout.engines.hf import HFEngine
    from rollout.evaluate import greedy_completions, paired_difference
    from services.config import load_config
    from services.loop import run_job
    from services.prepare import prepare_model

    cfg = load_config(args.job)
    cfg.run.seed = seed
    if args.steps:
        cfg.run.steps = args.steps
    started = time.time()
    run_dir = tmp / f"seed{seed}"
    summary = run_job(cfg, run_dir=run_dir, progress=sys.stderr.isatty())
    seconds = time.time() - started
    job = prepare_model(cfg, progress=False)
    model_dir, encoder, scorer, max_new = job.model_dir, job.encoder, job.scorer, job.max_new_tokens
    examples = job.task.examples("test", cfg.rollout.eval_size, seed=cfg.rollout.eval_seed)
    final = checkpoint_dir(run_dir, cfg.run.steps)

    def greedy(engine) -> tuple[list[float], list]:
        completions = greedy_completions(engine, examples, encoder, max_new, job.agent)  # multi-turn: episodes
        return scorer.accuracy_values(scorer.score(examples, [[c] for c in completions], cfg.run.steps)), completions

    before, base_completions = greedy(HFEngine(model_dir))
    after, final_completions = greedy(HFEngine(model_dir, adapter_path=final))
    gain, stderr = paired_difference(after, before)
    for ex, b, a in list(zip(examples, base_completions, final_completions, strict=True))[:3]:
        gold = str(ex.answer).rsplit("\n", 1)[-1]  # a GSM8K answer's last line is "#### N"
        print(f"  {gold}: base {b.text[:160]!r} | final {a.text[:160]!r}", flush=True)
    rows = read_jsonl(run_dir / METRICS)
    step_s = [r["step_s"] for r in rows if "step_s" in r]
    out = {"seed": seed, "acc_before": sum(before) / len(before), "acc_after": sum(after) / len(after),
           "gain": gain, "stderr": stderr, "gain_over_stderr": gain / stderr if stderr > 0 else float("inf"),
           "s_per_step": sum(step_s) / len(step_s), "seconds": seconds, "steps": cfg.run.steps,
           "curve": [(e["step"], e["accuracy"]) for e in summary.evals],
           "mean_completion_tokens_before": round(mean_tokens(base_completions), 1),
           "mean_completion_tokens_after": round(mean_tokens(final_completions), 1)}
    print(f"seed {seed}: {out['acc_before']:.3f} -> {out['acc_after']:.3f} (gain {gain:+.3f} +- {stderr:.3f}, "
          f"{out['gain_over_stderr']:.1f} SE), {out['s_per_step']:.1f} s/step, {seconds / 60:.1f} min", flush=True)
    return out


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default=str(JOB))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, help="override run.steps")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="leapfrog-real-model-") as tmp:
        runs = [run_seed(seed, args, Path(tmp)) for seed in args.seeds]
    from services.config import load_config

    cfg = load_config(args.job)
    mean = lambda key: round(sum(r[key] for r in runs) / len(runs), 4)  # noqa: E731
    print(json.dumps({"model": cfg.model.path, "task": cfg.rollout.task,
                      "data": cfg.data.path if cfg.data else None, "acc_before": mean("acc_before"),
                      "acc_after": mean("acc_after"), "eval_n": cfg.rollout.eval_size,
                      "stderr": round(max(r["stderr"] for r in runs), 4), "s_per_step": mean("s_per_step"),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "gain_over_stderr_min": round(min(r["gain_over_stderr"] for r in runs), 2),
                      "seeds": args.seeds, "runs": runs}))


if __name__ == "__main__":
    main()
