"""Trace Prodigy's d and the loss of pmuon_probe.py's optimizer on one held-out task, seed 0, 1,000 steps.
python pm_trace.py TASK MUON(0|1)   (env MUON_NORM / MUON_SCALE as pmuon_probe.py)"""
import os, sys, torch
here = os.path.dirname(os.path.abspath(__file__))
src = open(os.path.join(here, "pmuon_probe.py")).read().replace("\nmain()\n", "\n")
ns = {}; exec(compile(src, "pm", "exec"), ns)
from inner_tasks import build_task
from inner_tasks.tasks.collections import held_out_suite
task_name, muon = sys.argv[1], sys.argv[2] == "1"
spec = [s for s in held_out_suite((0,), 1000) if s.name.startswith(task_name + "/")][0]
task = build_task(spec)
model = task.model
with torch.no_grad():
    for p, v in zip(model.parameters(), task.init_params(0).values()): p.copy_(v)
opt = ns["ProdigyMuon"](model, muon=muon)
print("muon tensors:", [(n, tuple(p.shape)) for n, p in model.named_parameters() if id(p) in opt.mu])
for k, batch in enumerate(task.train_batches(0)):
    if k >= 1000: break
    loss = task.loss(model(batch[0]), batch)
    opt.zero_grad(); loss.backward(); opt.step()
    if k % 50 == 0 or k < 5: print(k, f"loss {loss.item():.4g} d {opt.d:.4g}")
