"""Probe 2: SOAP variants without tuning. soap3: exact SOAP at lr 3e-3; csoap3: cheaper SOAP (momentum kept in the
eigenbasis, rotated at refresh; statistics every step) at 3e-3; psoap: csoap's direction, Prodigy's d (lr-free).
Usage: soap2.py OUT STEPS SEEDS... -- TASKS...   env VARIANTS=soap3,csoap3,psoap"""
import json, math, os, sys
import torch
torch.set_num_threads(1)
torch.set_flush_denormal(True)
sys.path.insert(0, os.path.dirname(__file__))
from inner_tasks import build_task
from inner_tasks.tasks.collections import held_out_suite
from outer_train.evaluate import run_optimizer
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from probe_common import score
from metaopt.optim import GMNOptimizer
from pathlib import Path
LRS = json.load(open(Path(__file__).resolve().parents[2] / "muon_0.12/probe_prodigy_muon/adam_lrs.json"))["lr"]  # tuned Adam's lrs (1,000 steps, seed 0)
F = int(os.environ.get("F", "10")); SB = float(os.environ.get("SB", "0.95"))

class Basis:
    """Eigenbases of one matrix's gradient statistics (Shampoo's L = sum G G^T, R = sum G^T G)."""
    def __init__(self, G):
        self.L = G @ G.T; self.R = G.T @ G
        self.QL = torch.linalg.eigh(self.L)[1].flip(1); self.QR = torch.linalg.eigh(self.R)[1].flip(1)
    def rot(self, X): return self.QL.T @ X @ self.QR
    def unrot(self, X): return self.QL @ X @ self.QR.T
    def accumulate(self, G):
        self.L.mul_(SB).add_(G @ G.T, alpha=1 - SB); self.R.mul_(SB).add_(G.T @ G, alpha=1 - SB)
    def refresh(self, m, v):
        """One power iteration + QR per side (SOAP's); v permuted to the new order, m rotated into the new basis."""
        full = self.unrot(m)
        oL = torch.diag(self.QL.T @ self.L @ self.QL).argsort(descending=True)
        oR = torch.diag(self.QR.T @ self.R @ self.QR).argsort(descending=True)
        v = v[oL][:, oR]
        self.QL = torch.linalg.qr(self.L @ self.QL[:, oL])[0]; self.QR = torch.linalg.qr(self.R @ self.QR[:, oR])[0]
        return self.rot(full), v.contiguous()

class CheapSOAP(torch.optim.Optimizer):
    """Adam in Shampoo's eigenbasis; moments kept in the basis. lr_free: Prodigy's d (numerator/denominator in the
    original coordinates, moments in units of d)."""
    def __init__(self, params, lr, betas=(0.95, 0.95), eps=1e-8, lr_free=False, d0=1e-6, beta3=math.sqrt(0.999), growth=math.inf, step_scale=1.0):
        super().__init__(params, dict(lr=lr))
        self.b1, self.b2, self.eps, self.lr_free, self.d0, self.b3 = *betas, eps, lr_free, d0, beta3
        self.d = d0 if lr_free else 1.0; self.num = 0.0; self.t = 0; self.growth = growth; self.step_scale = step_scale
    @torch.no_grad()
    def step(self):
        self.t += 1; t = self.t; b1, b2 = self.b1, self.b2
        lr = self.param_groups[0]["lr"]; d = self.d
        bc = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        ps = [p for p in self.param_groups[0]["params"] if p.grad is not None]
        if self.lr_free:
            w = d * d / self.d0 * lr * bc; num = self.num * self.b3; den = 0.0
        for p in ps:
            st = self.state[p]; g = p.grad
            G = g.reshape(p.shape[0], -1) if p.ndim >= 2 else g
            if not st:
                st["m"] = torch.zeros_like(G); st["v"] = torch.zeros_like(G)
                if p.ndim >= 2: st["B"] = Basis(G)
                if self.lr_free: st["x0"] = p.detach().clone(); st["s"] = torch.zeros_like(p)
            if self.lr_free:
                num += w * torch.dot(g.flatten(), (st["x0"] - p).flatten()).item()
                st["s"].mul_(self.b3).add_(g, alpha=w); den += st["s"].abs().sum().item()
            B = st.get("B")
            Gr = B.rot(G) if B is not None else G
            st["m"].mul_(b1).add_(Gr, alpha=d * (1 - b1))
            st["v"].mul_(b2).addcmul_(Gr, Gr, value=d * d * (1 - b2))
        if self.lr_free:
            self.num = num
            if den > 0: self.d = max(d, min(num / den, d * self.growth))
        for p in ps:
            st = self.state[p]; B = st.get("B")
            N = st["m"] / (st["v"].sqrt() + d * self.eps)
            if B is not None: N = B.unrot(N)
            p.add_(N.reshape(p.shape), alpha=-lr * bc * d * self.step_scale)
            if B is not None:
                B.accumulate(p.grad.reshape(p.shape[0], -1))
                if t % F == 0: st["m"], st["v"] = B.refresh(st["m"], st["v"])

def main():
    from soap import SOAP
    out, steps = sys.argv[1], int(sys.argv[2])
    i = sys.argv.index("--")
    seeds = [int(s) for s in sys.argv[3:i]]; tasks = sys.argv[i + 1:]
    variants = os.environ.get("VARIANTS", "soap3,csoap3,psoap").split(",")
    res = json.load(open(out)) if os.path.exists(out) else {}
    for spec in held_out_suite(tuple(seeds), steps):
        t = spec.name.split("/")[0]
        if t not in tasks or spec.name in res: continue
        task = build_task(spec); info = {}
        def keep(name, o): info[name] = o; return o
        makers = {"adam": lambda m: torch.optim.Adam(m.parameters(), lr=LRS[f"{t}/adam"]),
                  "default": lambda m: GMNOptimizer(m),
                  "soap3": lambda m: SOAP(m.parameters(), 3e-3),
                  "csoap3": lambda m: CheapSOAP(m.parameters(), 3e-3),
                  "psoap": lambda m: keep("psoap", CheapSOAP(m.parameters(), 1.0, lr_free=True)),
                  "psoap.3": lambda m: keep("psoap.3", CheapSOAP(m.parameters(), 0.3, lr_free=True)),
                  "psoap.1": lambda m: keep("psoap.1", CheapSOAP(m.parameters(), 0.1, lr_free=True)),
                  "psoap.05": lambda m: keep("psoap.05", CheapSOAP(m.parameters(), 0.05, lr_free=True))}
        row = {n: run_optimizer(task, makers[n], steps, spec.seed) for n in ["adam", "default", *variants]}
        res[spec.name] = {name: score(r, row["adam"]) for name, r in row.items()}
        for name in res[spec.name]:
            res[spec.name][name]["d"] = getattr(info.get(name), "d", None)
        print(spec.name, {n: (f"{v['final_loss']:.3g}", f"{v['speedup']:.2f}x", f"{v['wall_speedup']:.2f}x", f"{v['ms_per_step']:.2f}ms", v["d"] and f"d={v['d']:.3g}") for n, v in res[spec.name].items()}, flush=True)
        json.dump(res, open(out, "w"), indent=1)
if __name__ == "__main__":
    main()
