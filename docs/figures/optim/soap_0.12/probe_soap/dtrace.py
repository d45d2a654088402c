import sys, os, torch, json
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(1); torch.set_flush_denormal(True)
from soap2 import CheapSOAP
from inner_tasks import build_task
from inner_tasks.tasks.collections import held_out_suite
from metaopt.optim import GMNOptimizer
task_name, mult = sys.argv[1], float(sys.argv[2])
spec = [s for s in held_out_suite((0,), 1000) if s.name.startswith(task_name + "/")][0]
task = build_task(spec)
import copy
for kind in ["psoap", "default"]:
    model = copy.deepcopy(task.model)
    with torch.no_grad():
        for p, v in zip(model.parameters(), task.init_params(0).values()): p.copy_(v)
    opt = CheapSOAP(model.parameters(), mult, lr_free=True, growth=float(os.environ.get("G", "inf"))) if kind == "psoap" else GMNOptimizer(model)
    row = []
    for i, b in enumerate(task.train_batches(0)):
        if i == 1000: break
        loss = task.loss(model(b[0]), b); opt.zero_grad(); loss.backward(); opt.step()
        if i % 50 == 0 or i < 30 and i % 5 == 0: row.append((i, round(float(loss), 5), float(opt.d if kind == "psoap" else opt.distance)))
    print(kind, " ".join(f"{i}:{l:.3g}/{d:.3g}" for i, l, d in row))
