"""Normative model of the controls' z_sem: design, summable sufficient statistics, the fitted
model (`NormativeModel`: fit / from_stats / predict / z_scores / transfer / save / load; its EM
fit in `random_intercept`, new sites in `transfer`, files in `model_files`) and calibration
metrics."""

from ndae.normative.design import DesignSpec
from ndae.normative.model import NormativeModel, OutOfRangeWarning
from ndae.normative.sufficient_stats import SufficientStats

__all__ = ["DesignSpec", "NormativeModel", "OutOfRangeWarning", "SufficientStats"]
