"""The spike cut's cost a step: GMNOptimizer's step after the switch with and without SoapSwitch(spike_cut=30)
(one gradient norm a step for the watch), interleaved in blocks of 40 steps, one thread, seed 0 of three held-out
tasks. Writes watch_cost.md beside this file.

    python docs/figures/optim/spike_cut_0.17/watch_cost.py
"""
from pathlib import Path

import copy, time, torch
from itertools import islice
from inner_tasks import build_task
from inner_tasks.tasks.collections import held_out_suite
from metaopt.optim import GMNOptimizer, SoapSwitch
torch.set_num_threads(1)
rows = []
for name in ("mlp_shapes", "transformer_lm_stdlib", "mlp_digits_wide"):
    spec = next(s for s in held_out_suite((0,), 1000) if s.name.split("/")[0] == name)
    task = build_task(spec)
    batches = list(islice(task.train_batches(0), 600))
    runs = {}
    for label, sw in (("0.16", SoapSwitch(window=20, decline_below=0.0)), ("spike_cut=30", SoapSwitch(window=20, decline_below=0.0, spike_cut=30.0))):
        model = copy.deepcopy(task.model)
        opt = GMNOptimizer(model, soap_switch=sw)
        i = 0
        while not opt.soap_switched_at:
            b = batches[i]; i += 1
            loss = task.loss(model(b[0]), b); opt.zero_grad(); loss.backward(); opt.step()
        runs[label] = (model, opt, i)
    times = {k: [] for k in runs}
    for rep in range(6):
        for label, (model, opt, i) in runs.items():
            ts = 0.0
            for b in batches[300 + rep * 40: 340 + rep * 40]:
                loss = task.loss(model(b[0]), b); opt.zero_grad(); loss.backward()
                t = time.perf_counter(); opt.step(); ts += time.perf_counter() - t
            times[label].append(ts / 40 * 1e3)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(f"{name}: optimizer step ms (median of 6 interleaved blocks of 40): " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()), flush=True)
    rows.append(f"| {name} | {med['0.16']:.3f} | {med['spike_cut=30']:.3f} ({med['spike_cut=30'] / med['0.16']:.2f}) |")
Path(__file__).with_name("watch_cost.md").write_text(
    "| task (seed 0) | optimizer step after the switch, ms: 0.16 | spike_cut=30 |\n|---|---:|---:|\n" + "\n".join(rows) + "\n")
