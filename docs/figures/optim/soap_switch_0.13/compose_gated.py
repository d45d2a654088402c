"""The declining switch's rows from the sitting's own runs: a run of `soap_switch=True` (0.13.0, with the decline) is,
bit for bit, either the sitting's switch run (no decline: the rotations came at the same step) or its default run
(declined: no switch ever). Each --reuse rerun `gated+lrfree+soap` is matched to one of the two by its loss curve, and
that run, with the sitting's clock, becomes the row `switch`; a run matching neither is an error.

    python compose_gated.py RERUN_RESULTS_JSON OUT_RESULTS_JSON   (then: python -m outer_train.evaluate --merge OUT ...)
"""
import json, sys

rerun = json.load(open(sys.argv[1]))
declined, kept = [], 0
for e in rerun["entries"]:
    r = e["results"]
    new = r.pop("gated+lrfree+soap")
    r.pop("gated+lrfree")
    if new["curve"] == r["default+lrfree+soap"]["curve"]:
        r["switch"] = dict(r["default+lrfree+soap"])
        kept += 1
    elif new["curve"] == r["default+lrfree"]["curve"]:
        r["switch"] = dict(r["default+lrfree"])
        declined.append(e["task"])
    else:
        raise SystemExit(f"{e['task']}: the rerun matches neither the switch run nor the default run")
rerun["rules"] = [x for x in rerun["rules"] if not x.startswith("gated=")] + ["switch (soap_switch, 0.13.0: declines)"]
rerun["composed"] = {"switch_runs_kept": kept, "declined": declined}
json.dump(rerun, open(sys.argv[2], "w"))
print(f"{kept} runs as the switch's, {len(declined)} declined (the default's run): {declined}")
