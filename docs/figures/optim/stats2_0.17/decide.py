"""The decision rule of README.md, read off a merged evaluation summary: `python -m outer_train.eval_decide` with this
rule's conditions (the clock median no lower than the baseline's, the steps median no more than 0.05 below, no fewer
tasks >= 1x by the clock, no more never-reached runs, no divergence). `decision.txt` was written by this script's first
version, which computed the same figures itself.

    python docs/figures/optim/stats2_0.17/decide.py SUMMARY.json BASELINE_ROW CANDIDATE_ROW [--json OUT]
"""
import sys

from outer_train.eval_decide import main

if __name__ == "__main__":
    summary, base, cand, *rest = sys.argv[1:]
    main([summary, base, cand, "--clock-margin", "0", "--steps-margin", "0.05", *rest])
