"""Pooled Cox wrapper: recovers a known effect, round-trips through save/load, clear errors."""

import json

import numpy as np
import pandas as pd
import pytest

from ndae.errors import NdaeError
from ndae.survival.cox import CoxModel
from tests.survival_simulation import simulate_weibull_cox

TRUE_BETA = [0.7, -0.5]


@pytest.fixture(scope="module")
def cohort():
    return simulate_weibull_cox(800, TRUE_BETA, seed=3, sites=["a", "b", "c"], site_scale=[1.0, 1.5, 0.7])


def test_hazard_ratios_recover_the_truth_within_ci(cohort):
    model = CoxModel(strata=["site"]).fit(cohort, ["x0", "x1"])
    table = model.hazard_ratios().set_index("covariate")
    for name, beta in zip(["x0", "x1"], TRUE_BETA):
        row = table.loc[name]
        assert row.hazard_ratio_lower_95 < np.exp(beta) < row.hazard_ratio_upper_95
        assert row.hazard_ratio == pytest.approx(np.exp(row.coef))
        assert row.p < 1e-6
    # A covariate with no effect is not "found": its CI covers HR = 1.
    noisy = cohort.assign(noise=np.random.default_rng(0).normal(size=len(cohort)))
    table = CoxModel(strata=["site"]).fit(noisy, ["x0", "x1", "noise"]).hazard_ratios().set_index("covariate")
    assert table.loc["noise"].hazard_ratio_lower_95 < 1 < table.loc["noise"].hazard_ratio_upper_95


def test_save_and_load_round_trip(cohort, tmp_path):
    model = CoxModel(penalizer=0.01).fit(cohort, ["x0", "x1"])
    model.save(tmp_path)
    saved = json.loads((tmp_path / "cox.json").read_text())
    assert saved["covariates"] == ["x0", "x1"] and saved["penalizer"] == 0.01
    table = pd.read_csv(tmp_path / "hazard_ratios.csv")
    assert list(table.covariate) == ["x0", "x1"]
    assert {"hazard_ratio", "hazard_ratio_lower_95", "hazard_ratio_upper_95", "p"} <= set(table.columns)
    loaded = CoxModel.load(tmp_path)
    np.testing.assert_allclose(loaded.predict_log_partial_hazard(cohort), model.predict_log_partial_hazard(cohort))
    # and our prediction is lifelines' log partial hazard
    np.testing.assert_allclose(model.predict_log_partial_hazard(cohort), model.fitter_.predict_log_partial_hazard(cohort[["x0", "x1"]]).to_numpy())
    pd.testing.assert_frame_equal(loaded.hazard_ratios(), model.hazard_ratios())


def test_load_missing_model_is_clear(tmp_path):
    with pytest.raises(NdaeError, match="no saved Cox model"):
        CoxModel.load(tmp_path)


@pytest.mark.parametrize(
    "change, column, words",
    [
        (lambda d: d.drop(columns="x1"), "'x1'", "missing"),
        (lambda d: d.assign(x0=d.x0.where(d.index != 5)), "'x0'", "NaN"),
        (lambda d: d.assign(time=d.time.where(d.index != 7, -1.0)), "'time'", "negative"),
        (lambda d: d.assign(event=d.event.where(d.index != 2, 2)), "'event'", "0 or 1"),
        (lambda d: d.drop(columns="site"), "'site'", "missing"),
        (lambda d: d.assign(x1="high"), "'x1'", "numeric"),
    ],
)
def test_errors_name_the_bad_column(cohort, change, column, words):
    with pytest.raises(NdaeError) as error:
        CoxModel(strata=["site"]).fit(change(cohort.copy()), ["x0", "x1"])
    assert column in str(error.value) and words in str(error.value)


def test_predict_survival_function_is_a_survival_curve(cohort):
    model = CoxModel(strata=["site"]).fit(cohort, ["x0", "x1"])
    survival = model.predict_survival_function(cohort.head(10), [3.0, 12.0, 24.0])
    assert survival.shape == (10, 3)
    assert np.all(np.diff(survival, axis=1) <= 0) and np.all((survival > 0) & (survival <= 1))
    # rows stay in input order with strata (lifelines groups them by stratum): compare one by one
    rows = cohort.sample(12, random_state=1)
    together = model.predict_survival_function(rows, [12.0])
    one_by_one = [model.predict_survival_function(rows.iloc[[i]], [12.0])[0, 0] for i in range(len(rows))]
    np.testing.assert_allclose(together[:, 0], one_by_one)


@pytest.mark.parametrize("strata", [None, ["site"]])
def test_a_loaded_model_predicts_the_same_survival_curves(cohort, tmp_path, strata):
    model = CoxModel(strata=strata).fit(cohort, ["x0", "x1"])
    model.save(tmp_path)
    loaded = CoxModel.load(tmp_path)
    rows, times = cohort.sample(25, random_state=2), [0.5, 3.0, 12.0, 24.0, 60.0]
    np.testing.assert_allclose(loaded.predict_survival_function(rows, times),
                               model.predict_survival_function(rows, times), rtol=1e-10, atol=1e-12)
    if strata:
        with pytest.raises(NdaeError, match="stratum 'z'"):
            loaded.predict_survival_function(rows.head(1).assign(site="z"), times)
    saved = json.loads((tmp_path / "cox.json").read_text())
    del saved["baseline"]
    (tmp_path / "cox.json").write_text(json.dumps(saved))
    with pytest.raises(NdaeError, match="no baseline hazard"):
        CoxModel.load(tmp_path).predict_survival_function(rows, times)
