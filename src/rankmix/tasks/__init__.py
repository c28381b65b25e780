"""Tasks: the benchmark registry (loading local files or the hub, prompts and answers, metrics)."""

from .base import Example, Reader, Task
from .custom import load_custom_task
from .metrics import METRICS, compute
from .registry import get_task, register_task, task_names

__all__ = [
    "METRICS",
    "Example",
    "Reader",
    "Task",
    "compute",
    "get_task",
    "load_custom_task",
    "register_task",
    "task_names",
]
