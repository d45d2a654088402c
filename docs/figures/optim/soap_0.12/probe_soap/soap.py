"""Probe: SOAP (Vyas et al. 2024: Adam in Shampoo's eigenbasis), tuned on Adam's grid, vs tuned Adam at 1k.
Matrices (convs flattened out x rest) get SOAP; vectors get Adam. Eigenbases refreshed every F steps by one
QR power iteration (SOAP's), first by eigh.  Usage: soap.py OUT STEPS SEEDS... -- TASKS...  env F, B1, B2"""
import json, math, os, sys, time
import torch
torch.set_num_threads(1)
from inner_tasks import build_task
from inner_tasks.tasks.collections import held_out_suite
from outer_train.evaluate import run_optimizer
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from probe_common import score
from metaopt.optim import GMNOptimizer
from pathlib import Path
LRS = json.load(open(Path(__file__).resolve().parents[2] / "muon_0.12/probe_prodigy_muon/adam_lrs.json"))["lr"]  # tuned Adam's lrs (1,000 steps, seed 0)
F = int(os.environ.get("F", "10")); B1 = float(os.environ.get("B1", "0.95")); B2 = float(os.environ.get("B2", "0.95"))
MAXD = int(os.environ.get("MAXD", "4096"))

class SOAP(torch.optim.Optimizer):
    def __init__(self, params, lr, betas=(B1, B2), shampoo_beta=0.95, eps=1e-8, every=F):
        super().__init__(params, dict(lr=lr, betas=betas, sb=shampoo_beta, eps=eps, every=every))
    @torch.no_grad()
    def step(self):
        for g_ in self.param_groups:
            b1, b2 = g_["betas"]; lr, eps, sb, every = g_["lr"], g_["eps"], g_["sb"], g_["every"]
            for p in g_["params"]:
                if p.grad is None: continue
                st = self.state[p]
                G = p.grad.reshape(p.shape[0], -1) if p.ndim >= 2 else p.grad
                if not st:
                    st["t"] = 0; st["m"] = torch.zeros_like(G); st["v"] = torch.zeros_like(G)
                    if p.ndim >= 2:
                        st["L"] = G @ G.T if G.shape[0] <= MAXD else None
                        st["R"] = G.T @ G if G.shape[1] <= MAXD else None
                        st["QL"] = None if st["L"] is None else torch.linalg.eigh(st["L"] + 1e-30 * torch.eye(G.shape[0]))[1].flip(1)
                        st["QR"] = None if st["R"] is None else torch.linalg.eigh(st["R"] + 1e-30 * torch.eye(G.shape[1]))[1].flip(1)
                st["t"] += 1; t = st["t"]
                mat = p.ndim >= 2
                rot = (lambda X: X) if not mat else (lambda X: (X if st["QL"] is None else st["QL"].T @ X) if st["QR"] is None else (X if st["QL"] is None else st["QL"].T @ X) @ st["QR"])
                unrot = (lambda X: X) if not mat else (lambda X: (X if st["QL"] is None else st["QL"] @ X) if st["QR"] is None else (X if st["QL"] is None else st["QL"] @ X) @ st["QR"].T)
                st["m"].mul_(b1).add_(G, alpha=1 - b1)
                Gr = rot(G)
                st["v"].mul_(b2).addcmul_(Gr, Gr, value=1 - b2)
                step = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                N = unrot(rot(st["m"]) / (st["v"].sqrt() + eps))
                p.add_(N.reshape(p.shape), alpha=-step)
                if mat:
                    if st["L"] is not None: st["L"].mul_(sb).add_(G @ G.T, alpha=1 - sb)
                    if st["R"] is not None: st["R"].mul_(sb).add_(G.T @ G, alpha=1 - sb)
                    if t % every == 0:
                        # one power iteration + QR, order by estimated eigenvalue, permute v to match (SOAP)
                        v = st["v"]
                        if st["QL"] is not None:
                            est = torch.diag(st["QL"].T @ st["L"] @ st["QL"]); order = est.argsort(descending=True)
                            Q = st["QL"][:, order]; v = v[order, :]
                            st["QL"] = torch.linalg.qr(st["L"] @ Q)[0]
                        if st["QR"] is not None:
                            est = torch.diag(st["QR"].T @ st["R"] @ st["QR"]); order = est.argsort(descending=True)
                            Q = st["QR"][:, order]; v = v[:, order]
                            st["QR"] = torch.linalg.qr(st["R"] @ Q)[0]
                        st["v"] = v.contiguous()

GRID = [1e-4, 3.162e-4, 1e-3, 3.162e-3, 1e-2, 3.162e-2, 1e-1]

def main():
    out, steps = sys.argv[1], int(sys.argv[2])
    i = sys.argv.index("--")
    seeds = [int(s) for s in sys.argv[3:i]]; tasks = sys.argv[i + 1:]
    res = json.load(open(out)) if os.path.exists(out) else {}
    lr_soap = res.get("_lr", {})
    for spec in held_out_suite(tuple(seeds), steps):
        t = spec.name.split("/")[0]
        if t not in tasks or spec.name in res: continue
        task = build_task(spec)
        if t not in lr_soap:  # tune on this task's first seed
            runs = {lr: run_optimizer(task, lambda m, lr=lr: SOAP(m.parameters(), lr), steps, spec.seed) for lr in GRID}
            lr_soap[t] = min(GRID, key=lambda lr: (runs[lr]["final_loss"], lr))
            print(t, "soap grid", {f"{k:.3g}": f"{v['final_loss']:.3g}" for k, v in runs.items()}, flush=True)
            res["_lr"] = lr_soap
        makers = {"adam": lambda m: torch.optim.Adam(m.parameters(), lr=LRS[f"{t}/adam"]),
                  "default": lambda m: GMNOptimizer(m),
                  "soap": lambda m: SOAP(m.parameters(), lr_soap[t])}
        row = {n: run_optimizer(task, mk, steps, spec.seed) for n, mk in makers.items()}
        res[spec.name] = {name: score(r, row["adam"]) for name, r in row.items()}
        print(spec.name, {n: (f"{v['final_loss']:.3g}", f"{v['speedup']:.2f}x", f"{v['wall_speedup']:.2f}x", f"{v['ms_per_step']:.2f}ms") for n, v in res[spec.name].items()}, flush=True)
        json.dump(res, open(out, "w"), indent=1)
if __name__ == "__main__":
    main()
