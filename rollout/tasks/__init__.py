# The built-in tasks are registered once, here: each module registers its class with @register_task on import.
from rollout.tasks import arith, dataset, digitsum, ranklist, sums  # noqa: F401
from rollout.tasks.base import Example, ListTask, Task
from rollout.tasks.registry import TASKS, load_task, register_task, task_class

__all__ = ["Example", "ListTask", "Task", "TASKS", "load_task", "register_task", "task_class"]
