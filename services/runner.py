"""The driver loop, one process: rollouts -> verifier rewards -> learner step -> checkpoints -> evaluation.

`leapfrog run CONFIG` calls `run_job`. The loop is plain sequential code; the rollout engine shares the
learner's policy object in this mode, so the new weights are used by the next step's rollouts at no cost.
"""

from __future__ import annotations

import functools
import json
import random
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from learner.bootstrap import bootstrap, default_model_dir
from learner.checkpoint import list_checkpoints
from learner.learner import RolloutBatch
from rollout.engines.base import SamplingParams
from rollout.evaluate import greedy_accuracy, list_metrics, sampled_pass_at_k
from rollout.prompts import PromptEncoder
from rollout.tasks import load_task
from services.config import ConfigError, JobConfig, dump_config

TRAIN_POOL_MAX = 50_000  # for tasks that do not set max_train_pool


@dataclass
class RunSummary:
    run_dir: str
    steps: int
    acc_before: float
    acc_after: float
    best_acc: float
    seconds: float
    evals: list[dict] = field(default_factory=list)
    learner_steps: int = 0
    leaps: dict | None = None  # accounting of services/leaps.py when the job leaps

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def resolve_model_dir(cfg: JobConfig, progress: bool = True) -> Path:
    """The policy's base model directory: model.path resolved by `learner.models.resolve_model` (an HF model
    directory, a .gguf file converted once, or a registered name), or the bootstrapped default (built on first use)."""
    if cfg.model.path is not None:
        from learner.models import ModelError, resolve_model

        try:
            return resolve_model(cfg.model.path, progress)
        except ModelError as err:
            raise ConfigError(f"model.path: {err}; or unset model.path to use the bootstrapped default model") from None
    task = cfg.rollout.task
    if ":" in task:
        raise ConfigError(f"model.path is unset, but task {task!r} is a user task with no bootstrapped default model: "
                          f"set model.path to a local HF model directory")
    path = default_model_dir(task, cfg.model.bootstrap_seed)
    return bootstrap(task, cfg.model.bootstrap_seed, out_dir=path, progress=progress)


def preflight(cfg: JobConfig, model_dir: Path, task, local: bool) -> None:
    """Every check that can fail before any work, so a bad job writes nothing: the device, the chat template, and
    prompt + completion lengths against the model's and vLLM's limits (on the evaluation set's prompts)."""
    from rollout.engines import resolve_engine_name
    from rollout.prompts import PromptEncoder, PromptError

    try:
        if local:
            cfg.model.resolved_device()
        elif cfg.model.device == "cuda" and cfg.learner.num_gpus <= 0:
            raise ValueError("model.device is 'cuda' but learner.num_gpus is 0, so Ray gives the learner no GPU; set "
                             "learner.num_gpus (and rollout.worker_gpus for the rollout workers) or model.device: auto")
        encoder = PromptEncoder.from_model_dir(model_dir, cfg.rollout.chat_template, cfg.rollout.system_prompt)
        examples = task.examples("test", min(cfg.rollout.eval_size, 64), seed=cfg.rollout.eval_seed)
        longest = max(len(ids) for ids in encoder.ids(examples)) + (cfg.rollout.max_new_tokens or task.max_new_tokens)
    except (PromptError, ValueError) as err:
        raise ConfigError(str(err)) from None
    model_limit = json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings")
    limit = cfg.rollout.vllm.max_model_len
    if resolve_engine_name(cfg.rollout.engine) == "vllm" and limit is not None:
        if model_limit and limit > model_limit:
            raise ConfigError(f"rollout.vllm.max_model_len: {limit} is more than the model {model_dir} supports "
                              f"({model_limit} positions); lower it to at most {model_limit}")
        if longest > limit:
            raise ConfigError(f"rollout.vllm.max_model_len: {limit} tokens cannot hold a prompt plus its completion "
                              f"({longest} tokens on the evaluation prompts); raise it or lower rollout.max_new_tokens")
    if model_limit and longest > model_limit:
        raise ConfigError(f"rollout.max_new_tokens: prompts plus completions reach {longest} tokens, more than the "
                          f"model {model_dir} supports ({model_limit} positions); shorten them")


def prepare_job(cfg: JobConfig, run_dir: Path, resume: bool, progress: bool, local: bool) -> tuple[Path, Path | None]:
    """(model directory, checkpoint to resume from): the model resolved and the job checked first, then the run
    directory created (or checked for a resume)."""
    model_dir = resolve_model_dir(cfg, progress).resolve()
    preflight(cfg, model_dir, load_task(cfg.rollout.task), local)
    return model_dir, prepare_run_dir(cfg, run_dir, resume)


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2**31 - 1)


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, size: int) -> tuple[int, ...]:
    """The pool's order in one epoch (computed once per epoch, not once per prompt)."""
    order = list(range(size))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return tuple(order)


def prompts_for_step(pool: list, seed: int, step: int, per_step: int) -> list:
    """The step's prompts: consecutive slices of the training pool, reshuffled every epoch (data position = step)."""
    out = []
    start = step * per_step
    for i in range(start, start + per_step):
        epoch, pos = divmod(i, len(pool))
        out.append(pool[epoch_order(seed, epoch, len(pool))[pos]])
    return out


def rank_grpo_fields(cfg: JobConfig, task, tokenizer, examples: list, groups: list) -> tuple[list, list]:
    """Rank-GRPO's per-token advantages and rank segments for a scored batch (learner/rank_grpo.py).
    Ranks and parsed lines come from the same per-token decoding, so they cannot disagree."""
    import torch

    from learner.rank_grpo import parsed_items, rank_advantages, rank_rewards, rank_segments, token_advantages

    k = task.list_length
    relevance, segments, n_items, ended = [], [], [], []
    for ex, group in zip(examples, groups, strict=True):
        for c in group:
            stop = c.finish_reason == "stop"
            texts = [tokenizer.decode([t]) for t in (c.token_ids[:-1] if stop else c.token_ids)]
            seg = rank_segments(texts, k)
            if stop:  # the end token sits in the rank of the text before it
                seg.append(min(sum(t.count("\n") for t in texts), k))
            segments.append(seg)
            relevance.append(task.relevance(ex, parsed_items(texts, k)))
            n_items.append(sum(1 for line in "".join(texts).split("\n") if line.strip()))
            ended.append(stop)
    rewards = rank_rewards(torch.tensor(relevance), cfg.learner.rank_reward)
    advantages = rank_advantages(rewards, cfg.rollout.group_size)
    return token_advantages(advantages, segments, n_items, k, ended), segments


def shape_rewards(cfg: JobConfig, completions: list, rewards: list[float]) -> tuple[list, list[float]]:
    """Apply the learner's reward shaping (unlikeliness) and group filtering (drop all-equal groups)."""
    import torch

    from learner.rewards import informative_groups, unlikeliness_rewards

    g = cfg.rollout.group_size
    raw = torch.tensor(rewards, dtype=torch.float32)
    shaped = raw
    if cfg.learner.reward_shaping == "unlikeliness":
        mean_logp = torch.tensor([c.mean_logprob for c in completions], dtype=torch.float32)
        shaped = unlikeliness_rewards(raw, mean_logp, g, cfg.learner.unlikeliness_beta)
    if cfg.learner.drop_uniform_groups:
        keep = informative_groups(raw, g)
        if bool(keep.any()):  # a batch with no signal at all is kept whole (its advantages are all zero)
            rows = [i for i in range(len(completions)) if bool(keep[i // g])]
            return [completions[i] for i in rows], [float(shaped[i]) for i in rows]
    return completions, shaped.tolist()


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
            console=None, stop_after: int | None = None, sink=None) -> RunSummary:
    """Run (or resume) a job in this process to cfg.run.steps, or stop once `stop_after` steps are done."""
    from services.runtime import LocalRuntime

    run_dir = Path(run_dir) if run_dir else Path(cfg.run.runs_root) / cfg.run.name
    model_dir, resume_from = prepare_job(cfg, run_dir, resume, progress, local=True)
    task = load_task(cfg.rollout.task)
    runtime = LocalRuntime(cfg, model_dir, run_dir, cfg.rollout.max_new_tokens or task.max_new_tokens)
    return drive(cfg, runtime, run_dir, model_dir, resume_from=resume_from, progress=progress, console=console,
                 stop_after=stop_after, sink=sink)


class LearnerLost(RuntimeError):
    """The learner process died; the runtime restarted it and the loop continues from the last checkpoint."""


def drive(cfg: JobConfig, runtime, run_dir: Path, model_dir: Path, *, resume_from: Path | None = None,
          progress: bool = True, console=None, stop_after: int | None = None, sink=None,
          requests=None) -> RunSummary:
    """The driver loop (the same for the local and the Ray runtime):
    prompts -> runtime.generate (G completions each) -> verifier rewards -> runtime.train -> runtime.publish
    -> every eval_every steps a greedy held-out evaluation, every checkpoint_every steps a checkpoint.
    `sink(stream, record)` (the control plane's Redis streams: "metrics", "rank1", "events") also receives every
    metrics row, a rank-1 record per checkpoint and every leap event; `requests()` returns the users' new manual
    leap requests (served at the next checkpoint)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = console or Console()
    task = load_task(cfg.rollout.task)
    max_new = cfg.rollout.max_new_tokens or task.max_new_tokens
    eval_set = task.examples("test", cfg.rollout.eval_size, seed=cfg.rollout.eval_seed)
    encoder = PromptEncoder.from_model_dir(model_dir, cfg.rollout.chat_template, cfg.rollout.system_prompt)
    tokenizer = None
    if cfg.learner.algorithm == "rank_grpo":
        if not hasattr(task, "relevance") or not hasattr(task, "list_length"):
            raise ConfigError(f"learner.algorithm: rank_grpo needs a ranked-list task (with relevance() and "
                              f"list_length, e.g. ranklist); {task.name!r} is not one")
        tokenizer = encoder.tokenizer
    pool_size = min(getattr(task, "max_train_pool", TRAIN_POOL_MAX), cfg.run.steps * cfg.rollout.prompts_per_step)
    pool = task.examples("train", pool_size, seed=cfg.run.seed)
    evals: list[dict] = []
    started = time.time()
    metrics_file = run_dir / "metrics.jsonl"

    def log(row: dict) -> None:
        row = {**row, "time": time.time()}
        with metrics_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if sink is not None:
            sink("metrics", row)

    leaps = None
    learner_steps = 0
    if cfg.extrapolate is not None:
        from services.leaps import LeapController, write_jsonl

        def emit(kind: str, record: dict) -> None:
            if kind == "event":
                record = {**record, "time": time.time()}
                write_jsonl(run_dir / "events.jsonl", record)
                if record["type"] != "no_leap":
                    console.print(f"leap event: {record['type']} at step {record['step']}")
            if sink is not None:
                sink("events" if kind == "event" else "rank1", record)

        leaps = LeapController(cfg, runtime, run_dir, task, emit, requests, encoder=encoder)

    def restore(path: Path | None) -> None:
        nonlocal evals, learner_steps
        if path is None:
            return
        state = runtime.resume(path)
        evals = state.get("evals", [])
        learner_steps = state.get("learner_steps", runtime.step_count)
        console.print(f"resumed from {path} (step {runtime.step_count})")

    def sampling(step: int) -> SamplingParams:
        return SamplingParams(n=cfg.rollout.group_size, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                              max_new_tokens=max_new, seed=step_seed(cfg.run.seed, step))

    def evaluate(step: int) -> float:
        acc = greedy_accuracy(runtime, task, eval_set, encoder, max_new)
        record = {"step": step, "accuracy": acc, "learner_steps": learner_steps}
        if hasattr(task, "list_length"):
            record.update(list_metrics(runtime, task, eval_set, encoder))
        if cfg.rollout.eval_pass_n > 0:
            passes = sampled_pass_at_k(runtime, task, eval_set[:cfg.rollout.eval_pass_size], encoder,
                                       n=cfg.rollout.eval_pass_n, temperature=cfg.rollout.temperature,
                                       seed=cfg.rollout.eval_seed, max_new_tokens=max_new)
            record.update({f"pass@{k}": v for k, v in passes.items()})
        evals.append(record)
        log({"step": step, "eval_accuracy": acc, **{k: v for k, v in record.items() if k not in ("step", "accuracy")}})
        return acc

    def checkpoint(done: int, row: dict) -> Path:
        """Checkpoint the current state (or return the existing checkpoint of this step)."""
        existing = run_dir / "checkpoints" / f"step-{done:06d}"
        if existing.exists():
            return existing
        meta = {"metrics": row, "evals": evals[-1:], "wall_time": time.time() - started, "base_model": str(model_dir),
                **(leaps.checkpoint_meta() if leaps else {})}
        return runtime.checkpoint(meta, {"data_position": done * cfg.rollout.prompts_per_step, "evals": evals,
                                         "learner_steps": learner_steps})

    restore(resume_from)
    if runtime.step_count == 0:
        evaluate(0)
    last = min(cfg.run.steps, stop_after) if stop_after is not None else cfg.run.steps
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("reward {task.fields[reward]:.3f}  held-out acc {task.fields[acc]:.3f}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    pending = None  # overlapped generation: (step it is for, handle, policy version that samples it)
    with Progress(*columns, console=console, disable=not progress) as bar:
        job = bar.add_task(f"RL {cfg.rollout.task}", total=cfg.run.steps, completed=runtime.step_count,
                           reward=0.0, acc=evals[-1]["accuracy"] if evals else 0.0)
        while runtime.step_count < last:
            step = runtime.step_count
            t0 = time.time()
            examples = prompts_for_step(pool, cfg.run.seed, step, cfg.rollout.prompts_per_step)
            if pending is not None and pending[0] == step:
                groups, policy_version = runtime.collect(pending[1]), pending[2]
            else:
                groups, policy_version = runtime.generate(encoder.ids(examples), sampling(step)), step
            pending = None
            if cfg.rollout.overlap and step + 1 < last:
                upcoming = prompts_for_step(pool, cfg.run.seed, step + 1, cfg.rollout.prompts_per_step)
                pending = (step + 1, runtime.generate_async(encoder.ids(upcoming), sampling(step + 1)), step)
            t_gen = time.time() - t0
            completions = [c for group in groups for c in group]
            rewards = [task.score(ex, c.text) for ex, group in zip(examples, groups, strict=True) for c in group]
            token_adv = segments = None
            if tokenizer is not None:
                token_adv, segments = rank_grpo_fields(cfg, task, tokenizer, examples, groups)
            else:
                completions, rewards = shape_rewards(cfg, completions, rewards)
            batch = RolloutBatch(prompt_ids=[c.prompt_ids for c in completions],
                                 completion_ids=[c.token_ids for c in completions], rewards=rewards,
                                 group_size=cfg.rollout.group_size,
                                 sampling_logprobs=[c.logprobs for c in completions], policy_version=policy_version,
                                 token_advantages=token_adv, segments=segments)
            try:
                stats = runtime.train(batch)
                version = runtime.publish()
                learner_steps += 1
                done = runtime.step_count
                row = {"step": done, **stats, "policy_version": policy_version, "learner_version": step,
                       "adapter_version": version, "gen_s": t_gen, "step_s": time.time() - t0,
                       "learner_steps": learner_steps}
                log(row)
                if leaps is not None:
                    restored = leaps.after_step(learner_steps, evals, partial(checkpoint, done, row))
                    if restored is not None:  # the run continues from another branch's checkpoint
                        evals = restored.get("evals", evals)
                        pending = None
                        log({"event": "branch_switched", "at_step": done, "to_step": runtime.step_count})
                        bar.update(job, completed=runtime.step_count)
                        continue
                if done % cfg.run.eval_every == 0 or done == cfg.run.steps:
                    evaluate(done)
                if done % cfg.run.checkpoint_every == 0 or done in (cfg.run.steps, last):
                    checkpoint(done, row)
                    if leaps is None and sink is not None:  # the dashboard's rank-1 picture for plain runs too
                        from extrapolate.analyze import checkpoint_record

                        sink("rank1", checkpoint_record(run_dir, done))
                        if requests is not None and requests():
                            sink("events", {"type": "no_leap", "step": done, "time": time.time(), "reason":
                                            "leap requested, but this job has no extrapolate: section"})
                    if leaps is not None and done < last and leaps.after_checkpoint(done, learner_steps) is not None:
                        pending = None  # generation for the next step sampled the pre-leap policy
                        log({"event": "leap_applied", "at_step": done, "to_step": runtime.step_count})
            except LearnerLost as err:
                checkpoints = list_checkpoints(run_dir)
                from_step, path = checkpoints[-1] if checkpoints else (0, None)
                console.print(f"[yellow]learner lost ({err}); restarting from step {from_step}")
                log({"event": "learner_restarted", "at_step": step, "from_step": from_step})
                pending = None
                state = runtime.resume(path)
                evals = [e for e in (state.get("evals") or evals[:1]) if e["step"] <= from_step]
                continue
            bar.update(job, completed=done, reward=stats["reward_mean"], acc=evals[-1]["accuracy"])
    summary = RunSummary(run_dir=str(run_dir), steps=runtime.step_count, acc_before=evals[0]["accuracy"],
                         acc_after=evals[-1]["accuracy"], best_acc=max(e["accuracy"] for e in evals),
                         seconds=time.time() - started, evals=evals, learner_steps=learner_steps,
                         leaps=leaps.summary(learner_steps) if leaps else None)
    (run_dir / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2))
    return summary
