"""Probe: tuned hybrid Muon (orthogonalised momentum on hidden matrices, Adam elsewhere) vs tuned Adam,
held-out tasks, steps to tuned Adam's final loss. Usage: muon_probe.py OUT STEPS SEEDS... -- TASKS..."""
import json, math, sys, time
import torch
torch.set_num_threads(1)
from inner_tasks import build_task
from inner_tasks.tasks.collections import held_out_suite
from outer_train.evaluate import tune, run_optimizer, steps_to, EvalSettings

# Newton-Schulz as outer_train.muon.orthogonalise (the same float32 iteration the probe ran inline)
from outer_train.muon import orthogonalise as ns5

class HybridMuon(torch.optim.Optimizer):
    """Muon (nesterov momentum 0.95, NS5, update RMS matched to Adam's: 0.2 sqrt(max(A, B))) on
    hidden matrices (conv filters flattened to out x rest); Adam on the rest (embeddings, head, vectors)."""
    def __init__(self, model, lr, momentum=0.95):
        mods = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        head = mods[-1].weight if mods else None
        emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        mu, ad = [], []
        for p in model.parameters():
            (mu if p.ndim >= 2 and p is not head and id(p) not in emb else ad).append(p)
        super().__init__([{"params": mu, "muon": True}, {"params": ad, "muon": False}], dict(lr=lr, momentum=momentum))
        self.adam = torch.optim.Adam(ad, lr=lr) if ad else None
    @torch.no_grad()
    def step(self):
        g = self.param_groups[0]
        for p in g["params"]:
            if p.grad is None: continue
            st = self.state[p]
            buf = st.setdefault("m", torch.zeros_like(p))
            buf.mul_(g["momentum"]).add_(p.grad)
            u = p.grad.add(buf, alpha=g["momentum"]).reshape(p.shape[0], -1)
            o = ns5(u)
            p.add_(o.reshape(p.shape), alpha=-g["lr"] * 0.2 * math.sqrt(max(o.shape)))
        if self.adam: self.adam.step()

def main():
    out, steps = sys.argv[1], int(sys.argv[2])
    i = sys.argv.index("--")
    seeds = [int(s) for s in sys.argv[3:i]]; tasks = sys.argv[i + 1:]
    grid = EvalSettings([], [], steps).grid(1e-4, 1e-1)
    makers = {"adam": lambda lr: lambda m: torch.optim.Adam(m.parameters(), lr=lr),
              "muon": lambda lr: lambda m: HybridMuon(m, lr)}
    res = {}
    for spec in held_out_suite(tuple(seeds), steps):
        t = spec.name.split("/")[0]
        if t not in tasks: continue
        task = build_task(spec)
        first = spec.seed == seeds[0]
        row = {}
        for name, mk in makers.items():
            if first:
                r = tune(task, mk, grid, steps, spec.seed); res.setdefault("lr", {})[f"{t}/{name}"] = r["lr"]
            else:
                lr = res["lr"][f"{t}/{name}"]; r = {**run_optimizer(task, mk(lr), steps, spec.seed), "lr": lr}
            row[name] = r
        tgt = row["adam"]["final_loss"]; a = steps_to(row["adam"]["curve"], tgt)
        for name, r in row.items():
            s = steps_to(r["curve"], tgt); r["steps_to_adam"] = s
            r["speedup"] = a / s if (a and s) else 0.0
            r["wall_speedup"] = (row["adam"]["times"][a - 1] / r["times"][s - 1]) if (a and s) else 0.0
        res[spec.name] = {n: {k: r[k] for k in ("final_loss", "lr", "steps_to_adam", "speedup", "wall_speedup", "ms_per_step", "diverged")}
                          | ({"grid": r["grid"]} if r.get("grid") else {}) for n, r in row.items()}
        print(spec.name, {n: (f"{v['final_loss']:.3g}", v["lr"], f"{v['speedup']:.2f}x", f"{v['wall_speedup']:.2f}x", f"{v['ms_per_step']:.2f}ms") for n, v in res[spec.name].items()}, flush=True)
        json.dump(res, open(out, "w"), indent=1)
main()
