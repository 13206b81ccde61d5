"""Built-in tasks: prompt generators with a programmatic gold judge that the learned reward is measured against."""

from __future__ import annotations

from rlhf.tasks.instruct import STYLES, InstructTask

TASKS = {"instruct": InstructTask}

__all__ = ["STYLES", "TASKS", "InstructTask", "get_task"]


def get_task(name: str, **kwargs) -> InstructTask:
    """The task called `name`, built with `kwargs`; raises ValueError naming the known tasks otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](**kwargs)
