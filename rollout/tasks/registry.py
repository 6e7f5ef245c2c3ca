"""Task registry: built-in tasks by name, user tasks by module path ("my_pkg.my_task:MyTask")."""

from __future__ import annotations

import importlib

from rollout.tasks.base import Task

TASKS: dict[str, type[Task]] = {}


def register_task(name: str):
    def decorate(cls: type[Task]) -> type[Task]:
        TASKS[name] = cls
        return cls

    return decorate


def load_task(spec: str) -> Task:
    """A task instance from a registered name ("arith") or a module path ("my_pkg.my_task:MyTask")."""
    import rollout.tasks.arith  # noqa: F401  (registers the built-in tasks)
    import rollout.tasks.digitsum  # noqa: F401
    import rollout.tasks.ranklist  # noqa: F401
    import rollout.tasks.sums  # noqa: F401

    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"task {spec!r}: cannot import module {module_name!r} ({err}); check PYTHONPATH") from err
        cls = getattr(module, attr, None)
        if cls is None:
            raise ValueError(f"task {spec!r}: module {module_name!r} has no attribute {attr!r}")
        task = cls() if isinstance(cls, type) else cls
        for needed in ("name", "examples", "score", "max_new_tokens"):
            if not hasattr(task, needed):
                raise ValueError(f"task {spec!r} lacks {needed!r}: subclass rollout.tasks.base.Task")
        return task
    if spec not in TASKS:
        raise ValueError(f"unknown task {spec!r}; built-in tasks: {sorted(TASKS)}, or give 'module:Class'")
    return TASKS[spec]()
