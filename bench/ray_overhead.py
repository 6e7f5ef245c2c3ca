"""Per-step wall time of the same job in one process vs on Ray with 1 and 2 rollout workers.

The reference job's batch (64 prompts x 8, arith, default model) for `--steps` steps after one warm-up step.
On Ray the rollout workers hold their own HF engine and load each new adapter from disk (the weight-sync path);
with 2 workers on a 2-core machine each worker gets half a core's reservation, so expect no speed-up here.

    .venv/bin/python bench/ray_overhead.py [--steps 10]
Last line: JSON with single_s_per_step, ray1_s_per_step, ray2_s_per_step, overhead_ray1 (= ray1/single - 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def seconds_per_step(run_dir: Path, warmup: int = 1) -> float:
    from common.run_dir import METRICS, read_jsonl

    rows = read_jsonl(run_dir / METRICS)
    steps = [r for r in rows if "loss" in r]
    times = [r["time"] for r in steps]
    gen = sum(r["gen_s"] for r in steps[warmup:]) / (len(steps) - warmup)
    print(f"{run_dir.name}: generation {gen:.3f} s/step of {(times[-1] - times[warmup - 1]) / (len(times) - warmup):.3f}")
    return (times[-1] - times[warmup - 1]) / (len(times) - warmup)


def main() -> None:
    import ray

    from learner.bootstrap import bootstrap
    from services.config import load_config
    from services.driver import run_on_ray
    from services.loop import run_job

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="deploy/jobs/arith.yaml")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    model_dir = bootstrap("arith", 0, progress=False)

    def job(workers: int):
        cfg = load_config(args.config)
        cfg.model.path = str(model_dir)
        cfg.run.steps = args.steps + 1
        cfg.run.eval_every = 10_000
        cfg.run.checkpoint_every = 10_000
        cfg.rollout.eval_size = 16
        cfg.rollout.num_workers = workers
        cfg.rollout.worker_cpus = 1.0 / workers
        cfg.learner.num_cpus = 1.0
        return cfg

    with tempfile.TemporaryDirectory(prefix="leapfrog-ray-overhead-") as tmp:
        run_job(job(1), run_dir=Path(tmp) / "single", progress=False)
        single = seconds_per_step(Path(tmp) / "single")
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _temp_dir=tempfile.mkdtemp(prefix="lfb-", dir="/tmp"))
        run_on_ray(job(1), Path(tmp) / "ray1", progress=False)
        ray1 = seconds_per_step(Path(tmp) / "ray1")
        run_on_ray(job(2), Path(tmp) / "ray2", progress=False)
        ray2 = seconds_per_step(Path(tmp) / "ray2")
        overlapped = job(1)
        overlapped.rollout.max_off_policy_steps = 1
        run_on_ray(overlapped, Path(tmp) / "ray1_overlap", progress=False)
        ray1_overlap = seconds_per_step(Path(tmp) / "ray1_overlap")
        ray.shutdown()
    print(f"single process {single:.3f} s/step | Ray, 1 worker {ray1:.3f} s/step | Ray, 2 workers {ray2:.3f} s/step"
          f" | Ray, 1 worker, overlap {ray1_overlap:.3f} s/step")
    print(json.dumps({"steps": args.steps, "single_s_per_step": round(single, 4), "ray1_s_per_step": round(ray1, 4),
                      "ray2_s_per_step": round(ray2, 4), "ray1_overlap_s_per_step": round(ray1_overlap, 4),
                      "overhead_ray1": round(ray1 / single - 1, 4)}))


if __name__ == "__main__":
    main()
