"""Task registry: built-in tasks by name, user tasks by module path ("my_pkg.my_task:MyTask").

The built-in tasks register themselves with `@register_task(name)` when their modules are imported;
`rollout/tasks/__init__.py` imports them once, so `TASKS` is complete as soon as `rollout.tasks` is imported.
"""

from __future__ import annotations

import importlib

from common.registry import Registry
from rollout.tasks.base import Task

TASKS: Registry[type[Task]] = Registry("task")


def register_task(name: str):
    """Class decorator: register a task class under `name`, which becomes its `name` attribute (a second
    registration of the name is an error)."""
    def register(cls: type[Task]) -> type[Task]:
        TASKS.register(name)(cls)
        cls.name = name
        return cls
    return register


def task_class(spec: str) -> type[Task]:
    """The task class of a registered name ("arith") or a module path ("my_pkg.my_task:MyTask"), imported but not
    instantiated: what a check needs (the job's one task instance is made by load_task, once)."""
    if ":" in spec:
        return _user_task(spec)[0]
    if spec not in TASKS:
        raise ValueError(f"unknown task {spec!r}; built-in tasks: {', '.join(TASKS.names())}; "
                         f"or give a user task as 'module:Class'")
    return TASKS.get(spec)


def load_task(spec: str, data=None, encoder=None) -> Task:
    """A task instance from a registered name ("arith") or a module path ("my_pkg.my_task:MyTask"). The `dataset`
    task reads the job's data: section (`data`, a rollout.config.DataConfig); given the run's PromptEncoder it drops
    the prompts longer than data.max_prompt_tokens."""
    if ":" in spec:
        cls, instance = _user_task(spec)
        return instance if instance is not None else cls()
    cls = task_class(spec)
    if spec == "dataset":
        if data is None:
            raise ValueError("rollout.task: dataset reads the job's data: section, and there is none; add data: "
                             "with path, prompt_key (or messages_key) and answer_key")
        return cls(data, encoder)
    return cls()


def _user_task(spec: str) -> tuple[type, Task | None]:
    """(class, the instance when the module path names one instead of a class) of a user task."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"task {spec!r}: cannot import module {module_name!r} ({err}); check PYTHONPATH") from err
    found = getattr(module, attr, None)
    if found is None:
        raise ValueError(f"task {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if isinstance(found, type):
        return _checked_user_task(spec, found), None
    return type(found), _checked_user_task(spec, found)


def _checked_user_task(spec: str, task):
    for needed in ("name", "examples", "score", "max_new_tokens"):
        if not hasattr(task, needed):
            raise ValueError(f"task {spec!r} lacks {needed!r}: subclass rollout.tasks.base.Task")
    return task
