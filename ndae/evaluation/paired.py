"""The one paired difference of two models' metrics, and the intervals stated for it.

Two models are compared on the same replicates — the same survival draws (expected C), the same
folds, the same cohort seeds — so their per-replicate differences cancel what the replicates
share. `paired_difference` returns every summary of those differences; a caller states the one it
means:

- `over_draws()`: the mean difference over survival draws with the percentile range of the
  per-draw differences, i.e. the range one study's difference falls in (it excludes 0 when a
  single study would tell the models apart), and the Monte-Carlo standard error of the mean;
- `stated()`: the mean difference with the 95 % t-interval of that mean (over units, e.g. cohort
  seeds, when the pairs are grouped into units; over the pairs otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ndae.evaluation.truth_metrics import TruthMetricError


def finite(values) -> np.ndarray:
    """The finite values as float (None, nan and inf dropped)."""
    out = np.asarray([v for v in np.asarray(values, dtype=object).ravel() if v is not None], float)
    return out[np.isfinite(out)]


def t_interval(values) -> tuple[float, float, float, float]:
    """mean, sd and the 95 % t-interval of the mean (sd and interval nan with fewer than 2 values)."""
    from scipy.stats import t

    values = finite(values)
    if values.size == 0:
        return (math.nan,) * 4
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(values.std(ddof=1))
    half = float(t.ppf(0.975, values.size - 1) * sd / math.sqrt(values.size))
    return mean, sd, mean - half, mean + half


@dataclass(frozen=True)
class PairedDifference:
    """Differences model − reference, one per replicate the interval is over (finite only)."""

    differences: np.ndarray
    over: str  # what the replicates are, for prose ("3 cohort seeds", "15 paired folds")
    level: float = 0.95

    @property
    def n(self) -> int:
        return int(self.differences.size)

    def over_draws(self) -> dict:
        """`difference` (mean), `lower`/`upper` (percentile range of one replicate's difference),
        `mc_se` (standard error of the mean), `draws`, `fraction_positive`."""
        delta = self.differences
        if delta.size == 0:
            return {"difference": float("nan"), "lower": float("nan"), "upper": float("nan"),
                    "mc_se": float("nan"), "draws": 0, "fraction_positive": float("nan")}
        alpha = 1 - self.level
        lower, upper = np.quantile(delta, [alpha / 2, 1 - alpha / 2])
        se = float(np.std(delta, ddof=1) / np.sqrt(delta.size)) if delta.size > 1 else float("nan")
        return {"difference": float(delta.mean()), "lower": float(lower), "upper": float(upper), "mc_se": se,
                "draws": int(delta.size), "fraction_positive": float(np.mean(delta > 0))}

    def stated(self) -> dict:
        """`d` (mean) with `low`/`high`, the 95 % t-interval of the mean, `n` and `over`."""
        if self.differences.size == 0:
            return {"d": math.nan, "low": math.nan, "high": math.nan, "n": 0, "over": self.over}
        d, _, low, high = t_interval(self.differences)
        return {"d": d, "low": low, "high": high, "n": self.n, "over": self.over}


def paired_difference(model, reference, *, unit: str | None = None, level: float = 0.95) -> PairedDifference:
    """model − reference, paired replicate by replicate.

    `model`, `reference`: either two `ExpectedC` results of one `expected_c_models` call (paired
    draw by draw), or two pandas Series whose index names the replicates (only replicates in
    both, with a finite difference, count). With `unit` (an index level, e.g. a cohort seed) the
    differences are averaged within each unit and the replicates are the units — unless there is
    only one unit, then they are that unit's pairs."""
    if hasattr(model, "per_draw"):
        if model.per_draw.shape != reference.per_draw.shape or model.seed != reference.seed:
            raise TruthMetricError("paired difference: the two models were not run on the same draws")
        delta = model.per_draw - reference.per_draw
        delta = delta[np.isfinite(delta)]
        return PairedDifference(delta, f"{delta.size} survival draws", level)
    both = model.index.intersection(reference.index)
    diffs = (model.loc[both] - reference.loc[both]).dropna()
    if diffs.empty:
        return PairedDifference(np.empty(0), "no common folds", level)
    if unit is not None:
        by_unit = diffs.groupby(level=unit).mean()
        label = unit.replace("_", " ")
        if len(by_unit) >= 2:
            return PairedDifference(finite(by_unit.to_numpy()), f"{len(by_unit)} {label}s", level)
        return PairedDifference(finite(diffs.to_numpy()), f"{len(diffs)} folds of one {label}", level)
    return PairedDifference(finite(diffs.to_numpy()), f"{len(diffs)} paired folds", level)


def select(frame: pd.DataFrame, selection: dict, keys: list[str], metric: str) -> pd.Series:
    """`metric` of the rows of `frame` matching `selection` ({column: value}), indexed by `keys`."""
    mask = np.ones(len(frame), bool)
    for column, value in selection.items():
        mask &= (frame[column] == value).to_numpy()
    return frame.loc[mask].set_index(keys)[metric]
