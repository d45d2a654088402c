"""What the soap switch costs on the held-out tasks (seed 0, one thread): the whole loop and the step alone, ms per
step over steps 101-300, for tuned-Adam-like Adam (lr 1e-3), GMNOptimizer(model) and GMNOptimizer(model,
soap_switch=SoapSwitch(window=10)) (switched by step ~30, so steps 101-300 are SOAP's), and the switched state's size;
with --columns also SoapSwitch(window=10, sides="columns") (0.14; step_cost_seed0.* were written without it), and
with --variant LABEL:KEY=VALUE[,KEY=VALUE] (as outer_train.evaluate's --soap-variant; repeatable) a
SoapSwitch(window=10, KEY=VALUE, ...) labelled LABEL (0.15: e.g. block64c:sides="'columns'",block=64).

    python docs/figures/optim/soap_switch_0.13/step_cost.py OUT_STEM [--columns] [--variant ...] [TASKS...]
        -> OUT_STEM.json, .md
"""
import dataclasses, json, sys, time
import torch
torch.set_num_threads(1)
from inner_tasks import build_task
from inner_tasks.tasks.collections import held_out_suite
from inner_tasks.tasks.training import train_task
from metaopt.optim import GMNOptimizer, SoapSwitch
from outer_train.evaluate import parse_soap_variant

STEPS, FROM = 300, 100
MAKERS = {"adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-3), "default": lambda m: GMNOptimizer(m),
          "switch": lambda m: GMNOptimizer(m, soap_switch=SoapSwitch(window=10)),
          "columns": lambda m: GMNOptimizer(m, soap_switch=SoapSwitch(window=10, sides="columns"))}


def state_numbers(opt: GMNOptimizer) -> int:
    """Every number the optimizer keeps: its flat buffers and the matrices' statistics and bases."""
    flat = sum(t.numel() for k, t in opt._buffers.items() if k != "step")
    return flat + sum(v.numel() for b in opt.state.get("soap_bases", {}).values() for v in b.values())


def main() -> None:
    stem, args, tasks, extra = sys.argv[1], sys.argv[2:], [], {}
    while args:
        arg = args.pop(0)
        if arg == "--variant":
            spec = args.pop(0)
            label, switch = parse_soap_variant(spec, sys.exit)
            window = switch.window if "window=" in spec else 10  # switched by step ~30 unless it says otherwise
            extra[label] = lambda m, s=dataclasses.replace(switch, window=window): GMNOptimizer(m, soap_switch=s)
        elif arg != "--columns":
            tasks.append(arg)
    variants = ["switch", "columns"] if "--columns" in sys.argv else ["switch"]
    variants += list(extra)
    makers = {k: v for k, v in {**MAKERS, **extra}.items() if k in ("adam", "default", *variants)}
    rows = []
    for spec in held_out_suite((0,), STEPS):
        if tasks and spec.name.split("/")[0] not in tasks:
            continue
        task = build_task(spec)
        row = {"task": spec.name, "params": task.num_params}
        for name, make in makers.items():
            spent, held = [], {}
            def timed_opt(model, make=make):
                opt = make(model)
                held["opt"], step = opt, opt.step
                def step_timed(*a, **k):
                    t = time.perf_counter(); out = step(*a, **k); spent.append(time.perf_counter() - t); return out
                opt.step = step_timed
                return opt
            run = train_task(task, timed_opt, STEPS, 0, init_seed=0)
            row[f"{name}_loop_ms"] = 1000 * (run.times[-1] - run.times[FROM - 1]) / (STEPS - FROM)
            row[f"{name}_step_ms"] = 1000 * sum(spent[FROM:]) / (STEPS - FROM)
            if name != "adam":
                row[f"{name}_state_x"] = state_numbers(held["opt"]) / task.num_params
            if name in variants:
                row[f"{name}_switched_at"] = held["opt"].soap_switched_at
        rows.append(row)
        print(row, flush=True)
    json.dump(rows, open(f"{stem}.json", "w"), indent=1)
    names = " / ".join(variants)
    lines = [f"| task | params | loop ms: Adam / default / {names} (x Adam) | step ms: Adam / default / {names} | "
             f"state x params: default / {names} |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        loops = " / ".join(f"{r[f'{v}_loop_ms']:.2f} ({r[f'{v}_loop_ms'] / r['adam_loop_ms']:.2f}x)" for v in variants)
        steps = " / ".join(f"{r[f'{v}_step_ms']:.2f}" for v in variants)
        states = " / ".join(f"{r[f'{v}_state_x']:.2f}" for v in variants)
        lines.append(f"| {r['task']} | {r['params']:,} | {r['adam_loop_ms']:.2f} / {r['default_loop_ms']:.2f} / {loops} | "
                     f"{r['adam_step_ms']:.2f} / {r['default_step_ms']:.2f} / {steps} | {r['default_state_x']:.2f} / {states} |")
    open(f"{stem}.md", "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
