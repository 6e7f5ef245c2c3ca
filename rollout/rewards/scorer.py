"""The one scoring path of a run (training steps, evaluations, pass@k, leap scoring): every reward function of the
job on every completion, concurrently, with a timeout each, and never a silent 0.

- Sync functions run in worker threads, `async def` ones on one event loop (a daemon thread, as TRL's trainer
  does); all of a batch's functions run at the same time and each is given `timeout_s`.
- A function that raises, times out or returns something other than one float (or None) per completion gives those
  completions no reward (like None) and counts them in `reward_errors/<name>`; the warning names the function, the
  step and the exception. Once more than `max_error_rate` of the completions a function scored since the run started
  (judged from 32 completions on) got an error, the run fails with `RewardFailure` naming the function and its last
  exception.
- The total reward of a completion is the weighted sum of the functions that scored it (TRL's nan-sum); one that no
  function scored is "unscorable": for training it takes its group's mean total, so its advantage is 0 and it does
  not move the group's baseline (TRL excludes it from the baseline and zeroes its advantage).
"""

from __future__ import annotations

import asyncio
import math
import numbers
import traceback
from dataclasses import dataclass
from functools import partial

from rollout.background import background
from rollout.rewards.base import RewardFn, is_async, load_reward, task_reward
from rollout.tasks.base import Task

MIN_JUDGED = 32  # completions a function must have scored before its error rate can fail the run


class RewardFailure(ValueError):
    """A reward function failed on more completions than its max_error_rate allows (a ValueError, like a bad config:
    `leapfrog run` and the driver report it as the job's error, without a traceback)."""


@dataclass(frozen=True)
class TrainerState:
    """What TRL's `trainer_state` tells a reward function about training progress."""

    global_step: int
    max_steps: int


@dataclass
class RewardFunction:
    """One reward function of a job, with its weight and limits."""

    name: str
    fn: RewardFn
    weight: float = 1.0
    timeout_s: float = 60.0
    max_error_rate: float = 0.1


@dataclass
class Scores:
    """The rewards of one scored batch: per function and completion (None: not applicable, or an error), the
    weighted totals (None: no function scored it) and the errors per function."""

    values: dict[str, list[float | None]]
    totals: list[float | None]
    errors: dict[str, int]

    def metrics(self) -> dict[str, float | int | None]:
        """TRL's per-function metrics over the completions each function scored: rewards/<name>/mean and /std
        (sample std; None when it scored none), and reward_errors/<name>."""
        out: dict[str, float | int | None] = {}
        for name, values in self.values.items():
            scored = [v for v in values if v is not None]
            out[f"rewards/{name}/mean"] = sum(scored) / len(scored) if scored else None
            out[f"rewards/{name}/std"] = _std(scored) if scored else None
            out[f"reward_errors/{name}"] = self.errors[name]
        return out

    @classmethod
    def gather(cls, picks: list[tuple[Scores, int, int]]) -> Scores:
        """The scores of chosen groups, in order: picks of (scores, group index, group size); errors add up over the
        distinct Scores picked from."""
        names = list(picks[0][0].values)
        values: dict[str, list[float | None]] = {name: [] for name in names}
        totals: list[float | None] = []
        for scores, group, size in picks:
            rows = slice(group * size, (group + 1) * size)
            for name in names:
                values[name] += scores.values[name][rows]
            totals += scores.totals[rows]
        distinct = list({id(p[0]): p[0] for p in picks}.values())
        return cls(values, totals, {name: sum(s.errors[name] for s in distinct) for name in names})

    def training_rewards(self, group_size: int) -> list[float]:
        """The totals for the learner, grouped consecutively by `group_size`: an unscorable completion takes its
        group's mean total (0.0 when none of the group was scored), so it gets no advantage."""
        out = []
        for start in range(0, len(self.totals), group_size):
            group = self.totals[start:start + group_size]
            scored = [t for t in group if t is not None]
            fill = sum(scored) / len(scored) if scored else 0.0
            out += [fill if t is None else t for t in group]
        return out


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


class Scorer:
    """Scores completions with a job's reward functions; counts each function's errors over the run."""

    def __init__(self, functions: list[RewardFunction], max_completion_length: int, max_steps: int = 0,
                 accuracy: str | None = None, warn=print):
        if not functions:
            raise ValueError("a scorer needs at least one reward function")
        self.functions, self.max_completion_length, self.max_steps = functions, max_completion_length, max_steps
        self.accuracy = accuracy or functions[0].name
        if self.accuracy not in [f.name for f in functions]:
            raise ValueError(f"accuracy reward {self.accuracy!r} is not one of {[f.name for f in functions]}")
        self.warn = warn
        self.scored = {f.name: 0 for f in functions}
        self.failed = {f.name: 0 for f in functions}
        self.last_error: dict[str, str] = {}

    @classmethod
    def for_job(cls, rewards: list, task, max_completion_length: int, max_steps: int = 0,
                accuracy: str | None = None, warn=print, environment_reward: str | None = None) -> Scorer:
        """The scorer of a job's `rewards:` (rollout.config.RewardConfig entries), or of the task's own verifier
        when there are none. A multi-turn job whose environment defines get_reward adds its reward under
        `environment_reward` (the class name, weight 1, as TRL does); with no `rewards:` it is the only one.
        Loading errors are ValueErrors naming the entry."""
        functions = []
        for i, r in enumerate(rewards):
            try:
                fn = load_reward(r.fn, r.args)
            except ValueError as err:
                raise ValueError(f"rewards[{i}].fn: {err}") from None
            functions.append(RewardFunction(r.metric_name, fn, r.weight, r.timeout_s, r.max_error_rate))
        if environment_reward is not None:
            functions.append(RewardFunction(environment_reward, environment_rewards))
        if not functions:
            if getattr(type(task), "score", Task.score) is Task.score:
                raise ValueError(f"task {task.name!r} has no verifier of its own; list reward functions in rewards:")
            functions = [RewardFunction(task.name, task_reward(task))]
        return cls(functions, max_completion_length, max_steps, accuracy, warn)

    def score(self, examples: list, groups: list[list], step: int = 0) -> Scores:
        """Score groups[i] (Completions of examples[i]) with every function; raises RewardFailure past a function's
        error rate."""
        flat = [(ex, c) for ex, group in zip(examples, groups, strict=True) for c in group]
        kwargs = self.arguments(flat, step)
        loop, _ = background()
        results = asyncio.run_coroutine_threadsafe(self._run_all(kwargs), loop).result()
        values, errors = {}, {}
        for f, result in zip(self.functions, results, strict=True):
            values[f.name], errors[f.name], problem = _checked(f, result, len(flat))
            if errors[f.name] and f.name not in self.last_error and isinstance(result, Exception):
                self.warn("".join(traceback.format_exception(result)).rstrip())  # the first one in full
            self._count(f, len(flat), errors[f.name], problem, step)
        totals = []
        for i in range(len(flat)):
            parts = [f.weight * values[f.name][i] for f in self.functions if values[f.name][i] is not None]
            totals.append(sum(parts) if parts else None)
        return Scores(values, totals, errors)

    def accuracy_values(self, scores: Scores) -> list[float]:
        """Per completion, the accuracy reward's value (a completion it did not score counts 0)."""
        return [0.0 if v is None else v for v in scores.values[self.accuracy]]

    def arguments(self, flat: list, step: int) -> dict:
        """The keyword arguments of one call, one entry per completion (TRL's names)."""
        keys = list(dict.fromkeys(k for ex, _ in flat for k in ex.meta))
        columns = {k: [ex.meta.get(k) for ex, _ in flat] for k in keys}
        multi_turn = {"environment_rewards": [(c.trajectory or {}).get("env_reward") for _, c in flat]} \
            if any(c.trajectory is not None for _, c in flat) else {}
        return {**columns, **multi_turn, "answer": [ex.answer for ex, _ in flat],
                "prompts": [ex.prompt for ex, _ in flat],
                "completions": [c.trajectory["messages"] if c.trajectory is not None else
                                c.text if isinstance(ex.prompt, str) else [{"role": "assistant", "content": c.text}]
                                for ex, c in flat],
                "completion_ids": [list(c.token_ids) for _, c in flat],
                "max_completion_length": self.max_completion_length,
                "trainer_state": TrainerState(step, self.max_steps)}

    async def _run_all(self, kwargs: dict) -> list:
        loop = asyncio.get_running_loop()
        _, threads = background()

        async def one(f: RewardFunction):
            call = f.fn(**kwargs) if is_async(f.fn) else loop.run_in_executor(threads, partial(f.fn, **kwargs))
            return await asyncio.wait_for(call, f.timeout_s)

        return await asyncio.gather(*(one(f) for f in self.functions), return_exceptions=True)

    def _count(self, f: RewardFunction, n: int, errors: int, problem: str | None, step: int) -> None:
        self.scored[f.name] += n
        self.failed[f.name] += errors
        if not errors:
            return
        self.last_error[f.name] = problem
        self.warn(f"reward {f.name!r}: {errors} of {n} completions got no reward at step {step}: {problem}")
        rate = self.failed[f.name] / self.scored[f.name]
        if self.scored[f.name] >= MIN_JUDGED and rate > f.max_error_rate:
            raise RewardFailure(f"reward function {f.name!r} failed on {self.failed[f.name]} of {self.scored[f.name]} "
                                f"completions scored so far ({rate:.0%}, more than its max_error_rate "
                                f"{f.max_error_rate:.0%}); last error: {problem}. Fix the function, or raise its "
                                f"max_error_rate / timeout_s in rewards:")


def environment_rewards(environment_rewards: list, **columns) -> list:
    """The environment's own reward of each multi-turn rollout (its get_reward() at the end; None where it had none)."""
    return list(environment_rewards)


def _checked(f: RewardFunction, result, n: int) -> tuple[list[float | None], int, str | None]:
    """(values, completions with an error, what went wrong) of one function's result (or exception)."""
    if isinstance(result, BaseException):
        if isinstance(result, (asyncio.TimeoutError, TimeoutError)):
            return [None] * n, n, f"timed out after {f.timeout_s:g} s (rewards: timeout_s)"
        where = traceback.extract_tb(result.__traceback__)[-1:] if result.__traceback__ else []
        at = f" (at {where[0].filename}:{where[0].lineno})" if where else ""
        return [None] * n, n, f"{type(result).__name__}: {result}{at}"
    if not isinstance(result, (list, tuple)) or len(result) != n:
        got = f"{len(result)} values" if isinstance(result, (list, tuple)) else type(result).__name__
        return [None] * n, n, f"returned {got}, but {n} were expected (one float or None per completion)"
    values, errors, problem = [], 0, None
    for i, v in enumerate(result):
        if v is None or (isinstance(v, numbers.Real) and math.isnan(v)):
            values.append(None)
        elif isinstance(v, numbers.Real) and math.isfinite(v):
            values.append(float(v))
        else:
            values.append(None)
            errors += 1
            problem = problem or f"completion {i}: returned {v!r}, not a finite float or None"
    return values, errors, problem
