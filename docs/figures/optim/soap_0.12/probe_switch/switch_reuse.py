"""Probe: the switch (switch.py) only, against the tuned-Adam and default rows of an evaluate results.json (same
tasks, seeds, steps). Usage: switch_reuse.py OUT RESULTS_JSON... -- TASKS...   env C, W (as switch.py)"""
import json, os, sys, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(1)
from inner_tasks import build_task
from inner_tasks.tasks.collections import held_out_suite
from outer_train.evaluate import run_optimizer
from switch import Switch
from probe_common import score

def main():
    out = sys.argv[1]; i = sys.argv.index("--"); tasks = sys.argv[i + 1:]
    entries = {e["task"]: e for f in sys.argv[2:i] for e in json.load(open(f))["entries"]}
    steps = len(next(iter(entries.values()))["results"]["adam"]["curve"])
    seeds = sorted({int(k.split("/s")[1]) for k in entries})
    res = json.load(open(out)) if os.path.exists(out) else {}
    for spec in held_out_suite(tuple(seeds), steps):
        t = spec.name.split("/")[0]
        if t not in tasks or spec.name in res: continue
        task = build_task(spec); info = {}
        def sw(m): o = Switch(m); info["o"] = o; return o
        r = run_optimizer(task, sw, steps, spec.seed)
        adam = entries[spec.name]["results"]["adam"]; d = entries[spec.name]["results"]["default+lrfree"]
        res[spec.name] = {"adam": {"final_loss": adam["final_loss"], "speedup": 1.0},
                          "default": {"final_loss": d["final_loss"], "speedup": d["speedup"]},
                          "switch": {**score(r, adam), "loop_vs_adam": r["ms_per_step"] / adam["ms_per_step"],
                                     "switched_at": info["o"].switched_at, "d": info["o"].d}}
        print(spec.name, {n: (f"{v['final_loss']:.3g}", f"{v['speedup']:.2f}x") for n, v in res[spec.name].items()},
              "switch at", info["o"].switched_at, flush=True)
        json.dump(res, open(out, "w"), indent=1)

if __name__ == "__main__":
    main()
