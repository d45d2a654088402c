"""Named starting points for `TrainConfig` (partial dicts layered over the defaults).

quick: CPU, a few minutes (the README's main command); small tasks, short unrolls.
gpu:   one GPU for hours: wider rule, more tasks per step, longer unrolls, second-order TBPTT.
multi: `accelerate launch` over N processes; per-process settings of gpu (each rank samples its
       own tasks, so tasks per outer step grow with N).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "name": "quick",
        "rule": {"hidden": 16, "layers": 1, "refresh_every": 10},
        "tasks": {
            "families": ["mlp_classification", "teacher_student", "deepsets"],
            "max_params": 1500,
            "groups": 2,
            "group_size": 2,
            "unroll_min": 20,
            "unroll_max": 200,
            "truncation": 10,
        },
        "meta": {"steps": 40, "lr": 3e-3},
        "log": {"compare_every": 20, "compare_steps": 50, "hist_every": 10},
        "checkpoint": {"every": 10},
    },
    "gpu": {
        "name": "gpu",
        "threads": 8,
        "rule": {"hidden": 16, "refresh_every": 50},
        "tasks": {"max_params": 200000, "groups": 8, "group_size": 4, "unroll_min": 200, "unroll_max": 10000, "truncation": 50},
        "estimator": {"second_order": True},
        "meta": {"steps": 20000, "lr": 1e-3},
        "log": {"every": 10, "compare_every": 500, "compare_steps": 300, "hist_every": 200},
        "checkpoint": {"every": 200},
    },
    "multi": {
        "name": "multi",
        "threads": 4,
        "rule": {"hidden": 16, "refresh_every": 50},
        "tasks": {"max_params": 200000, "groups": 4, "group_size": 4, "unroll_min": 200, "unroll_max": 10000, "truncation": 50},
        "estimator": {"second_order": True},
        "meta": {"steps": 20000, "lr": 1e-3},
        "log": {"every": 10, "compare_every": 500, "compare_steps": 300, "hist_every": 200},
        "checkpoint": {"every": 200},
    },
}
