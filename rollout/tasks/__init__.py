from rollout.tasks.base import Example, Task
from rollout.tasks.registry import TASKS, load_task, register_task

__all__ = ["Example", "Task", "TASKS", "load_task", "register_task"]
