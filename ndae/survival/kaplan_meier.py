"""Kaplan–Meier curves by tertile of a score, with a log-rank test across the three groups."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ndae.errors import NdaeError
from ndae.survival._validation import validate_survival_frame

TERTILES = ("low", "middle", "high")


@dataclass
class KaplanMeierResult:
    score: str
    p_value: float  # multivariate log-rank test across the tertiles
    test_statistic: float
    median_survival: dict[str, float]  # months; inf where the curve never drops below 0.5
    group_sizes: dict[str, int]
    events: dict[str, int]
    cut_points: list[float]  # score values separating low | middle | high
    groups: pd.Series  # tertile label per row of the input

    def to_json(self) -> dict:
        return {
            "score": self.score,
            "p_value": self.p_value,
            "test_statistic": self.test_statistic,
            # JSON has no infinity: a median not reached is written as null.
            "median_survival_months": {k: (None if not np.isfinite(v) else v) for k, v in self.median_survival.items()},
            "group_sizes": self.group_sizes,
            "events": self.events,
            "cut_points": self.cut_points,
        }


def _distinct(low: float, high: float) -> str:
    """'a and b' with enough significant digits to resolve their difference (a score with a tiny
    spread, like the cosine near 1, would otherwise print as 0.999 and 1)."""
    scale, gap = max(abs(low), abs(high)), abs(high - low)
    digits = 3 if gap == 0 or scale == 0 else int(np.clip(np.ceil(np.log10(scale / gap)) + 2, 3, 12))
    return f"{low:.{digits}g} and {high:.{digits}g}"


def tertile_groups(score: pd.Series) -> pd.Series:
    """'low' / 'middle' / 'high' thirds of `score`; ranks break ties so the thirds stay equal in size."""
    ranks = score.rank(method="first")
    return pd.qcut(ranks, 3, labels=list(TERTILES)).astype(str)


def kaplan_meier_by_tertile(
    df: pd.DataFrame,
    score: str,
    duration_col: str = "time",
    event_col: str = "event",
    path: str | Path | None = None,
    title: str | None = None,
    split_on: str | None = None,
) -> KaplanMeierResult:
    """KM curve per tertile of `score`, log-rank p-value, median survival; PNG at `path` if given,
    with censor marks and an at-risk table. `split_on`: what `score` is, in words (e.g. the Cox
    risk's covariates), for the figure's legend."""
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import multivariate_logrank_test

    validate_survival_frame(df, [score], duration_col, event_col, where="Kaplan–Meier table")
    if len(df) < 6:
        raise NdaeError(f"Kaplan–Meier: {len(df)} subjects are too few for tertiles of {score!r}")
    groups = tertile_groups(df[score])
    time, event = df[duration_col].astype(float), df[event_col].astype(int)
    test = multivariate_logrank_test(time, groups, event)

    medians, sizes, events, curves = {}, {}, {}, {}
    for label in TERTILES:
        mask = (groups == label).to_numpy()
        fitter = KaplanMeierFitter(label=f"{label} third (n={mask.sum()}, {int(event[mask].sum())} events)").fit(
            time[mask], event[mask])
        medians[label] = float(fitter.median_survival_time_)
        sizes[label], events[label] = int(mask.sum()), int(event[mask].sum())
        curves[label] = fitter
    cut_points = [float(df[score][groups == "low"].max()), float(df[score][groups == "middle"].max())]

    if path is not None:
        from ndae.survival.figures import plot_kaplan_meier

        split = split_on or score
        plot_kaplan_meier([(curves[label].label, curves[label]) for label in TERTILES], path,
                          title or f"Kaplan–Meier by tertile of {split} (log-rank p = {test.p_value:.2g})",
                          split_on=f"thirds of {split}, cut at {_distinct(*cut_points)}")

    return KaplanMeierResult(
        score=score,
        p_value=float(test.p_value),
        test_statistic=float(test.test_statistic),
        median_survival=medians,
        group_sizes=sizes,
        events=events,
        cut_points=cut_points,
        groups=groups,
    )
