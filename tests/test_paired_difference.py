"""ndae.evaluation.paired: the one paired difference, stated over draws or as a t-interval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t

from ndae.evaluation.paired import paired_difference
from ndae.evaluation.truth_metrics import ExpectedC, TruthMetricError


def test_over_draws_is_the_percentile_range_of_the_per_draw_differences():
    a = ExpectedC(np.array([0.70, 0.72, 0.68, np.nan, 0.75]), seed=1)
    b = ExpectedC(np.array([0.60, 0.61, 0.66, 0.60, 0.62]), seed=1)
    delta = np.array([0.10, 0.11, 0.02, 0.13])
    out = paired_difference(a, b).over_draws()
    assert out["difference"] == pytest.approx(delta.mean()) and out["draws"] == 4
    assert (out["lower"], out["upper"]) == pytest.approx(tuple(np.quantile(delta, [0.025, 0.975])))
    assert out["mc_se"] == pytest.approx(delta.std(ddof=1) / 2) and out["fraction_positive"] == 1.0
    with pytest.raises(TruthMetricError, match="same draws"):
        paired_difference(a, ExpectedC(b.per_draw, seed=2))


def test_stated_is_the_t_interval_over_units_or_over_the_pairs_of_one_unit():
    index = pd.MultiIndex.from_product([[0, 1, 2], [0, 1]], names=["cohort_seed", "fold"])
    model = pd.Series([0.7, 0.8, 0.6, 0.7, 0.9, 0.7], index=index)
    reference = pd.Series([0.6, 0.6, 0.6, 0.6, 0.6, np.nan], index=index)
    out = paired_difference(model, reference, unit="cohort_seed").stated()
    per_seed = np.array([0.15, 0.05, 0.3])  # the fold with no reference value drops out of its seed
    half = t.ppf(0.975, 2) * per_seed.std(ddof=1) / np.sqrt(3)
    assert out["d"] == pytest.approx(per_seed.mean()) and out["n"] == 3 and out["over"] == "3 cohort seeds"
    assert (out["low"], out["high"]) == pytest.approx((per_seed.mean() - half, per_seed.mean() + half))
    one = paired_difference(model.loc[[0]], reference.loc[[0]], unit="cohort_seed").stated()
    assert one["over"] == "2 folds of one cohort seed" and one["n"] == 2
    empty = paired_difference(model.loc[[0]], reference.loc[[1]]).stated()
    assert empty["n"] == 0 and np.isnan(empty["d"]) and empty["over"] == "no common folds"
