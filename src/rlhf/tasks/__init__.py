"""Built-in tasks: prompt generators with a programmatic gold judge that the learned reward is measured against."""

from __future__ import annotations

from rlhf.tasks.instruct import ALL_STYLES, BIASES, FORMAT_STYLES, PREMISE_STYLES, STYLES, InstructTask
from rlhf.tasks.judge import DETECTORS, detect, hack_rates

TASKS = {"instruct": InstructTask}

# The TaskConfig fields a task is built with, besides its name (and the run's seed).
TASK_OPTIONS = (
    "label_noise",
    "length_bias",
    "label_by",
    "bias_sycophancy",
    "bias_hedging",
    "bias_format",
    "premise_fraction",
    "format_fraction",
    "agree_fraction",
)

__all__ = [
    "ALL_STYLES",
    "BIASES",
    "DETECTORS",
    "FORMAT_STYLES",
    "PREMISE_STYLES",
    "STYLES",
    "TASKS",
    "TASK_OPTIONS",
    "InstructTask",
    "detect",
    "get_task",
    "hack_rates",
    "task_options",
]


def get_task(name: str, **kwargs) -> InstructTask:
    """The task called `name`, built with `kwargs`; raises ValueError naming the known tasks otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](**kwargs)


def task_options(task_config) -> dict:
    """The keyword arguments of `get_task` that a `config.TaskConfig` holds (`TASK_OPTIONS`), by name."""
    return {name: getattr(task_config, name) for name in TASK_OPTIONS}
