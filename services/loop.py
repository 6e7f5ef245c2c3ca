"""The driver loop, one process: rollouts -> verifier rewards -> learner step -> checkpoints -> evaluation.

`leapfrog run CONFIG` calls `run_job`. The loop is plain sequential code; the rollout engine shares the
learner's policy object in this mode, so the new weights are used by the next step's rollouts at no cost.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from common.run_dir import (
    CONFIG,
    EVENTS,
    LEAPS,
    METRICS,
    ROLLED_BACK,
    SAMPLES,
    SUMMARY,
    append_jsonl,
    checkpoint_dir,
    list_checkpoints,
    read_jsonl,
)
from learner.checkpoint import prune_checkpoints, update_checkpoint_record
from rollout.engines.base import SamplingParams
from rollout.episodes import conversation_text, generate_groups
from rollout.evaluate import greedy_completions, list_metrics, sampled_pass_at_k
from rollout.metrics import completion_metrics, episode_metrics
from rollout.rewards import Scores
from rollout.tasks.base import ListTask
from services.config import ConfigError, JobConfig, dump_config
from services.leap_protocol import LeapController, leap_controller
from services.prepare import PreparedJob, prepare_job
from services.runtime import LearnerLost
from services.trackers import Trackers

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
    leaps: dict | None = None  # accounting of services/leap_protocol.py when the job leaps

    def as_dict(self) -> dict:
        return self.__dict__.copy()


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


def prepare_run_dir(cfg: JobConfig, run_dir: Path, resume: bool, restart: bool = False) -> Path | None:
    """Create the run dir (or check it for a resume); returns the checkpoint to resume from, if any.
    restart: the same job started again (a restarted Ray driver) continues from its last checkpoint, or starts over
    when it had none; either way the log rows of the interrupted attempt after that point are set aside."""
    checkpoints = list_checkpoints(run_dir)
    if restart and (run_dir / CONFIG).is_file() and (run_dir / CONFIG).read_text() == dump_config(cfg):
        set_aside_after(run_dir, checkpoints[-1][1] if checkpoints else None)
        return checkpoints[-1][1] if checkpoints else None
    if resume:
        if not checkpoints:
            raise ConfigError(f"--resume {run_dir}: no complete checkpoint there to resume from")
        set_aside_after(run_dir, checkpoints[-1][1])
        return checkpoints[-1][1]
    if checkpoints or (run_dir / METRICS).exists():
        raise ConfigError(f"run directory {run_dir} already holds a run; resume it with --resume {run_dir}, "
                          f"or choose another run.name / --run-dir (nothing was overwritten)")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG).write_text(dump_config(cfg))
    return None


LOGS = (METRICS, SAMPLES, EVENTS)


def log_positions(run_dir: Path) -> dict[str, int]:
    """How many rows each log holds now (written into every checkpoint: what a resume from it keeps): its non-blank
    lines, as read_jsonl reads them, counted without parsing them."""
    counts = {}
    for name in LOGS:
        path = run_dir / name
        with open(path) if path.is_file() else open(os.devnull) as f:
            counts[name] = sum(1 for line in f if line.strip())
    return counts


def set_aside_after(run_dir: Path, checkpoint: Path | None) -> None:
    """Move what an interrupted attempt wrote after its last checkpoint (None: it had none) to rolled_back/: the log
    rows past the checkpoint's positions (to <name>-after-<step>.jsonl; rows are cut by position, not by step,
    because a run that switched branch logs steps out of order) and the leap candidates it proposed after it (to
    leaps-after-<step>/), so the resumed run logs each step and decision once and nothing is lost."""
    meta = json.loads((checkpoint / "meta.json").read_text()) if checkpoint is not None else {}
    step = meta.get("step", int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint is not None else 0)
    positions = meta.get("log_rows", {name: 0 for name in LOGS} if checkpoint is None else None)
    aside_dir = run_dir / ROLLED_BACK
    for name in LOGS:
        rows = read_jsonl(run_dir / name)
        keep = positions[name] if positions is not None else \
            sum(1 for r in rows if r.get("step", r.get("at_step", 0)) <= step)  # a checkpoint from before positions
        if len(rows) <= keep:
            continue
        aside = aside_dir / f"{Path(name).stem}-after-{step}.jsonl"
        aside.parent.mkdir(parents=True, exist_ok=True)
        for row in rows[keep:]:
            append_jsonl(aside, row)
        tmp = run_dir / f"{name}.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows[:keep]))
        tmp.replace(run_dir / name)
    proposals = meta.get("leap_state", {}).get("accounting", {}).get("proposals", 0)
    for leap in sorted((run_dir / LEAPS).glob("leap-*")):
        if int(leap.name.split("-")[1]) > proposals:
            target = aside_dir / f"{LEAPS}-after-{step}"
            target.mkdir(parents=True, exist_ok=True)
            shutil.move(str(leap), target / leap.name)


def run_job(cfg: JobConfig, run_dir: Path | None = None, resume: bool = False, progress: bool = True,
            console=None, stop_after: int | None = None, sink=None, source: str = "") -> RunSummary:
    """Run (or resume) a job in this process to cfg.run.steps, or stop once `stop_after` steps are done: prepared
    (services/prepare.py), then the run directory made (or checked for the resume), then the loop."""
    from services.runtime import LocalRuntime

    run_dir = Path(run_dir) if run_dir else Path(cfg.run.runs_root) / cfg.run.name
    job = prepare_job(cfg, source, runtime="local", progress=progress, console=console)
    resume_from = prepare_run_dir(cfg, run_dir, resume)
    return drive(job, LocalRuntime(job, run_dir), run_dir, resume_from=resume_from, progress=progress,
                 console=console, stop_after=stop_after, sink=sink)


def note_dropped_prompts(cfg: JobConfig, task, log, console) -> None:
    """Report the prompts a dataset task dropped for being longer than data.max_prompt_tokens (an event row)."""
    dropped = getattr(task, "dropped", None)
    if dropped and any(dropped.values()):
        console.print(f"data: dropped {dropped['train']} train and {dropped['test']} test prompts longer than "
                      f"data.max_prompt_tokens = {cfg.data.max_prompt_tokens}")
        log({"event": "prompts_dropped", "max_prompt_tokens": cfg.data.max_prompt_tokens, **dropped})


@dataclass
class LoopState:
    """What the loop carries between steps (and restores from a checkpoint)."""

    evals: list[dict] = field(default_factory=list)
    learner_steps: int = 0
    started: float = field(default_factory=time.time)

    def restore(self, saved: dict, runtime, leaps, rollouts) -> None:
        """Continue a resumed run: its evaluations, the learner steps it had spent, its leap state and the
        generations it had in flight."""
        self.evals = saved.get("evals", [])
        self.learner_steps = saved.get("learner_steps", runtime.step_count)
        leaps.restore(saved)
        rollouts.restore(saved)


class RunLog:
    """metrics.jsonl, mirrored to the control plane's "metrics" stream when a sink is given and, while `tracking`
    is open, to the experiment trackers of run.report_to (services/trackers.py)."""

    def __init__(self, run_dir: Path, sink=None):
        self.run_dir, self.path, self.sink = Path(run_dir), Path(run_dir) / METRICS, sink
        self.trackers = Trackers()

    def tracking(self, cfg: JobConfig, start_step: int) -> Trackers:
        """Open the trackers for a run starting (or continuing) at start_step: `with log.tracking(...)` closes them
        when the loop ends, marked failed when it raises."""
        self.trackers = Trackers.start(cfg, self.run_dir, start_step)
        return self.trackers

    def __call__(self, row: dict) -> None:
        row = {**row, "time": time.time()}
        append_jsonl(self.path, row)
        if self.sink is not None:
            self.sink("metrics", row)
        self.trackers.log(row)


class SampleLog:
    """What the model wrote: samples.jsonl, mirrored to the control plane's "samples" stream when a sink is given."""

    def __init__(self, run_dir: Path, sink=None):
        self.path, self.sink = Path(run_dir) / SAMPLES, sink

    def __call__(self, record: dict) -> None:
        append_jsonl(self.path, record)
        if self.sink is not None:
            self.sink("samples", record)


class Evaluator:
    """The periodic held-out evaluation of the greedy policy, scored by the run's scorer: accuracy (the accuracy
    reward's mean), each reward's mean, list metrics for list tasks, sampled pass@k, and the first
    rollout.eval_samples completions with their prompts, answers and rewards (SampleLog)."""

    def __init__(self, job: PreparedJob, runtime, log: RunLog, samples: SampleLog | None = None):
        self.cfg, self.runtime, self.task, self.encoder, self.log = job.cfg, runtime, job.task, job.encoder, log
        self.scorer, self.samples, self.max_new, self.agent = job.scorer, samples, job.max_new_tokens, job.agent
        self.examples = job.task.examples("test", job.cfg.rollout.eval_size, seed=job.cfg.rollout.eval_seed)

    def __call__(self, step: int, state: LoopState) -> None:
        r = self.cfg.rollout
        completions = greedy_completions(self.runtime, self.examples, self.encoder, self.max_new, self.agent)
        scores = self.scorer.score(self.examples, [[c] for c in completions], step)
        solved = self.scorer.accuracy_values(scores)
        acc = sum(solved) / len(solved)
        record = {"step": step, "accuracy": acc, "learner_steps": state.learner_steps}
        if isinstance(self.task, ListTask):
            record.update(list_metrics(self.task, self.examples, [c.text for c in completions]))
        if r.eval_pass_n > 0:
            passes = sampled_pass_at_k(self.runtime, self.scorer, self.examples[:r.eval_pass_size], self.encoder,
                                       n=r.eval_pass_n, max_new_tokens=self.max_new, temperature=r.temperature,
                                       seed=r.eval_seed, step=step, agent=self.agent)
            record.update({f"pass@{k}": v for k, v in passes.items()})
        state.evals.append(record)
        self.write_samples(step, completions, scores)
        multi_turn = {f"eval_{k}": v for k, v in episode_metrics([[c] for c in completions]).items()}
        self.log({"step": step, "eval_accuracy": acc, **{f"eval_{k}": v for k, v in scores.metrics().items()},
                  **multi_turn,
                  **{k: v for k, v in record.items() if k not in ("step", "accuracy")}})

    def write_samples(self, step: int, completions: list, scores: Scores) -> None:
        """The first rollout.eval_samples problems: rendered prompt, greedy completion, answer, rewards."""
        if self.samples is None:
            return
        for i, (ex, c) in enumerate(zip(self.examples[:self.cfg.rollout.eval_samples], completions, strict=False)):
            record = {"step": step, "prompt": self.encoder.text(c.prompt_ids), "completion": c.text,
                      "answer": ex.answer, "rewards": {name: v[i] for name, v in scores.values.items()},
                      "reward": scores.totals[i]}
            if c.trajectory is not None:  # the whole conversation, readable, and its messages
                record["completion"] = conversation_text(c.trajectory["messages"])
                record["conversation"] = c.trajectory["messages"]
                record["stop_reason"] = c.trajectory["stop_reason"]
            self.samples(record)


@dataclass
class InFlight:
    """A generation started before its step (asynchronous rollouts): its handle, or its groups once collected, and the
    policy version that samples it."""

    version: int
    handle: object = None
    groups: list | None = None

    def result(self, runtime) -> list:
        if self.groups is None:
            self.groups, self.handle = runtime.collect(self.handle), None
        return self.groups


class Rollouts:
    """Each step's prompts and their sampled groups. With rollout.max_off_policy_steps = k the generations of the
    next k steps are in flight while this step trains: step t + k's starts with the newest policy (version t) before
    step t trains, so a batch is at most k versions old (the learner corrects for it, learner/learner.py)."""

    def __init__(self, job: PreparedJob, runtime):
        cfg, task = job.cfg, job.task
        self.cfg, self.runtime, self.encoder, self.max_new = cfg, runtime, job.encoder, job.max_new_tokens
        self.agent = job.agent
        pool_size = min(getattr(task, "max_train_pool", TRAIN_POOL_MAX), cfg.run.steps * cfg.rollout.prompts_per_step)
        self.pool = task.examples("train", pool_size, seed=cfg.run.seed)
        self.in_flight: dict[int, InFlight] = {}  # step -> its generation, started ahead
        self.dropped = 0  # generations in flight dropped since the last step's row (a leap, a branch switch)

    def examples(self, step: int) -> list:
        return prompts_for_step(self.pool, self.cfg.run.seed, step, self.cfg.rollout.prompts_per_step)

    def refill_examples(self, step: int, round_: int) -> list:
        """Dynamic sampling's extra prompts of a step's round >= 1: a seeded draw from the training pool."""
        rng = random.Random(f"{self.cfg.run.seed}:refill:{step}:{round_}")
        return [self.pool[i] for i in rng.sample(range(len(self.pool)),
                                                 min(self.cfg.rollout.prompts_per_step, len(self.pool)))]

    def sampling(self, step: int, round_: int = 0) -> SamplingParams:
        r = self.cfg.rollout
        return SamplingParams(n=r.group_size, temperature=r.temperature, top_p=r.top_p, max_new_tokens=self.max_new,
                              seed=(step_seed(self.cfg.run.seed, step) + 104_729 * round_) % (2**31 - 1))

    def generate(self, examples: list, params: SamplingParams) -> list:
        return generate_groups(self.runtime, examples, self.encoder, params, self.agent)

    def take(self, step: int) -> tuple[list, list, int]:
        """(examples, groups, policy version that sampled them) of a step; starts the generations of the steps up to
        step + k (the run's last step at most) that are not in flight yet, with the policy of now (version step)."""
        k = self.cfg.rollout.max_off_policy_steps
        examples = self.examples(step)
        pending = self.in_flight.pop(step, None)
        if pending is not None and step - pending.version > k:  # older than the bound: dropped and regenerated
            self.dropped += 1
            pending = None
        if pending is not None:
            groups, version = pending.result(self.runtime), pending.version
        else:
            groups, version = self.generate(examples, self.sampling(step)), step
        for ahead in range(step + 1, min(step + k, self.cfg.run.steps - 1) + 1):
            if ahead not in self.in_flight:
                handle = self.runtime.generate_async(self.encoder.ids(self.examples(ahead)), self.sampling(ahead))
                self.in_flight[ahead] = InFlight(step, handle)
        return examples, groups, version

    def drop(self) -> None:
        """Forget the generations in flight (the policy they sample is no longer the run's); counted."""
        self.dropped += len(self.in_flight)
        self.in_flight.clear()

    def step_metrics(self, step: int, policy_version: int) -> dict:
        """The step's async/ metrics (with max_off_policy_steps > 0): the batch's staleness, what is in flight and
        what was dropped since the last row."""
        if not self.cfg.rollout.max_off_policy_steps:
            return {}
        row = {"async/staleness": step - policy_version, "async/in_flight": len(self.in_flight),
               "async/dropped": self.dropped}
        self.dropped = 0
        return row

    def checkpoint_state(self) -> dict:
        """What is in flight, collected (this waits for it), for the checkpoint: a resumed run trains on the same
        batches as the straight run."""
        return {"in_flight": {step: (p.version, p.result(self.runtime)) for step, p in sorted(self.in_flight.items())}}

    def restore(self, saved: dict) -> None:
        self.in_flight = {int(step): InFlight(version, groups=groups)
                          for step, (version, groups) in saved.get("in_flight", {}).items()}

    def switch_to(self, saved: dict) -> None:
        """The run continues from another branch's checkpoint: what is in flight is dropped, and what that
        checkpoint had in flight (sampled on its branch) is taken."""
        self.drop()
        self.restore(saved)


@dataclass
class SampledStep:
    """A step's prompts, their groups, the policy version that sampled them, their scores and training rewards, and
    the sampling metrics of the step's row."""

    examples: list
    groups: list
    policy_version: int
    scores: Scores
    rewards: list[float]
    metrics: dict


def sample_step(job: PreparedJob, rollouts: Rollouts, step: int) -> SampledStep:
    """Take the step's groups (generated now or in flight), score them, refill them by dynamic sampling."""
    t0 = time.time()
    examples, groups, version = rollouts.take(step)
    gen_s = time.time() - t0
    scores = job.scorer.score(examples, groups, step)
    refill = {}
    if job.cfg.rollout.dynamic_sampling is not None:
        examples, groups, scores, refill = dynamic_sampling(job, rollouts, step, examples, groups, scores)
    metrics = {**scores.metrics(), **refill, **rollouts.step_metrics(step, version), "gen_s": gen_s}
    return SampledStep(examples, groups, version, scores, scores.training_rewards(job.cfg.rollout.group_size),
                       metrics)


def differing_groups(scores: Scores, group_size: int) -> list[int]:
    """Indices of the groups whose training rewards are not all equal."""
    rewards = scores.training_rewards(group_size)
    return [i for i in range(len(rewards) // group_size)
            if len(set(rewards[i * group_size:(i + 1) * group_size])) > 1]


def dynamic_sampling(job: PreparedJob, rollouts: Rollouts, step: int, examples: list, groups: list, scores: Scores
                     ) -> tuple[list, list, Scores, dict]:
    """DAPO's dynamic sampling with refill (arXiv 2503.14476): keep the groups whose rewards differ and generate
    rounds of new prompts until there are prompts_per_step of them or rollout.dynamic_sampling.max_rounds rounds
    have run; the step trains on the first prompts_per_step kept (all of round 0 when none differ: its advantages are
    zero). Returns the step's examples, groups, scores and its dynamic_sampling/ metrics."""
    cfg = job.cfg
    quota, group_size = cfg.rollout.prompts_per_step, cfg.rollout.group_size
    rounds = [(examples, groups, scores)]
    kept = [(0, i) for i in differing_groups(scores, group_size)]
    while len(kept) < quota and len(rounds) < cfg.rollout.dynamic_sampling.max_rounds:
        more = rollouts.refill_examples(step, len(rounds))
        more_groups = rollouts.generate(more, rollouts.sampling(step, len(rounds)))
        more_scores = job.scorer.score(more, more_groups, step)
        kept += [(len(rounds), i) for i in differing_groups(more_scores, group_size)]
        rounds.append((more, more_groups, more_scores))
    differing = len(kept)
    kept = kept[:quota] or [(0, i) for i in range(len(groups))]
    all_rewards = [r for _, _, sc in rounds for r in sc.training_rewards(group_size)]
    stats = {"dynamic_sampling/rounds": len(rounds),
             "dynamic_sampling/generated_groups": sum(len(g) for _, g, _ in rounds),
             "dynamic_sampling/differing_groups": differing, "dynamic_sampling/trained_groups": len(kept),
             "dynamic_sampling/cap_reached": int(differing < quota),
             "dynamic_sampling/generated_reward_mean": sum(all_rewards) / len(all_rewards)}
    picked = Scores.gather([(rounds[r][2], i, group_size) for r, i in kept])
    return [rounds[r][0][i] for r, i in kept], [rounds[r][1][i] for r, i in kept], picked, stats


def progress_bar(cfg: JobConfig, console, enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("reward {task.fields[reward]:.3f}  held-out acc {task.fields[acc]:.3f}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=console, disable=not enabled)


def recover_learner(err: Exception, runtime, run_dir: Path, state: LoopState, leaps, rollouts: Rollouts, log: RunLog,
                    console, step: int) -> None:
    """The learner died: continue from the last checkpoint (or the start) with its evaluations, leap state and the
    generations it had in flight."""
    checkpoints = list_checkpoints(run_dir)
    from_step, path = checkpoints[-1] if checkpoints else (0, None)
    console.print(f"[yellow]learner lost ({err}); restarting from step {from_step}")
    log({"event": "learner_restarted", "at_step": step, "from_step": from_step})
    saved = runtime.resume(path)  # the learner steps spent since stay counted: they were computed
    state.evals = [e for e in (saved.get("evals") or state.evals[:1]) if e["step"] <= from_step]
    leaps.restore(saved)
    rollouts.drop()
    rollouts.restore(saved)


def leap_decision(cfg: JobConfig, runtime, leaps, state: LoopState, rollouts: Rollouts, log: RunLog, evaluate,
                  done: int, last: int) -> None:
    """The leap controller's decision at the checkpoint of `done` (none when the run ends or stops there: a resumed
    run makes it). A leap applied: the next step's generation sampled the pre-leap policy and is dropped, and the
    landing is evaluated when it is an evaluation step (the skipped steps' evaluations never ran)."""
    if leaps.after_checkpoint(done, state.learner_steps, final=done >= last) is None:
        return
    rollouts.drop()
    log({"event": "leap_applied", "at_step": done, "to_step": runtime.step_count})
    landed = runtime.step_count
    if landed % cfg.run.eval_every == 0 or landed >= cfg.run.steps:
        evaluate(landed, state)


def drive(job: PreparedJob, runtime, run_dir: Path, *, resume_from: Path | None = None, progress: bool = True,
          console=None, stop_after: int | None = None, sink=None, requests=None) -> RunSummary:
    """The driver loop, the same for the local and the Ray runtime (services/runtime.py): prompts -> generate ->
    score -> the algorithm's learner batch -> train, publish -> log -> leap hooks -> evaluate / checkpoint.
    `sink(stream, record)` (the control plane's Redis streams "metrics", "rank1", "events") receives every metrics
    row, rank-1 record and leap event; `requests()` returns the users' new manual leap requests."""
    from rich.console import Console

    cfg, console = job.cfg, console or Console()
    log, state, rollouts = RunLog(run_dir, sink), LoopState(), Rollouts(job, runtime)
    evaluate = Evaluator(job, runtime, log, SampleLog(run_dir, sink))
    note_dropped_prompts(cfg, job.task, log, console)
    leaps = leap_controller(job, runtime, run_dir, console, sink, requests)
    checkpoint = partial(save_checkpoint, job, runtime, run_dir, state, leaps, rollouts)
    last = min(cfg.run.steps, stop_after) if stop_after is not None else cfg.run.steps
    decide = partial(leap_decision, cfg, runtime, leaps, state, rollouts, log, evaluate, last=last)
    if resume_from is not None:
        state.restore(runtime.resume(resume_from), runtime, leaps, rollouts)
        console.print(f"resumed from {resume_from} (step {runtime.step_count})")
    with log.tracking(cfg, runtime.step_count), progress_bar(cfg, console, progress) as bar:
        if runtime.step_count == 0:
            evaluate(0, state)
        elif leaps.decision_due(runtime.step_count):  # the run stopped at this checkpoint before its leap decision
            decide(runtime.step_count)
        task = bar.add_task(f"RL {cfg.rollout.task}", total=cfg.run.steps, completed=runtime.step_count, reward=0.0,
                            acc=state.evals[-1]["accuracy"] if state.evals else 0.0)
        while runtime.step_count < last:
            step, t0 = runtime.step_count, time.time()
            sampled = sample_step(job, rollouts, step)
            batch = job.algorithm.make_batch(sampled.groups, sampled.rewards, sampled.policy_version, task=job.task,
                                             examples=sampled.examples, tokenizer=job.encoder.tokenizer)
            try:
                stats = runtime.train(batch)
                version, done = runtime.publish(), runtime.step_count
                state.learner_steps += 1
                row = {"step": done, **stats, **sampled.metrics,
                       **completion_metrics(sampled.groups, sampled.rewards, time.time() - t0),
                       **episode_metrics(sampled.groups), "policy_version": sampled.policy_version,
                       "learner_version": step, "adapter_version": version, "step_s": time.time() - t0,
                       "learner_steps": state.learner_steps}
                log(row)
                restored = leaps.after_step(state.learner_steps, state.evals, partial(checkpoint, done, row))
                if restored is not None:  # the run continues from another branch's checkpoint
                    state.evals = restored.get("evals", state.evals)
                    rollouts.switch_to(restored)
                    log({"event": "branch_switched", "at_step": done, "to_step": runtime.step_count})
                    update_checkpoint_record(checkpoint_dir(run_dir, runtime.step_count),
                                             *run_record(run_dir, state, leaps))
                    continue
                if done % cfg.run.eval_every == 0 or done == cfg.run.steps:
                    evaluate(done, state)
                if done % cfg.run.checkpoint_every == 0 or done in (cfg.run.steps, last):
                    checkpoint(done, row)
                    decide(done)
            except LearnerLost as err:
                recover_learner(err, runtime, run_dir, state, leaps, rollouts, log, console, step)
                if leaps.decision_due(runtime.step_count):
                    decide(runtime.step_count)
                continue
            bar.update(task, completed=done, reward=stats["reward_mean"], acc=state.evals[-1]["accuracy"])
    return finish_run(run_dir, runtime, state, leaps)


def run_record(run_dir: Path, state: LoopState, leaps) -> tuple[dict, dict]:
    """The run's bookkeeping a checkpoint holds beside the learner's state, for state.pt and for meta.json: what a
    resume from it continues with (meta.json has the last evaluation only)."""
    record = {"learner_steps": state.learner_steps, "log_rows": log_positions(run_dir), **leaps.checkpoint_state()}
    return {**record, "evals": state.evals}, {**record, "evals": state.evals[-1:]}


def save_checkpoint(job: PreparedJob, runtime, run_dir: Path, state: LoopState, leaps, rollouts: Rollouts, done: int,
                    row: dict) -> Path:
    """Checkpoint the current state, the leap state and the generations in flight included (or return the existing
    checkpoint of this step)."""
    if checkpoint_dir(run_dir, done).exists():
        return checkpoint_dir(run_dir, done)
    cfg, (state_record, meta_record) = job.cfg, run_record(run_dir, state, leaps)
    meta = {"metrics": row, "wall_time": time.time() - state.started, "base_model": str(job.model_dir), **meta_record}
    path = runtime.checkpoint(meta, {"data_position": done * cfg.rollout.prompts_per_step, **state_record,
                                     **rollouts.checkpoint_state()})
    if cfg.run.keep_checkpoints is not None:
        prune_checkpoints(run_dir, checkpoints_to_keep(cfg), protect=checkpoints_in_use(leaps))
    return path


def checkpoints_to_keep(cfg: JobConfig) -> int:
    """How many newest checkpoints run.keep_checkpoints keeps: at least, when the job leaps, what the extrapolation
    service reads (its window and the backtest one horizon earlier, at the longest horizon it may reach)."""
    keep = cfg.run.keep_checkpoints
    if cfg.extrapolate is not None:
        x = cfg.extrapolate
        keep = max(keep, x.window + max(1, round(x.max_horizon / cfg.run.checkpoint_every)))
    return keep


def checkpoints_in_use(leaps) -> set[int]:
    """Steps whose checkpoints pruning must keep: the pre-leap checkpoint of a leap under judgement (the run may go
    back to it)."""
    pending = leaps.state.pending if isinstance(leaps, LeapController) else None
    return {pending.from_step} if pending is not None else set()


def finish_run(run_dir: Path, runtime, state: LoopState, leaps) -> RunSummary:
    evals = state.evals
    summary = RunSummary(run_dir=str(run_dir), steps=runtime.step_count, acc_before=evals[0]["accuracy"],
                         acc_after=evals[-1]["accuracy"], best_acc=max(e["accuracy"] for e in evals),
                         seconds=time.time() - state.started, evals=evals, learner_steps=state.learner_steps,
                         leaps=leaps.summary(state.learner_steps))
    (Path(run_dir) / SUMMARY).write_text(json.dumps(summary.as_dict(), indent=2))
    return summary
