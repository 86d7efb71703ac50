"""The survival model: realistic ALS survival, censoring in range, exact C*, Cox recovers η."""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.utils import concordance_index as lifelines_concordance

from ndae.cohort.survival import (
    SurvivalModel,
    SurvivalModelError,
    concordance_index,
    kaplan_meier_median,
    redraw_survival,
    simulate_patients,
    survival_summary,
)

# Documented ranges (docs/cohort.md): median survival from scan 24–36 months, 20–40 % censored.
MEDIAN_RANGE = (24.0, 36.0)
CENSORING_RANGE = (0.20, 0.40)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return simulate_patients(4000, np.random.default_rng(7))


def test_median_and_censoring_in_documented_ranges(table):
    summary = survival_summary(table)
    assert MEDIAN_RANGE[0] <= summary["kaplan_meier_median_months"] <= MEDIAN_RANGE[1]
    assert CENSORING_RANGE[0] <= summary["censoring_fraction"] <= CENSORING_RANGE[1]
    # Both censoring mechanisms are active.
    censored = table[table["event"] == 0]
    assert (censored["censor_time"] < SurvivalModel().study_months - SurvivalModel().accrual_months).any()
    assert (censored["censor_time"] > SurvivalModel().study_months - SurvivalModel().accrual_months).any()


def test_cox_on_true_predictor_recovers_unit_coefficient(table):
    fit = CoxPHFitter().fit(table[["time", "event", "risk"]], duration_col="time", event_col="event")
    coefficient = float(fit.params_["risk"])
    standard_error = float(fit.standard_errors_["risk"])
    assert abs(coefficient - 1.0) < max(3 * standard_error, 0.05), (coefficient, standard_error)


def test_cox_recovers_each_hazard_ratio(table):
    frame = table.assign(
        severity_sd=(table["severity"] - 0.5) / 0.2, age_decade=(table["age"] - 60) / 10
    )[["time", "event", "severity_sd", "age_decade", "bulbar"]]
    fit = CoxPHFitter().fit(frame, duration_col="time", event_col="event")
    model = SurvivalModel()
    expected = {
        "severity_sd": model.log_hazard_ratio_severity,
        "age_decade": model.log_hazard_ratio_age,
        "bulbar": model.log_hazard_ratio_bulbar,
    }
    for name, value in expected.items():
        assert abs(fit.params_[name] - value) < 4 * fit.standard_errors_[name], name


def test_concordance_index_is_exact_harrell(table):
    part = table.iloc[:600]
    ours = concordance_index(part["time"], part["risk"], part["event"])
    theirs = lifelines_concordance(part["time"], -part["risk"], part["event"])
    assert ours == pytest.approx(theirs, abs=1e-12)
    # A tiny hand-checked case: comparable pairs (1,2), (1,3), (2,3) with (2,3) tied in score.
    assert concordance_index([1, 2, 3], [3, 1, 1], [1, 1, 0]) == pytest.approx(2.5 / 3)
    # A risk score unrelated to the outcome gives C ≈ 0.5; the true risk does much better.
    noise = np.random.default_rng(0).normal(size=len(table))
    assert abs(concordance_index(table["time"], noise, table["event"]) - 0.5) < 0.03
    assert concordance_index(table["time"], table["risk"], table["event"]) > 0.65


def test_kaplan_meier_median_matches_lifelines(table):
    part = table.iloc[:500]
    fitter = KaplanMeierFitter().fit(part["time"], part["event"])
    assert kaplan_meier_median(part["time"], part["event"]) == pytest.approx(fitter.median_survival_time_)


def test_bulbar_onset_and_age_shorten_survival():
    model = SurvivalModel()
    limb = model.linear_predictor(0.5, 60, 0)
    bulbar = model.linear_predictor(0.5, 60, 1)
    older = model.linear_predictor(0.5, 70, 0)
    assert bulbar > limb and older > limb
    # The reference patient's median is the documented one.
    assert model.survival_function(model.median_months, 0.0) == pytest.approx(0.5)


def test_same_seed_same_table_different_seed_differs():
    a = simulate_patients(50, np.random.default_rng(1))
    b = simulate_patients(50, np.random.default_rng(1))
    c = simulate_patients(50, np.random.default_rng(2))
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["event_time"], c["event_time"])


def test_concordance_without_events_is_nan():
    assert np.isnan(concordance_index([1, 2, 3], [1, 2, 3], [0, 0, 0]))


def _spread(values):
    return float(np.std(values, ddof=1))


def test_redraw_follows_the_stored_model_not_the_default(table):
    # A cohort made with another model than the default: shorter survival, flatter hazard, more dropout.
    model = replace(SurvivalModel(), median_months=18.0, weibull_shape=1.2, dropout_months=60.0)
    cohort_json = {"survival_model": asdict(model)}
    patients = model.simulate(table["risk"].iloc[:800], np.random.default_rng(3)).assign(subject=lambda t: t.index.astype(str))
    draws = [redraw_survival(cohort_json, patients, np.random.default_rng(100 + r)) for r in range(40)]
    medians = [kaplan_meier_median(t, e) for t, e in draws]
    event_rates = [float(np.mean(e)) for _, e in draws]
    oracle = [concordance_index(t, patients["risk"], e) for t, e in draws]
    # The cohort's own outcome is one draw of the same distribution: within 4 sd of the redraws.
    own_median = kaplan_meier_median(patients["time"], patients["event"])
    assert abs(own_median - np.mean(medians)) < 4 * _spread(medians)
    assert abs(patients["event"].mean() - np.mean(event_rates)) < 4 * _spread(event_rates)
    assert abs(concordance_index(patients["time"], patients["risk"], patients["event"]) - np.mean(oracle)) < 4 * _spread(oracle)
    # The default model (median 30 months) would give clearly longer survival: the JSON is what is used.
    default = [kaplan_meier_median(*redraw_survival({"survival_model": asdict(SurvivalModel())}, patients,
                                                     np.random.default_rng(100 + r))) for r in range(10)]
    assert min(default) > max(medians)


def test_redraw_refuses_what_it_cannot_use(table):
    patients = table.iloc[:5].assign(subject=[f"s{i}" for i in range(5)])
    good = asdict(SurvivalModel())
    with pytest.raises(SurvivalModelError, match="no 'survival_model'"):
        redraw_survival({}, patients, np.random.default_rng(0))
    with pytest.raises(SurvivalModelError, match="missing \\['dropout_months'\\]"):
        redraw_survival({"survival_model": {k: v for k, v in good.items() if k != "dropout_months"}}, patients,
                        np.random.default_rng(0))
    with pytest.raises(SurvivalModelError, match="weibull_shape"):
        redraw_survival({"survival_model": {**good, "weibull_shape": -1}}, patients, np.random.default_rng(0))
    with pytest.raises(SurvivalModelError, match="s2"):
        redraw_survival({"survival_model": good}, patients.assign(risk=[0, 1, np.nan, 0, 0]), np.random.default_rng(0))
