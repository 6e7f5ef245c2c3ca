"""The driver loop, one process: rollouts -> verifier rewards -> learner step -> checkpoints -> evaluation.

`leapfrog run CONFIG` calls `run_job`. The loop is plain sequential code; the rollout engine shares the
learner's policy object in this mode, so the new weights are used by the next step's rollouts at no cost.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from learner.bootstrap import bootstrap, default_model_dir
from learner.checkpoint import list_checkpoints
from learner.learner import Learner, RolloutBatch
from rollout.engines.base import SamplingParams
from rollout.engines.hf import HFEngine
from rollout.evaluate import greedy_accuracy
from rollout.tasks import load_task
from services.config import ConfigError, JobConfig, dump_config

TRAIN_POOL_MAX = 50_000


@dataclass
class RunSummary:
    run_dir: str
    steps: int
    acc_before: float
    acc_after: float
    best_acc: float
    seconds: float
    evals: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def resolve_model_dir(cfg: JobConfig, progress: bool = True) -> Path:
    """The policy's base model directory: model.path, or the bootstrapped default (built on first use)."""
    if cfg.model.path is not None:
        path = Path(cfg.model.path).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.path: {path} is not an HF model directory (no config.json); give a local model "
                              f"directory, or unset model.path to use the bootstrapped default model")
        return path
    task = cfg.rollout.task
    if ":" in task:
        raise ConfigError(f"model.path is unset, but task {task!r} is a user task with no bootstrapped default model: "
                          f"set model.path to a local HF model directory")
    path = default_model_dir(task, cfg.model.bootstrap_seed)
    return bootstrap(task, cfg.model.bootstrap_seed, out_dir=path, progress=progress)


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2**31 - 1)


def prompts_for_step(pool: list, seed: int, step: int, per_step: int) -> list:
    """The step's prompts: consecutive slices of the training pool, reshuffled every epoch (data position = step)."""
    out = []
    start = step * per_step
    for i in range(start, start + per_step):
        epoch, pos = divmod(i, len(pool))
        order = list(range(len(pool)))
        random.Random(f"{seed}:{epoch}").shuffle(order)
        out.append(pool[order[pos]])
    return out


def prepare_run_dir(cfg: JobConfig, run_dir: Path, resume: bool) -> Path | None:
    """Create the run dir (or check it for a resume); returns the checkpoint to resume from, if any."""
    checkpoints = list_checkpoints(run_dir)
    if resume:
        if not checkpoints:
            raise ConfigError(f"--resume {run_dir}: no complete checkpoint there to resume from")
        return checkpoints[-1][1]
    if checkpoints or (run_dir / "metrics.jsonl").exists():
        raise ConfigError(f"run directory {run_dir} already holds a run; resume it with --resume {run_dir}, "
                          f"or choose another run.name / --run-dir (nothing was overwritten)")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    return None


def run_job(cfg: JobConfig, run_dir: Path | None = None, resume: bool = False, progress: bool = True,
            console=None, stop_after: int | None = None) -> RunSummary:
    """Run (or resume) a job to cfg.run.steps, or stop once `stop_after` steps are done (resumable later)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = console or Console()
    run_dir = Path(run_dir) if run_dir else Path(cfg.run.runs_root) / cfg.run.name
    resume_from = prepare_run_dir(cfg, run_dir, resume)
    torch.set_num_threads(int(os.environ.get("LEAPFROG_THREADS", max(1, os.cpu_count() or 1))))
    task = load_task(cfg.rollout.task)
    model_dir = resolve_model_dir(cfg, progress)
    max_new = cfg.rollout.max_new_tokens or task.max_new_tokens
    learner = Learner(model_dir, cfg.model, cfg.learner, seed=cfg.run.seed, total_steps=cfg.run.steps,
                      max_new_tokens=max_new, temperature=cfg.rollout.temperature)
    engine = HFEngine(model=learner.model, tokenizer=learner.tokenizer)
    eval_set = task.examples("test", cfg.rollout.eval_size, seed=cfg.rollout.eval_seed)
    pool_size = min(TRAIN_POOL_MAX, cfg.run.steps * cfg.rollout.prompts_per_step)
    pool = task.examples("train", pool_size, seed=cfg.run.seed)
    evals: list[dict] = []
    started = time.time()
    if resume_from is not None:
        state = learner.load_checkpoint(resume_from)
        evals = state.get("evals", [])
        console.print(f"resumed from {resume_from} (step {learner.step_count})")
    metrics_file = run_dir / "metrics.jsonl"

    def evaluate(step: int) -> float:
        acc = greedy_accuracy(engine, task, eval_set, max_new)
        evals.append({"step": step, "accuracy": acc})
        with metrics_file.open("a") as f:
            f.write(json.dumps({"step": step, "eval_accuracy": acc, "time": time.time()}) + "\n")
        return acc

    if learner.step_count == 0:
        evaluate(0)
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("reward {task.fields[reward]:.3f}  held-out acc {task.fields[acc]:.3f}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=not progress) as bar:
        job = bar.add_task(f"RL {cfg.rollout.task}", total=cfg.run.steps, completed=learner.step_count,
                           reward=0.0, acc=evals[-1]["accuracy"])
        last = min(cfg.run.steps, stop_after) if stop_after is not None else cfg.run.steps
        while learner.step_count < last:
            step = learner.step_count
            t0 = time.time()
            examples = prompts_for_step(pool, cfg.run.seed, step, cfg.rollout.prompts_per_step)
            params = SamplingParams(n=cfg.rollout.group_size, temperature=cfg.rollout.temperature,
                                    top_p=cfg.rollout.top_p, max_new_tokens=max_new, seed=step_seed(cfg.run.seed, step))
            groups = engine.generate([ex.prompt for ex in examples], params)
            t_gen = time.time() - t0
            completions = [c for group in groups for c in group]
            rewards = [task.score(ex, c.text) for ex, group in zip(examples, groups, strict=True) for c in group]
            batch = RolloutBatch(prompt_ids=[c.prompt_ids for c in completions],
                                 completion_ids=[c.token_ids for c in completions],
                                 rewards=rewards, group_size=cfg.rollout.group_size)
            stats = learner.step(batch)
            row = {"step": learner.step_count, **stats, "gen_s": t_gen, "step_s": time.time() - t0,
                   "time": time.time()}
            with metrics_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done = learner.step_count
            if done % cfg.run.eval_every == 0 or done == cfg.run.steps:
                evaluate(done)
            if done % cfg.run.checkpoint_every == 0 or done in (cfg.run.steps, last):
                learner.save_checkpoint(run_dir, {"metrics": row, "evals": evals[-1:], "wall_time": time.time() - started,
                                                  "base_model": str(model_dir)},
                                        extra_state={"data_position": done * cfg.rollout.prompts_per_step,
                                                     "evals": evals})
            bar.update(job, completed=done, reward=stats["reward_mean"], acc=evals[-1]["accuracy"])
    summary = RunSummary(run_dir=str(run_dir), steps=learner.step_count, acc_before=evals[0]["accuracy"],
                         acc_after=evals[-1]["accuracy"], best_acc=max(e["accuracy"] for e in evals),
                         seconds=time.time() - started, evals=evals)
    (run_dir / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2))
    return summary
