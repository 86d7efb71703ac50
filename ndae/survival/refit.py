"""The coefficients of a Cox refit, by lifelines' own Newton–Raphson, without the rest of its `fit`.

The refit bootstrap (`validated_c.refit_bootstrap_c`) refits the model on every resample and reads
only the linear predictor, (x − training mean)·β. `CoxPHFitter.fit` also computes, on each refit,
what a person reads of a final model: the per-stratum `describe` of the raw data for its plots, the
baseline hazards, standard errors, intervals and baseline survival — about half of each fit on a
small stratified table. `coefficients` runs the same lifelines code up to the coefficients
(preprocessing, centring and scaling, `_newton_raphson_for_efron_model`, with its convergence
warnings and errors) and skips the rest, so its β and means equal `CoxModel.fit`'s bit for bit
(tests/test_survival_refit.py checks this on resamples that converge, that lifelines stops
before convergence, and that it refuses).

It overrides private methods of lifelines' `SemiParametricPHFitter` (written against lifelines
0.30). Were one renamed, its override would simply not be called: the fit would be slower, never
different; the equality test guards the rest.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import pandas as pd

from ndae.survival.cox import lifelines_table


@functools.cache
def _fitter_class():
    from lifelines.fitters.coxph_fitter import SemiParametricPHFitter

    class CoefficientsOnlyPHFitter(SemiParametricPHFitter):
        """lifelines' fit up to β; what it computes afterwards for a person to read is left out."""

        def _compute_central_values_of_raw_training_data(self, df, strata=None, name="baseline"):
            return None  # plot defaults

        def _compute_baseline_hazards(self, *args, **kwargs):
            return None

        def _compute_baseline_cumulative_hazard(self, *args, **kwargs):
            return pd.DataFrame(index=pd.Index([], dtype=float))  # `fit` reads its (empty) index

        def predict_partial_hazard(self, X, *args, **kwargs):
            return pd.Series(np.nan, index=pd.RangeIndex(len(X)))  # only for the fitted table's summary

        def _compute_standard_errors(self, *args, **kwargs):
            return None

        def _compute_confidence_intervals(self, *args, **kwargs):
            return None

        def _compute_baseline_survival(self, *args, **kwargs):
            return None

    return CoefficientsOnlyPHFitter


def coefficients(df: pd.DataFrame, duration_col: str, event_col: str, covariates: Sequence[str], *,
                 penalizer: float = 0.0, strata: Sequence[str] | None = None,
                 fit_options: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(β, training means) of the Cox model `CoxPHFitter(penalizer).fit(df[covariates, duration,
    event, strata], duration_col, event_col, strata=strata, fit_options=fit_options)` fits (as
    `CoxModel.fit` and `fit_pooled_cox` call it), in `covariates` order. Raises lifelines'
    ConvergenceError where that fit raises it; the caller has checked the table as they do."""
    strata = list(strata) if strata else None
    table = lifelines_table(df, covariates, duration_col, event_col, strata)
    # as CoxPHFitter._fit_model_breslow builds and calls its SemiParametricPHFitter
    fitter = _fitter_class()(penalizer=penalizer, l1_ratio=0.0, strata=strata, alpha=0.05, label=None)
    fitter.fit(table, duration_col, event_col=event_col, show_progress=False, initial_point=None, strata=strata,
               weights_col=None, cluster_col=None, robust=False, batch_mode=None, timeline=None, formula=None,
               entry_col=None, fit_options=fit_options)
    return fitter.params_.to_numpy(), fitter._norm_mean.to_numpy()
