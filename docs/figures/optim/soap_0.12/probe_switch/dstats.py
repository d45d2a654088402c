"""The default's estimate d (GMNOptimizer(model)) at steps 100/200/500/1000 per task, seeds 0-2, beside tuned SOAP's lr."""
import copy, json, sys, torch
torch.set_num_threads(1)
from inner_tasks import build_task
from inner_tasks.tasks.collections import held_out_suite
from metaopt.optim import GMNOptimizer
soap_lr = {r["task"].split("/")[0]: r["results"]["soap"]["lr"] for r in json.load(open(sys.argv[1]))["runs"]}
adam_lr = {r["task"].split("/")[0]: r["results"]["adam"]["lr"] for r in json.load(open(sys.argv[1]))["runs"]}
out = {}
for spec in held_out_suite((0, 1, 2), 1000):
    task = build_task(spec); model = copy.deepcopy(task.model)
    with torch.no_grad():
        for p, v in zip(model.parameters(), task.init_params(spec.seed).values()): p.copy_(v)
    opt = GMNOptimizer(model); ds = {}
    for i, b in enumerate(task.train_batches(spec.seed)):
        if i == 1000: break
        loss = task.loss(model(b[0]), b); opt.zero_grad(); loss.backward(); opt.step()
        if i + 1 in (50, 100, 200, 500, 1000): ds[i + 1] = opt.distance
    t = spec.name.split("/")[0]
    out[spec.name] = {"d": ds, "soap_lr": soap_lr[t], "adam_lr": adam_lr[t]}
    print(spec.name, {k: f"{v:.3g}" for k, v in ds.items()}, "soap lr", f"{soap_lr[t]:.3g}", "ratio@200", f"{soap_lr[t] / ds[200]:.2f}", "adam/d", f"{adam_lr[t] / ds[200]:.2f}", flush=True)
json.dump(out, open(sys.argv[2], "w"), indent=1)
