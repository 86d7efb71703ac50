"""C-indices (oracle, Harrell, Uno), dynamic AUC, integrated Brier, cross-validation."""

import numpy as np
import pytest

from ndae.errors import NdaeError
from ndae.survival.cox import CoxModel
from ndae.survival.metrics import (
    cross_validate_cox,
    harrell_c_index,
    integrated_brier,
    time_dependent_auc,
    uno_c_index,
)
from ndae.survival.oracle import oracle_c_index
from tests.survival_simulation import simulate_weibull_cox


def brute_force_c_index(time, event, risk):
    """Harrell's C by enumerating pairs: comparable if the shorter time is an event."""
    concordant = comparable = 0.0
    for i in range(len(time)):
        if not event[i]:
            continue
        for j in range(len(time)):
            if time[i] < time[j]:
                comparable += 1
                concordant += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return concordant / comparable


@pytest.fixture(scope="module")
def weibull():
    return simulate_weibull_cox(300, [0.9, -0.6], seed=11)


def test_oracle_c_index_equals_brute_force_and_beats_chance(weibull):
    c_star = oracle_c_index(weibull.time, weibull.event, weibull.true_risk)
    assert c_star > 0.5
    assert c_star == pytest.approx(brute_force_c_index(weibull.time.to_numpy(), weibull.event.to_numpy(), weibull.true_risk.to_numpy()), abs=1e-12)
    # the sign matters: the reversed predictor gets 1 - C*
    assert oracle_c_index(weibull.time, weibull.event, -weibull.true_risk) == pytest.approx(1 - c_star)
    # ties in the risk score count one half, as in the brute force
    coarse = np.round(weibull.true_risk.to_numpy())
    assert oracle_c_index(weibull.time, weibull.event, coarse) == pytest.approx(brute_force_c_index(weibull.time.to_numpy(), weibull.event.to_numpy(), coarse), abs=1e-12)


def test_oracle_rejects_bad_input():
    with pytest.raises(NdaeError, match="event"):
        oracle_c_index([1, 2, 3], [0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(NdaeError, match="true_risk"):
        oracle_c_index([1, 2, 3], [1, 0, 1], [0.1, np.nan, 0.3])


def test_harrell_matches_oracle_convention(weibull):
    assert harrell_c_index(weibull.time, weibull.event, weibull.true_risk) == pytest.approx(
        oracle_c_index(weibull.time, weibull.event, weibull.true_risk)
    )


@pytest.mark.parametrize("n", [2, 3, 7, 25, 120])
def test_harrell_equals_scikit_survival_to_the_last_bit_with_tied_times_risks_and_censoring(n):
    """The numpy pair count is scikit-survival's `concordance_index_censored`: same comparable
    pairs (an event against a censoring at its own time included, two events at one time not),
    same ties in risk (within 1e-8), same value to the last bit."""
    from sksurv.metrics import concordance_index_censored

    rng = np.random.default_rng(n)
    for draw in range(40):
        time = rng.integers(1, 6, n).astype(float) if draw % 2 else rng.exponential(5.0, n)
        event = rng.random(n) < 0.6
        risk = np.round(rng.normal(size=n), 1) if draw % 3 else rng.normal(size=n)
        risk[: n // 3] += 1e-9 * (draw % 4 == 0)  # within scikit-survival's tie tolerance
        if not event.any():
            assert np.isnan(harrell_c_index(time, event, risk))
            continue
        try:
            expected = concordance_index_censored(event, time, risk)[0]
        except ValueError:  # no comparable pair
            assert np.isnan(harrell_c_index(time, event, risk))
            continue
        assert harrell_c_index(time, event.astype(int), risk) == expected, (draw, time, event, risk)


def test_harrell_is_nan_where_scikit_survival_refuses_the_input():
    assert np.isnan(harrell_c_index([1.0, 2.0, 3.0], [1, 1, 0], [0.1, np.nan, 0.3]))
    assert np.isnan(harrell_c_index([1.0, np.inf, 3.0], [1, 1, 0], [0.1, 0.2, 0.3]))
    assert np.isnan(harrell_c_index([2.0, 2.0], [1, 1], [0.1, 0.2]))  # two events at one time: no pair
    assert np.isnan(harrell_c_index([1.0], [1], [0.1]))


def test_ipcw_metrics_survive_test_times_beyond_train_follow_up(weibull):
    train, test = weibull.iloc[:200], weibull.iloc[200:].copy()
    # a test patient who died after the last training time: sksurv would raise without truncation
    test.iloc[0, test.columns.get_loc("time")] = train.time.max() + 10
    test.iloc[0, test.columns.get_loc("event")] = 1
    args = (train.time, train.event, test.time, test.event)
    uno = uno_c_index(*args, test.true_risk)
    assert 0.6 < uno < 1.0
    times, auc, mean_auc = time_dependent_auc(*args, test.true_risk)
    assert times.size >= 2 and times.max() < min(train.time.max(), test.time.max())
    assert 0.6 < mean_auc < 1.0 and np.all((auc > 0.5) & (auc <= 1))
    model = CoxModel().fit(train, ["x0", "x1"])
    brier_model = integrated_brier(*args, model.predict_survival_function(test, times), times)
    null = CoxModel().fit(train.assign(noise=np.random.default_rng(1).normal(size=len(train))), ["noise"])
    brier_null = integrated_brier(*args, null.predict_survival_function(test.assign(noise=0.0), times), times)
    assert 0 < brier_model < brier_null < 0.5


def test_cross_validation_uses_identical_folds_for_every_model():
    data = simulate_weibull_cox(240, [0.9, 0.0], seed=2, sites=["a", "b"], site_scale=[1.0, 1.4])
    data["noise"] = np.random.default_rng(9).normal(size=len(data))
    feature_sets = {"true": ["x0"], "noise": ["noise"], "both": ["x0", "noise"]}
    result = cross_validate_cox(data, feature_sets, folds=4, seed=0, strata=["site"])
    folds = result.test_indices
    for name in feature_sets:
        assert len(folds[name]) == 4
        for fold in range(4):
            np.testing.assert_array_equal(folds[name][fold], folds["true"][fold])
    # the folds partition the rows, stratified by event
    everything = np.sort(np.concatenate(folds["true"]))
    np.testing.assert_array_equal(everything, np.arange(len(data)))
    rates = [data.event.to_numpy()[f].mean() for f in folds["true"]]
    assert max(rates) - min(rates) < 0.05
    assert len(result.per_fold) == 12 and not result.per_fold[["harrell_c", "uno_c", "mean_auc", "integrated_brier"]].isna().any().any()
    summary = result.summary()
    assert summary.loc["true", "harrell_c_mean"] > summary.loc["noise", "harrell_c_mean"] + 0.1
    assert summary.loc["true", "integrated_brier_mean"] < summary.loc["noise", "integrated_brier_mean"]
    assert "±" in summary.loc["true", "harrell_c"]
    # same seed, same folds; another seed, other folds
    again = cross_validate_cox(data, {"true": ["x0"]}, folds=4, seed=0, strata=["site"])
    for a, b in zip(again.test_indices["true"], folds["true"]):
        np.testing.assert_array_equal(a, b)
    reseeded = cross_validate_cox(data, {"true": ["x0"]}, folds=4, seed=1, strata=["site"])
    assert not all(np.array_equal(a, b) for a, b in zip(reseeded.test_indices["true"], folds["true"]))


def test_cross_validation_needs_enough_events():
    data = simulate_weibull_cox(30, [0.5], seed=0)
    data.loc[:, "event"] = 0
    data.loc[:1, "event"] = 1
    with pytest.raises(NdaeError, match="folds"):
        cross_validate_cox(data, {"m": ["x0"]}, folds=5)
