"""`refit.coefficients` is `CoxModel.fit`'s β and centring, bit for bit, on the resamples the refit
bootstrap draws: ones that converge, ones whose likelihood is monotone (lifelines stops with a
ConvergenceWarning) and ones lifelines refuses."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from ndae.errors import NdaeError
from ndae.survival.cox import CoxModel
from ndae.survival.refit import coefficients


def _table(seed: int, n: int = 18) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    score = rng.normal(size=n)
    return pd.DataFrame({
        "mahalanobis": score, "age": rng.normal(60, 10, n).round(1), "sex_female": rng.integers(0, 2, n),
        "time": np.round(rng.exponential(20 * np.exp(-0.8 * score)), 0) + 1,  # rounded: tied times
        "event": (rng.random(n) < 0.7).astype(int), "site": np.repeat(["site1", "site2", "site3"], n // 3)})


@pytest.mark.parametrize("penalizer, strata", [(0.0, ["site"]), (0.1, None)])
def test_coefficients_equal_cox_model_fit_on_bootstrap_resamples(penalizer, strata):
    covariates = ["mahalanobis", "age", "sex_female"]
    outcomes = {"converged": 0, "stopped": 0, "refused": 0}
    for seed in range(4):
        table = _table(seed)
        rng = np.random.default_rng(100 + seed)
        for _ in range(10):
            sample = table.iloc[rng.integers(0, len(table), len(table))].reset_index(drop=True)
            if sample["event"].sum() == 0 or any(sample[c].nunique() < 2 for c in covariates):
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    model = CoxModel(penalizer=penalizer, strata=strata).fit(sample, "time", "event",
                                                                             covariates=covariates)
                except NdaeError:
                    model = None
            if model is None:
                from lifelines.exceptions import ConvergenceError

                with pytest.raises(ConvergenceError), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    coefficients(sample, "time", "event", covariates, penalizer=penalizer, strata=strata)
                outcomes["refused"] += 1
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                beta, means = coefficients(sample, "time", "event", covariates, penalizer=penalizer, strata=strata)
            assert np.array_equal(beta, model.params_.to_numpy()), (beta, model.params_)
            assert np.array_equal(means, model.means_.to_numpy())
            stopped = any("converge" in str(w.message).lower() for w in caught)
            outcomes["stopped" if stopped else "converged"] += 1
    assert outcomes["converged"] >= 10, outcomes
    if penalizer == 0.0 and strata:
        assert outcomes["stopped"] >= 3, outcomes  # the monotone resamples are among those compared


def test_a_fit_lifelines_refuses_is_refused_as_cox_model_refuses_it():
    from lifelines.exceptions import ConvergenceError

    table = _table(0).assign(twice=lambda t: 2 * t["mahalanobis"])  # collinear: the Hessian is singular
    with pytest.raises(NdaeError, match="did not converge"):
        CoxModel(strata=["site"]).fit(table, "time", "event", covariates=["mahalanobis", "twice"])
    with pytest.raises(ConvergenceError):
        coefficients(table, "time", "event", ["mahalanobis", "twice"], strata=["site"])


def test_pooled_cox_coefficients_equal_the_pooled_fits_on_cross_validation_folds():
    from ndae.federation.server.survival import fit_pooled_cox, pooled_cox_coefficients

    table = pd.concat([_table(seed) for seed in range(3)], ignore_index=True)  # 54 rows, as a pooled run has
    folds = np.random.default_rng(0).integers(0, 5, len(table))
    for fold in range(5):
        train = table[folds != fold]
        for covariates in (["mahalanobis", "age", "sex_female"], ["age", "sex_female"]):
            expected = fit_pooled_cox(train, covariates).params_.reindex(covariates).to_numpy()
            assert np.array_equal(pooled_cox_coefficients(train, covariates), expected)
