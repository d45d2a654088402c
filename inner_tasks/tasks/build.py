"""`build_task(spec)`: the Task class is chosen by the data source."""

from __future__ import annotations

from .base import Task
from .language import LanguageModelTask
from .spec import TaskSpec
from .supervised import SupervisedTask


def build_task(spec: TaskSpec) -> Task:
    """Instantiate the task `spec` describes (text -> LanguageModelTask, else SupervisedTask)."""
    if spec.data.get("source") == "text":
        return LanguageModelTask(spec)
    return SupervisedTask(spec)
