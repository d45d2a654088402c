"""Probe (dev suite, never the held-out one): is there a signal, at the moment the soap switch would switch, of the
tasks where SOAP's step then does worse than the lr-free default (the held-out SIREN)? Per dev task and seed: the
default and the switch run for STEPS steps; at the switch step the gradient's squared norm (this step's) over the
largest one seen so far (every 10th step sampled, as the plateau decay does) and the loss then over the loss at step 1.

    python docs/figures/optim/soap_switch_0.13/probe_gate/gate.py OUT.json STEPS SEEDS...
"""
import json, math, sys
import torch
torch.set_num_threads(1)
from inner_tasks import build_task
from inner_tasks.tasks.collections import dev_suite
from inner_tasks.tasks.training import train_task
from metaopt.optim import GMNOptimizer


def main() -> None:
    out, steps, seeds = sys.argv[1], int(sys.argv[2]), [int(s) for s in sys.argv[3:]]
    rows = []
    for k in seeds:
        for spec in dev_suite(20 + k, steps):
            task = build_task(spec)
            trace, held = {}, {}
            def make(kw):
                def build(model):
                    opt = GMNOptimizer(model, **kw)
                    held[str(kw)] = opt
                    if not kw:  # the default: the gradient norm on every 10th step
                        step = opt.step
                        def traced(*a, **kw2):
                            t = int(opt.state["steps_taken"]) + 1
                            if t % 10 == 0:
                                trace[t] = float(sum(p.grad.float().square().sum() for p in model.parameters()
                                                     if p.grad is not None))
                            return step(*a, **kw2)
                        opt.step = traced
                    return opt
                return build
            plain = train_task(task, make({}), steps, spec.seed, init_seed=spec.seed)
            switch = train_task(task, make({"soap_switch": True}), steps, spec.seed, init_seed=spec.seed)
            at = held[str({"soap_switch": True})].soap_switched_at
            peak = max([v for t, v in trace.items() if t <= at] or [math.nan])
            row = {"task": spec.name, "switched_at": at,
                   "grad_sq_over_peak": (trace.get(at, math.nan) / peak) if at else None,
                   "loss_at_switch_over_first": (plain.losses[at - 1] / plain.losses[0]) if at else None,
                   "default_final": sum(plain.losses[-10:]) / 10, "switch_final": sum(switch.losses[-10:]) / 10}
            row["switch_over_default"] = row["switch_final"] / row["default_final"]
            rows.append(row)
            print({k2: (f"{v:.3g}" if isinstance(v, float) else v) for k2, v in row.items()}, flush=True)
            json.dump(rows, open(out, "w"), indent=1)


if __name__ == "__main__":
    main()
