"""Probe: Prodigy's lr-free estimate with Muon's direction on hidden matrices (first layer, head,
embeddings and vectors keep Adam's), vs tuned Adam (lr from muon_1k_*.json) and GMNOptimizer(model).
Usage: pmuon_probe.py OUT STEPS LRJSON SEEDS... -- TASKS...   env VARIANTS=adam,default,prodigy,pmuon"""
import json, math, os, sys
import torch
torch.set_num_threads(1)
NORM = os.environ.get("MUON_NORM", "rms")
MS = float(os.environ.get("MUON_SCALE", "1"))
from inner_tasks import build_task
from inner_tasks.tasks.collections import held_out_suite
from outer_train.evaluate import run_optimizer, steps_to
from metaopt.optim import GMNOptimizer

# Newton-Schulz as outer_train.muon.orthogonalise (the same float32 iteration the probe ran inline)
from outer_train.muon import hidden_matrices, orthogonalise as ns5  # the baseline's choice of matrices

class ProdigyMuon(torch.optim.Optimizer):
    def __init__(self, model, lr=1.0, muon=True, betas=(0.9, 0.999), eps=1e-8, d0=1e-6, momentum=0.95, ns_steps=5):
        self.mu = {id(p) for p in hidden_matrices(model)} if muon else set()
        super().__init__(model.parameters(), dict(lr=lr))
        self.b1, self.b2, self.eps, self.d0, self.momentum, self.ns = *betas, eps, d0, momentum, ns_steps
        self.d, self.num, self.k = d0, 0.0, 0
    @torch.no_grad()
    def step(self):
        b1, b2, b3 = self.b1, self.b2, math.sqrt(self.b2)
        self.k += 1
        lr = self.param_groups[0]["lr"]
        bc = math.sqrt(1 - b2 ** self.k) / (1 - b1 ** self.k)
        d = self.d; dlr = d * lr * bc
        ps = [p for p in self.param_groups[0]["params"] if p.grad is not None]
        num, den = self.num * b3, 0.0
        for p in ps:
            st = self.state[p]
            if not st:
                st["p0"] = p.detach().clone(); st["s"] = torch.zeros_like(p)
                st["m"] = torch.zeros_like(p); st["v"] = torch.zeros_like(p)
            g = p.grad
            num += (d / self.d0) * dlr * torch.dot(g.flatten(), (st["p0"] - p).flatten()).item()
            st["m"].mul_(b1).add_(g, alpha=d * (1 - b1))
            st["v"].mul_(b2).addcmul_(g, g, value=d * d * (1 - b2))
            st["s"].mul_(b3).add_(g, alpha=(d / self.d0) * dlr)
            den += st["s"].abs().sum().item()
        self.num = num
        if den > 0:
            self.d = max(d, num / den)
        for p in ps:
            st = self.state[p]
            if id(p) in self.mu:
                buf = st.setdefault("B", torch.zeros_like(p))
                buf.mul_(self.momentum).add_(p.grad)
                u = p.grad.add(buf, alpha=self.momentum).reshape(p.shape[0], -1)
                o = ns5(u, self.ns)
                if NORM == "adam":  # Muon's orientation, Adam's size (this matrix's Adam step norm)
                    ua = st["m"] / (st["v"].sqrt() + d * self.eps)
                    p.add_(o.reshape(p.shape), alpha=-dlr * MS * (ua.norm() / o.norm()).item())
                else:
                    p.add_(o.reshape(p.shape), alpha=-d * lr * MS * 0.2 * math.sqrt(max(o.shape)))
            else:
                p.addcdiv_(st["m"], st["v"].sqrt().add_(d * self.eps), value=-dlr)

def main():
    out, steps, lrs = sys.argv[1], int(sys.argv[2]), json.load(open(sys.argv[3]))["lr"]
    i = sys.argv.index("--")
    seeds = [int(s) for s in sys.argv[4:i]]; tasks = sys.argv[i + 1:]
    variants = os.environ.get("VARIANTS", "adam,default,prodigy,pmuon").split(",")
    res = json.load(open(out)) if os.path.exists(out) else {}
    for spec in held_out_suite(tuple(seeds), steps):
        t = spec.name.split("/")[0]
        if t not in tasks: continue
        task = build_task(spec)
        makers = {"adam": lambda m: torch.optim.Adam(m.parameters(), lr=lrs[f"{t}/adam"]),
                  "default": lambda m: GMNOptimizer(m),
                  "prodigy": lambda m: ProdigyMuon(m, muon=False),
                  "pmuon": lambda m: ProdigyMuon(m),
                  "pmuon3": lambda m: ProdigyMuon(m, ns_steps=3)}
        row = {n: run_optimizer(task, makers[n], steps, spec.seed) for n in variants}
        tgt = row["adam"]["final_loss"]; a = steps_to(row["adam"]["curve"], tgt)
        res[spec.name] = {}
        for name, r in row.items():
            s = steps_to(r["curve"], tgt)
            res[spec.name][name] = {"final_loss": r["final_loss"], "steps_to_adam": s, "speedup": a / s if (a and s) else 0.0,
                                    "wall_speedup": (row["adam"]["times"][a - 1] / r["times"][s - 1]) if (a and s) else 0.0,
                                    "ms_per_step": r["ms_per_step"], "diverged": r["diverged"]}
        print(spec.name, {n: (f"{v['final_loss']:.3g}", f"{v['speedup']:.2f}x", f"{v['wall_speedup']:.2f}x", f"{v['ms_per_step']:.2f}ms") for n, v in res[spec.name].items()}, flush=True)
        json.dump(res, open(out, "w"), indent=1)
main()
