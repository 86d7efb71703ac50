"""`ndae evaluate`: the whole centralised pipeline on any manifest — DAE on the controls →
normative model → deviation scores → cross-validated Cox for the NDAE scores and the five
baselines on the same folds → report.md, PNGs, evaluation.json."""

from ndae.evaluation.comparison import model_feature_sets
from ndae.evaluation.pipeline import EvaluationOptions, evaluate

__all__ = ["EvaluationOptions", "evaluate", "model_feature_sets"]
