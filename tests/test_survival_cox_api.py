"""Both Cox classes speak lifelines' CoxPHFitter: `fit(df, duration_col, event_col)`, `summary`,
`params_`, `standard_errors_`, `hazard_ratios_`, `confidence_intervals_`, the same values and
column names; the spellings before it still work for one release and warn."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter

from ndae.survival.cox import CoxModel, hazard_ratio_table
from ndae.survival.federated_cox import FederatedCoxFitter

COVARIATES = ["x0", "x1"]


@pytest.fixture(scope="module")
def table():
    """Two sites, two covariates with known effects, ties in whole months."""
    rng = np.random.default_rng(4)
    n = 160
    x = rng.normal(size=(n, 2))
    site = np.where(np.arange(n) < 70, "a", "b")
    event_time = np.ceil(rng.exponential(12 * np.exp(-(0.7 * x[:, 0] - 0.4 * x[:, 1])) * np.where(site == "a", 1, 1.5)))
    censor_time = np.ceil(rng.uniform(3, 36, n))
    return pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "time": np.minimum(event_time, censor_time),
                         "event": (event_time <= censor_time).astype(int), "site": site})


def _lifelines(table, **options):
    return CoxPHFitter(**options).fit(table[[*COVARIATES, "time", "event", *options.get("strata", [])]],
                                      "time", "event")


def _assert_lifelines_results(ours, reference, rtol):
    pd.testing.assert_frame_equal(ours.summary, reference.summary, rtol=rtol)
    for name in ("params_", "standard_errors_", "hazard_ratios_"):
        pd.testing.assert_series_equal(getattr(ours, name), getattr(reference, name), rtol=rtol, obj=name)
    pd.testing.assert_frame_equal(ours.confidence_intervals_, reference.confidence_intervals_, rtol=rtol)


@pytest.mark.parametrize("options", [{}, {"penalizer": 0.1, "strata": ["site"]}])
def test_cox_model_results_are_lifelines_own(table, options):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        model = CoxModel(**options).fit(table, "time", "event", covariates=COVARIATES)
    _assert_lifelines_results(model, _lifelines(table, **options), rtol=1e-12)


def test_cox_model_without_covariates_takes_every_other_column_as_lifelines_does(table):
    model = CoxModel(strata=["site"]).fit(table[[*COVARIATES, "time", "event", "site"]], "time", "event")
    assert model.covariates == COVARIATES
    pd.testing.assert_series_equal(model.params_, _lifelines(table, strata=["site"]).params_)


def test_a_loaded_cox_model_has_the_same_summary(table, tmp_path):
    model = CoxModel().fit(table, "time", "event", covariates=COVARIATES)
    model.save(tmp_path)
    pd.testing.assert_frame_equal(CoxModel.load(tmp_path).summary, model.summary)


def test_federated_results_are_lifelines_stratified_ones(table):
    sites = {name: rows for name, rows in table.groupby("site")}
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        fitter = FederatedCoxFitter().fit(sites, "time", "event", covariates=COVARIATES)
    _assert_lifelines_results(fitter, _lifelines(table, strata=["site"]), rtol=1e-5)


# -- the spellings before, for one release ---------------------------------------------------------


def test_cox_model_fit_with_covariates_second_still_works_and_warns(table):
    with pytest.warns(DeprecationWarning, match="duration_col"):
        old = CoxModel().fit(table, COVARIATES)
    pd.testing.assert_series_equal(old.params_, CoxModel().fit(table, "time", "event", covariates=COVARIATES).params_)


def test_cox_model_duration_and_event_in_the_constructor_still_work_and_warn(table):
    renamed = table.rename(columns={"time": "T", "event": "E"})
    with pytest.warns(DeprecationWarning, match="duration_col"):
        model = CoxModel(duration_col="T", event_col="E")
    old = model.fit(renamed, covariates=COVARIATES)
    new = CoxModel().fit(renamed, "T", "E", covariates=COVARIATES)
    pd.testing.assert_series_equal(old.params_, new.params_)
    assert (old.duration_col, old.event_col) == ("T", "E")


def test_cox_model_hazard_ratios_method_still_works_and_warns(table):
    model = CoxModel().fit(table, "time", "event", covariates=COVARIATES)
    with pytest.warns(DeprecationWarning, match="summary"):
        old = model.hazard_ratios()
    pd.testing.assert_frame_equal(old, hazard_ratio_table(model.params_, model.standard_errors_, model.alpha))
    np.testing.assert_allclose(old["hazard_ratio"], model.hazard_ratios_.to_numpy())


def test_federated_fit_with_covariates_second_still_works_and_warns(table):
    sites = {name: rows for name, rows in table.groupby("site")}
    with pytest.warns(DeprecationWarning, match="duration_col"):
        old = FederatedCoxFitter().fit(sites, COVARIATES)
    new = FederatedCoxFitter().fit(sites, "time", "event", covariates=COVARIATES)
    pd.testing.assert_series_equal(old.params_, new.params_)
