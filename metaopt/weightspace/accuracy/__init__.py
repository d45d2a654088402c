"""Predict a network's test accuracy from its weights (GMN paper, Table 2): splits, preprocessing, predictors.

The experiment driver (grid of zoos x splits x methods x seeds, tables, plots, diagnosis) is
`experiments.accuracy` (`python -m experiments.accuracy`, console script `metaopt-accuracy`).
"""

from .predict import METHODS, SCHEDULES, SELECT_ON, PredictorConfig, build_predictor, fit_and_score, scores
from .preprocess import TargetScaler, WeightNormalizer
from .splits import SPLITS, make_split, ood_test_mask

__all__ = [
    "METHODS", "SCHEDULES", "SELECT_ON", "SPLITS", "PredictorConfig", "TargetScaler", "WeightNormalizer", "build_predictor", "fit_and_score",
    "make_split", "ood_test_mask", "scores",
]
