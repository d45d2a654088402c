"""Predict a network's test accuracy from its weights (GMN paper, Table 2) on stored zoos.

`python -m metaopt.weightspace.accuracy --zoo DIR --split 50|5|ood --method gmn|deepsets|dmc|statnn|all`.
"""

from .predict import METHODS, PredictorConfig, build_predictor, fit_and_score, scores
from .preprocess import TargetScaler, WeightNormalizer
from .report import markdown_table, summarize
from .run import open_zoo, run_grid, write_results
from .splits import SPLITS, make_split, ood_test_mask

__all__ = [
    "METHODS", "SPLITS", "PredictorConfig", "TargetScaler", "WeightNormalizer", "build_predictor", "fit_and_score",
    "make_split", "markdown_table", "ood_test_mask", "open_zoo", "run_grid", "scores", "summarize", "write_results",
]
