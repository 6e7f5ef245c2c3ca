from rollout.tasks.base import Example, ListTask, Task
from rollout.tasks.registry import TASKS, load_task, register_task

# The built-in tasks, registered once here (each module registers its class with @register_task).
from rollout.tasks import arith, digitsum, ranklist, sums  # noqa: E402, F401, I001  (after the registry they use)

__all__ = ["Example", "ListTask", "Task", "TASKS", "load_task", "register_task"]
