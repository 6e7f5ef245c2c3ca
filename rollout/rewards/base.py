"""Reward functions in TRL's signature, `fn(prompts, completions, **columns) -> list[float | None]`, and how they are
found: `REWARDS` holds the built-ins as factories (`factory(**args) -> reward function`), `load_reward` turns a
`rewards:` entry's `fn` (a built-in name or 'module:function') into a callable, and `task_reward` makes a task's own
verifier (`Task.score`) one more such function, so every score goes through one path (rollout/rewards/scorer.py).

What a reward function receives, all by keyword (as TRL's GRPOTrainer passes them):
    prompts      one per completion: the problem's prompt, text or chat messages (the system message included)
    completions  the completion text, or [{"role": "assistant", "content": text}] when the prompt is chat messages;
                 for a multi-turn rollout the whole conversation after the prompt (assistant, tool and user messages)
    environment_rewards    multi-turn only: the environment's get_reward() of each rollout (None without one)
    answer       the problem's reference answer; every other column of the problem under its own name
    completion_ids         the completion's token ids (the end token included when it was sampled)
    max_completion_length  the run's completion limit in tokens
    trainer_state          TrainerState(global_step, max_steps), for shaping by training progress
It returns one float per completion, or None where it does not apply. Write functions with **kwargs so that
columns they do not use are accepted.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable

from common.registry import Registry

RewardFn = Callable[..., list]
REWARDS: Registry[Callable[..., RewardFn]] = Registry("reward")


def completion_text(completion) -> str:
    """The text of a completion as reward functions get it: a string, or the content of its (last) assistant
    message: a multi-turn rollout's final answer."""
    if isinstance(completion, str):
        return completion
    answers = [m.get("content") or "" for m in completion if m.get("role") == "assistant"]
    return answers[-1] if answers else ""


def is_async(fn) -> bool:
    """Whether calling fn returns a coroutine (async def functions, partials of them and async __call__)."""
    if inspect.iscoroutinefunction(fn):
        return True
    return not inspect.isroutine(fn) and inspect.iscoroutinefunction(type(fn).__call__)


def load_reward(spec: str, args: dict | None = None) -> RewardFn:
    """The reward function of a `rewards:` entry: a built-in built with `args`, or 'module:function' imported (with
    `args` bound as keyword arguments). Raises ValueError naming the problem and the fix."""
    args = dict(args or {})
    if ":" not in spec:
        if spec not in REWARDS:
            raise ValueError(f"unknown reward {spec!r}; built-ins: {', '.join(REWARDS.names())}; or give a user "
                             f"function as 'module:function'")
        factory = REWARDS.get(spec)
        try:
            inspect.signature(factory).bind(**args)
        except TypeError as err:
            raise ValueError(f"reward {spec!r}: bad args {args} ({err}); its parameters: "
                             f"{', '.join(inspect.signature(factory).parameters) or 'none'}") from None
        return factory(**args)
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"reward {spec!r}: cannot import module {module_name!r} ({err}); check PYTHONPATH or the "
                         f"driver's working directory") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
    if fn is None or not callable(fn):
        raise ValueError(f"reward {spec!r}: module {module_name!r} has no function {attr!r}")
    return functools.partial(fn, **args) if args else fn


def task_reward(task) -> RewardFn:
    """A task's verifier as a reward function named after the task: `task.score(example, text)` of each completion,
    the example rebuilt from the prompt, the answer and the other columns (Example.meta)."""
    from rollout.data import RESERVED_COLUMNS
    from rollout.tasks.base import Example

    def reward(prompts, completions, answer, **columns):
        meta_keys = [k for k in columns if k not in RESERVED_COLUMNS]
        return [float(task.score(Example(id="", prompt=p, answer=a, meta={k: columns[k][i] for k in meta_keys}),
                                 completion_text(c)))
                for i, (p, c, a) in enumerate(zip(prompts, completions, answer, strict=True))]

    reward.__name__ = task.name
    return reward
