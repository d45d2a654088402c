"""Tasks: what gets trained (model + data + loss), their families and the named collections."""

from .base import Batch, Task
from .build import build_task
from .collections import (
    DEV_TASKS,
    HELD_OUT_HORIZON,
    HELD_OUT_SEEDS,
    HELD_OUT_TASKS,
    META_TRAIN_HORIZON,
    META_VALIDATION_TASKS,
    TaskDistribution,
    dev_suite,
    held_out_suite,
    meta_train_distribution,
    meta_train_large_distribution,
    meta_validation_suite,
)
from .families import FAMILY_BUILDERS, FamilySampler, make_task_spec
from .language import LanguageModelTask
from .sources import pixel_grid, supervised_data
from .spec import TaskSpec
from .supervised import SupervisedTask
from .training import TrainRun, train_task, train_with_adam

__all__ = [
    "Batch", "DEV_TASKS", "FAMILY_BUILDERS", "FamilySampler", "HELD_OUT_HORIZON", "HELD_OUT_SEEDS", "HELD_OUT_TASKS",
    "LanguageModelTask", "META_TRAIN_HORIZON", "META_VALIDATION_TASKS", "SupervisedTask", "Task", "TaskDistribution", "TaskSpec",
    "build_task", "dev_suite", "held_out_suite", "make_task_spec", "meta_train_distribution",
    "meta_train_large_distribution", "meta_validation_suite", "pixel_grid", "supervised_data",
    "TrainRun",
    "train_task",
    "train_with_adam",
]
