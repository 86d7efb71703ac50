"""Harrell's C of a Cox model, validated by refitting it on bootstrap resamples.

A bootstrap of the C-index with the fitted risk held fixed only measures how the pairs vary: it
never sees the optimism of a model scored on the rows it was fitted to (with ten noise
covariates on 60 patients such an interval excludes 0.5: tests/test_survival_validated_c.py). Here every
resample refits the model, as Harrell's bootstrap validation does:

- optimism_b = C of the refit on its own resample − C of the refit on the original rows;
  corrected C = apparent C − mean optimism (Harrell, Regression Modeling Strategies, §5.3);
- the interval is the percentile interval of each refit's C on the rows its resample left out
  (out-of-bag): what a model fitted this way scores on patients it has not seen.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from ndae.errors import NdaeError
from ndae.survival.cox import CoxModel, log_partial_hazard
from ndae.survival.metrics import harrell_c_index
from ndae.survival.refit import coefficients


def refit_bootstrap_c(table: pd.DataFrame, covariates: Sequence[str], *, penalizer: float = 0.0,
                      strata: Sequence[str] | None = None, n_boot: int = 200, seed: int = 0,
                      alpha: float = 0.05) -> dict[str, float]:
    """`apparent`, optimism-`corrected` C, out-of-bag `lower`/`upper` percentiles, `n_boot` used.

    A resample is dropped (not counted in `n_boot`) when the model cannot be fitted on it (no event,
    a constant covariate, lifelines' ConvergenceError) or it holds no comparable pair; pairs are
    Harrell's over all rows, across strata too, as in the apparent C."""
    from lifelines.exceptions import ConvergenceError

    covariates = list(covariates)
    model = CoxModel(penalizer=penalizer, strata=strata).fit(table, "time", "event", covariates=covariates)
    time, event = table["time"].to_numpy(float), table["event"].to_numpy(float)
    apparent = harrell_c_index(time, event, model.predict_log_partial_hazard(table))
    rng = np.random.default_rng(seed)
    optimism, out_of_bag = [], []
    n = len(table)
    for _ in range(n_boot):
        rows = rng.integers(0, n, n)
        left_out = np.setdiff1d(np.arange(n), rows)
        sample = table.iloc[rows].reset_index(drop=True)
        if sample["event"].sum() == 0 or any(sample[c].nunique() < 2 for c in covariates):
            continue  # a resample the model cannot be fitted on: dropped and counted below
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # only β and the centring are read: the same lifelines fit as CoxModel.fit, without
                # what it computes for a person to read (tests/test_survival_refit.py)
                beta, means = coefficients(sample, "time", "event", covariates, penalizer=penalizer, strata=strata)
        except ConvergenceError:
            continue  # CoxModel.fit raises it as an NdaeError: a resample that cannot be fitted
        on_sample = harrell_c_index(sample["time"], sample["event"], log_partial_hazard(sample, covariates, beta, means))
        if not np.isfinite(on_sample):
            continue  # no comparable pair in the resample: its optimism is undefined (dropped, counted below)
        on_original = harrell_c_index(time, event, log_partial_hazard(table, covariates, beta, means))
        optimism.append(on_sample - on_original)
        if event[left_out].sum() > 0 and len(left_out) > 1:
            out_of_bag.append(harrell_c_index(time[left_out], event[left_out],
                                              log_partial_hazard(table.iloc[left_out], covariates, beta, means)))
    if not optimism:
        raise NdaeError(f"bootstrap validation: none of {n_boot} resamples could be refitted")
    oob = np.asarray([c for c in out_of_bag if np.isfinite(c)])
    lower, upper = np.quantile(oob, [alpha / 2, 1 - alpha / 2]) if oob.size else (float("nan"), float("nan"))
    return {"apparent": float(apparent), "optimism": float(np.mean(optimism)),
            "corrected": float(apparent - np.mean(optimism)), "out_of_bag_mean": float(oob.mean()) if oob.size else float("nan"),
            "lower": float(lower), "upper": float(upper), "n_boot": len(optimism), "method": "refit bootstrap"}
