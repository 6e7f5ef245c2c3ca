"""The Ray job entrypoint: `python -m services.driver JOB.yaml [--run-dir DIR] [--resume]`.

This is what `ray job submit -- python -m services.driver deploy/jobs/arith.yaml` and the control plane run.
Under the control plane (LEAPFROG_JOB_ID and REDIS_URL set by it) the driver also reports to Redis: the job
becomes RUNNING, metrics / rank-1 / events go to its streams, and it ends SUCCEEDED (with the summary) or FAILED
(with the error) — unless it was cancelled meanwhile, which the store's atomic transitions keep.
It connects to Ray (RAY_ADDRESS, the address a Ray job is given, or a local instance when unset), starts one
Learner and rollout.num_workers RolloutWorker actors, and runs the same driver loop as `leapfrog run`
(`services.loop.drive`). Its last stdout line is the run summary as JSON.
Started again with the same job and run directory (a driver that died, resubmitted or retried), it continues from
the run's last checkpoint; the rows the dead attempt logged after it are set aside under rolled_back/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def run_on_ray(cfg, run_dir: Path, resume: bool = False, progress: bool = True, stop_after: int | None = None,
               sink=None, requests=None, restart: bool = False, source: str = ""):
    """The job on the Ray cluster: prepared (services/prepare.py, every stage; it connects to Ray after the checks that
    need no cluster), the run directory made,
    the actors started, the loop. restart: this job may have run in run_dir before (a driver started again after
    it died): it continues from its last checkpoint instead of refusing the run directory."""
    from services.loop import drive, prepare_run_dir
    from services.prepare import prepare_job
    from services.runtime import RayRuntime

    job = prepare_job(cfg, source, runtime="ray", progress=progress)
    resume_from = prepare_run_dir(cfg, run_dir, resume, restart)
    runtime = RayRuntime(job, run_dir)
    try:
        return drive(job, runtime, run_dir, resume_from=resume_from, progress=progress, stop_after=stop_after,
                     sink=sink, requests=requests)
    finally:
        runtime.close()


def main(argv: list[str] | None = None) -> int:
    from services.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="python -m services.driver", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="job config YAML")
    parser.add_argument("--run-dir", help="run directory (default <run.runs_root>/<run.name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    parser.add_argument("--stop-after", type=int, help="checkpoint and stop after this step")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.run.runs_root) / cfg.run.name
    print(f"leapfrog driver pid {os.getpid()} run_dir {run_dir.resolve()}", flush=True)
    store, job_id, sink, requests = control_plane()
    try:
        # the job's checks (for `ray job submit` too) run in run_on_ray, before it connects to Ray or writes anything
        summary = run_on_ray(cfg, run_dir, resume=args.resume, progress=sys.stdout.isatty(), stop_after=args.stop_after,
                             sink=sink, requests=requests, restart=True, source=args.config)
    except BaseException as err:
        if store is not None:
            finish(store, job_id, "FAILED", error=f"{type(err).__name__}: {err}"[:2000])
        if isinstance(err, (ConfigError, ValueError)):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise
    if store is not None:
        finish(store, job_id, "SUCCEEDED", summary=json.dumps(summary.as_dict()))
    print(json.dumps(summary.as_dict()), flush=True)
    return 0


def control_plane():
    """(store, job id, sink, requests) when run by the control plane (LEAPFROG_JOB_ID and REDIS_URL set), else
    Nones. requests() returns the leap requests posted to the job's events stream since the last call."""
    job_id, url = os.environ.get("LEAPFROG_JOB_ID"), os.environ.get("REDIS_URL")
    if not job_id or not url:
        return None, None, None, None
    from services.store import TransitionError, connect

    store = connect(url)
    try:
        store.transition(job_id, "RUNNING")
    except TransitionError as err:  # already RUNNING (the control plane saw Ray start us), or cancelled meanwhile
        if store.get(job_id)["state"] != "RUNNING":
            print(f"not starting: {err}", file=sys.stderr)
            sys.exit(0)

    def sink(stream: str, record: dict) -> None:
        store.append(job_id, stream, record)

    cursor = ["0-0"]  # requests posted while the job was PENDING count too

    def requests() -> list[dict]:
        new = store.read(job_id, "events", cursor[0], 1000)
        if new:
            cursor[0] = new[-1][0]
        return [r for _, r in new if r.get("type") == "leap_request"]

    return store, job_id, sink, requests


def finish(store, job_id: str, state: str, **fields) -> None:
    from services.store import TransitionError

    try:
        store.transition(job_id, state, **fields)
    except TransitionError as err:  # e.g. cancelled meanwhile: the cancel stands
        print(f"job state not changed: {err}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
