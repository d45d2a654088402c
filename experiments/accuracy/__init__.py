"""Accuracy prediction experiment: run the grid of zoos x splits x methods x seeds, write tables and plots.

`python -m experiments.accuracy --zoo DIR --split 50|5|ood --method gmn|deepsets|dmc|statnn|all`
(console script `metaopt-accuracy`); `python -m experiments.accuracy.diagnose --zoo DIR` measures how
predictable a zoo is without a metanetwork. The predictors themselves are `metaopt.weightspace.accuracy`.
"""

from .report import markdown_table, summarize
from .run import open_zoo, run_grid, write_results

__all__ = ["markdown_table", "open_zoo", "run_grid", "summarize", "write_results"]
