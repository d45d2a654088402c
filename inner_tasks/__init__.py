"""inner_tasks: the networks, data and training tasks that metaopt trains (offline, CPU-sized)."""

from .models import ModelSpec, build_model, count_params, spec_from_json, spec_to_json
from .tasks import (
    Task,
    TaskSpec,
    build_task,
    held_out_suite,
    make_task_spec,
    meta_train_distribution,
    train_with_adam,
)

__all__ = [
    "ModelSpec", "Task", "TaskSpec", "build_model", "build_task", "count_params", "held_out_suite",
    "make_task_spec", "meta_train_distribution", "spec_from_json", "spec_to_json", "train_with_adam",
]
