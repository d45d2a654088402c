"""What the SOAP probes share: a run scored against tuned Adam's run of the same task and seed, as
`outer_train.evaluate` scores it (steps and seconds to tuned Adam's final loss)."""
from outer_train.evaluate import steps_to


def score(run: dict, adam: dict) -> dict:
    """``run`` (an `outer_train.evaluate.run_optimizer` result) against ``adam``'s final loss."""
    target = adam["final_loss"]
    a, s = steps_to(adam["curve"], target), steps_to(run["curve"], target)
    return {"final_loss": run["final_loss"], "steps_to_adam": s, "speedup": a / s if (a and s) else 0.0,
            "wall_speedup": (adam["times"][a - 1] / run["times"][s - 1]) if (a and s) else 0.0,
            "ms_per_step": run["ms_per_step"], "diverged": run["diverged"]}
