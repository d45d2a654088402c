"""Probe: GMNOptimizer(model) (Adam's direction, Prodigy's d) until its estimate has stood still for W steps (checked
every 10 from step W on), then SOAP (outer_train.soap) at lr = C * d, d frozen. vs tuned Adam and the default.
Usage: switch.py OUT STEPS ADAM_SUMMARY SEEDS... -- TASKS...   env C (0.5), W (100), BETAS (SOAP's, "0.95,0.95")"""
import json, os, sys, torch
torch.set_num_threads(1)
from inner_tasks import build_task
from inner_tasks.tasks.collections import held_out_suite
from outer_train.evaluate import run_optimizer
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from probe_common import score
from outer_train.soap import SOAP
from metaopt.optim import GMNOptimizer
C = float(os.environ.get("C", "0.5")); W = int(os.environ.get("W", "100"))
BETAS = tuple(float(b) for b in os.environ.get("BETAS", "0.95,0.95").split(","))

class Switch(torch.optim.Optimizer):
    def __init__(self, model):
        self.model = model; self.first = GMNOptimizer(model); self.second = None; self.t = 0; self.hist = {}
        self.switched_at = None; self.d = None
        super().__init__(model.parameters(), {})
    def zero_grad(self, set_to_none=True):
        (self.second or self.first).zero_grad(set_to_none)
    @torch.no_grad()
    def step(self, closure=None):
        self.t += 1
        if self.second is not None:
            return self.second.step()
        self.first.step()
        d = self.first.distance; self.hist[self.t] = d
        if self.t >= W and self.t % 10 == 0 and self.hist.get(self.t - W) == d:
            self.second = SOAP(self.model.parameters(), lr=C * d, betas=BETAS); self.switched_at = self.t; self.d = d

def main():
    out, steps, summ = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    i = sys.argv.index("--"); seeds = [int(s) for s in sys.argv[4:i]]; tasks = sys.argv[i + 1:]
    lrs = {r["task"].split("/")[0]: r["results"]["adam"]["lr"] for r in json.load(open(summ))["runs"]}
    res = json.load(open(out)) if os.path.exists(out) else {}
    for spec in held_out_suite(tuple(seeds), steps):
        t = spec.name.split("/")[0]
        if t not in tasks or spec.name in res: continue
        task = build_task(spec); info = {}
        def sw(m): o = Switch(m); info["o"] = o; return o
        makers = {"adam": lambda m: torch.optim.Adam(m.parameters(), lr=lrs[t]), "default": lambda m: GMNOptimizer(m), "switch": sw}
        row = {n: run_optimizer(task, mk, steps, spec.seed) for n, mk in makers.items()}
        res[spec.name] = {name: score(r, row["adam"]) for name, r in row.items()}
        res[spec.name]["switch"].update(switched_at=info["o"].switched_at, d=info["o"].d)
        print(spec.name, {n: (f"{v['final_loss']:.3g}", f"{v['speedup']:.2f}x", f"{v['wall_speedup']:.2f}x") for n, v in res[spec.name].items()}, "switch at", info["o"].switched_at, "d", info["o"].d, flush=True)
        json.dump(res, open(out, "w"), indent=1)
if __name__ == "__main__":
    main()
