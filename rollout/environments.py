"""Environments and tools of multi-turn jobs (`rollout.environment`, `rollout.tools`), found by name like tasks.

An environment is a class in the shape TRL 1.16 documents for GRPOTrainer's `environment_factory`, so a class written
for TRL runs here unchanged; one instance per rollout, made with no arguments:

    reset(**example) -> str | None   called first with the problem's columns (prompt, answer and the task's other
                                     columns); text it returns is appended to the prompt's last message
    <public methods>                 the tools the model may call (schemas from their type hints and docstrings)
    get_reward() -> float            optional: the finished rollout's reward (a reward named after the class)
    respond(text) -> str | None      optional, Leapfrog's: the environment's answer in the user's voice to a model
                                     turn that called no tool (feedback such as "too high, try again"); None ends the
                                     rollout. Games and multi-attempt tasks use it.

Methods may be sync or `async def`; every call has the job's timeout. `rollout.tools` lists plain functions
(`module:function`, or a built-in tool name such as `python`, the sandboxed code tool of rollout/sandbox.py).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from common.registry import Registry
from rollout.tasks.sums import last_integer_of_first_line

NOT_TOOLS = ("reset", "get_reward", "respond")  # an environment's public methods that the model cannot call
ENVIRONMENTS: Registry[type] = Registry("environment")
TOOLS: Registry[Callable[..., Callable]] = Registry("tool")  # factories: factory(sandbox_settings) -> tool function


def _import(spec: str, kind: str):
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{kind} {spec!r} is neither a built-in name nor 'module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{kind} {spec!r}: cannot import module {module_name!r} ({err}); check PYTHONPATH or the "
                         f"driver's working directory") from None
    found = module
    for part in attr.split("."):
        found = getattr(found, part, None)
    if found is None:
        raise ValueError(f"{kind} {spec!r}: module {module_name!r} has no attribute {attr!r}")
    return found


def environment_class(spec: str) -> type:
    """The environment class of a registered name or 'module:Class', checked for `reset` (ValueError naming it)."""
    if ":" not in spec:
        if spec not in ENVIRONMENTS:
            raise ValueError(f"unknown environment {spec!r}; built-ins: {', '.join(ENVIRONMENTS.names())}; or give "
                             f"a user environment as 'module:Class'")
        return ENVIRONMENTS.get(spec)
    cls = _import(spec, "environment")
    if not isinstance(cls, type):
        raise ValueError(f"environment {spec!r} is not a class (give the class, TRL's environment_factory shape)")
    if not callable(getattr(cls, "reset", None)):
        raise ValueError(f"environment {spec!r} has no reset(**example) method; an environment class defines reset "
                         f"and its tools as public methods (TRL's environment_factory shape)")
    return cls


def environment_tools(environment) -> list[Callable]:
    """The tools of an environment instance: its public methods except reset, get_reward and respond (listed on the
    class, as TRL does, so that properties are not evaluated)."""
    return [getattr(environment, name) for name, _ in inspect.getmembers(type(environment), inspect.isfunction)
            if not name.startswith("_") and name not in NOT_TOOLS]


def load_tool(spec: str, sandbox=None) -> Callable:
    """A tool function from a built-in name (made with the job's sandbox settings) or 'module:function'."""
    if ":" not in spec:
        if spec not in TOOLS:
            raise ValueError(f"unknown tool {spec!r}; built-ins: {', '.join(TOOLS.names())}; or give a user tool as "
                             f"'module:function'")
        return TOOLS.get(spec)(sandbox)
    fn = _import(spec, "tool")
    if not callable(fn):
        raise ValueError(f"tool {spec!r} is not callable")
    return fn


@TOOLS.register("python")
def python_tool(sandbox=None) -> Callable:
    """Runs model-written Python in the bubblewrap sandbox (rollout/sandbox.py) with the job's rollout.sandbox limits."""
    from rollout.sandbox import SandboxLimits, sandbox_problem
    from rollout.sandbox import python_tool as make_tool

    problem = sandbox_problem()
    if problem:
        raise ValueError(f"tool 'python': {problem}")
    limits = SandboxLimits(**sandbox.model_dump()) if sandbox is not None else SandboxLimits()
    return make_tool(limits)


@ENVIRONMENTS.register("sums_retry")
class SumsRetry:
    """A multi-attempt game on the `sums` task: after a wrong answer the environment says whether it was too high or
    too low and asks again (`respond`), until the answer is right or the turns run out. Reward (`get_reward`):
    1 / attempts when solved (1.0 at the first attempt, 0.5 at the second, ...), 0 when not."""

    def reset(self, answer: int, **example) -> None:
        self.answer, self.attempts, self.solved = int(answer), 0, False

    def respond(self, text: str) -> str | None:
        self.attempts += 1
        guess = last_integer_of_first_line(text)
        if guess == self.answer:
            self.solved = True
            return None
        if guess is None:
            return "I could not find a number in your answer. Try again: reply with just the number."
        hint = "too high" if guess > self.answer else "too low"
        return f"No, {guess} is {hint}. Try again: reply with just the number."

    def get_reward(self) -> float:
        return 1.0 / self.attempts if self.solved else 0.0
