"""A plateau signal the optimizer can read without the loss: the gradient at the model's output. Per run of 0.17's
GMNOptimizer(model): the step the switch came after, the loss there (mean of the 10 steps before it) over the first
loss, and the norm of dL/d(output) there (same mean) over its mean over the first 10 steps, read by a forward hook on
the model that hooks the output tensor's gradient (what GMNOptimizer, which is given the model, could register).
Suites: "shapes" (held-out shapes CNN and MLP, seeds 144-163, as plateau_rate_probe.py) or "dev" (every dev task,
seeds 20-23); runs split over processes (k of n). Steps only, one thread. Writes output_gradient_probe_<suite>_<k>.json;
--merge writes output_gradient_probe.md from every such file.

    python docs/figures/optim/window_0.17/output_gradient_probe.py shapes 0 2 & (... shapes 1 2, dev 0 2, dev 1 2)
    python docs/figures/optim/window_0.17/output_gradient_probe.py --merge
"""
import json
import sys
from pathlib import Path

import torch

from inner_tasks import build_task
from inner_tasks.tasks.collections import dev_suite, held_out_suite
from metaopt.optim import GMNOptimizer
from outer_train.evaluate import run_optimizer

torch.set_num_threads(1)
HERE = Path(__file__).parent
STEPS = 1000


def specs(suite: str) -> list:
    if suite == "dev":
        return [s for k in range(4) for s in dev_suite(20 + k, STEPS)]
    return [s for s in held_out_suite(tuple(range(144, 164)), STEPS)
            if s.name.split("/")[0] in ("cnn_shapes", "mlp_shapes")]


def probe(suite: str, part: int, parts: int) -> None:
    rows = []
    for spec in specs(suite)[part::parts]:
        task, seed = build_task(spec), int(spec.name.rsplit("/s", 1)[1])
        box, norms = {}, []

        def make(model, box=box, norms=norms):
            def on_output(module, inputs, output):
                if isinstance(output, torch.Tensor) and output.requires_grad:
                    output.register_hook(lambda g: norms.append(float(g.detach().float().norm())))
            model.register_forward_hook(on_output)
            box["opt"] = GMNOptimizer(model)
            return box["opt"]
        run = run_optimizer(task, make, STEPS, seed)
        curve, t = run["curve"], box["opt"].soap_switched_at
        row = {"task": spec.name, "switched_at": t, "final": run["final_loss"]}
        if t:
            row["loss_at_switch"] = sum(curve[t - 10:t]) / 10 / curve[0]
            row["output_grad_at_switch"] = sum(norms[t - 10:t]) / 10 / (sum(norms[:10]) / 10)
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = HERE / f"output_gradient_probe_{suite}_{part}.json"
    out.write_text(json.dumps({"steps": STEPS, "rows": rows}, indent=1) + "\n")


def merge() -> None:
    rows = [r for f in sorted(HERE.glob("output_gradient_probe_*.json")) for r in json.loads(f.read_text())["rows"]]
    lines = [f"0.17's `GMNOptimizer(model)`, {STEPS} steps "
             "(`python docs/figures/optim/window_0.17/output_gradient_probe.py`): per task, the runs' loss at the switch over the first loss and the output gradient's norm there over its "
             "first 10 steps' (each the mean of the 10 steps before the switch), lowest to highest; runs that did not "
             "switch left out.", "", "| task | runs | loss at switch / first | output gradient at switch / first |",
             "|---|---:|---|---|"]
    for name in dict.fromkeys(r["task"].split("/")[0] for r in rows):
        mine = sorted((r for r in rows if r["task"].split("/")[0] == name and r["switched_at"]),
                      key=lambda r: r["output_grad_at_switch"])
        lines.append(f"| {name} | {len(mine)} | " + " ".join(f"{r['loss_at_switch']:.2f}" for r in mine) + " | "
                     + " ".join(f"{r['output_grad_at_switch']:.2f}" for r in mine) + " |")
    (HERE / "output_gradient_probe.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    merge() if sys.argv[1:] == ["--merge"] else probe(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
