"""Truth-aware metrics and grouped folds (ndae.evaluation.truth_metrics / grouped_cv)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ndae.evaluation.grouped_cv import FoldError, check_grouped, grouped_folds, subject_groups
from ndae.evaluation.paired import paired_difference
from ndae.evaluation.truth_metrics import (
    TruthMetricError,
    cox_fit_predict,
    expected_c,
    expected_c_models,
    fit_cox,
    observed_c,
    paired_bootstrap_c,
    patient_control_auroc,
    risk_concordance,
    severity_spearman,
)

N = 160  # patients; 2 per source anatomy


def _cohort(seed=0, strength=1.2):
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=N)
    noise = rng.normal(size=N)
    eta = strength * signal

    def redraw(generator):
        event_time = generator.exponential(np.exp(-eta))
        censor = generator.exponential(2.0, size=N)
        return np.minimum(event_time, censor), (event_time <= censor).astype(int)

    groups = np.repeat(np.arange(N // 2), 2).astype(str)
    return signal, noise, eta, groups, redraw


# -- grouped folds --------------------------------------------------------------------------
def test_grouped_folds_never_split_a_group_and_stratify_events():
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 70, size=240).astype(str)  # uneven group sizes, 1..many
    event = (rng.uniform(size=240) < 0.6).astype(int)
    folds = grouped_folds(event, groups, folds=5, seed=7)
    assert sorted(np.concatenate(folds).tolist()) == list(range(240))
    for test in folds:
        inside = set(groups[test])
        outside = set(groups[np.setdiff1d(np.arange(240), test)])
        assert not inside & outside
    rates = [event[test].mean() for test in folds]
    assert max(rates) - min(rates) < 0.2  # stratified: every fold near the overall 60 %
    again = grouped_folds(event, groups, folds=5, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))
    other = grouped_folds(event, groups, folds=5, seed=8)
    assert not all(np.array_equal(a, b) for a, b in zip(folds, other))


def test_check_grouped_catches_a_split_group():
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    with pytest.raises(FoldError, match="split 1 group"):
        check_grouped([np.array([0, 2, 3]), np.array([1, 4, 5])], groups)


def test_subject_groups_use_source_subject_when_present():
    truth = pd.DataFrame({"subject": ["p1", "p2", "p3", "c1"], "source_subject": ["IXI1", "IXI1", "IXI2", ""]})
    assert subject_groups(["p1", "p2", "p3", "c1"], truth).tolist() == ["IXI1", "IXI1", "IXI2", "c1"]
    assert subject_groups(["p1", "p2"], truth.drop(columns="source_subject")).tolist() == ["p1", "p2"]
    with pytest.raises(FoldError, match="lacks 1 subject"):
        subject_groups(["p1", "zz"], truth)


def test_grouped_folds_refuse_too_few_groups():
    with pytest.raises(FoldError, match="at least 5 source anatomies"):
        grouped_folds(np.array([1, 0] * 10), np.repeat(np.arange(4), 5), folds=5)


# -- the Cox model ----------------------------------------------------------------------------
def test_fit_cox_matches_lifelines():
    from lifelines import CoxPHFitter

    signal, noise, eta, _, redraw = _cohort(1)
    time, event = redraw(np.random.default_rng(2))
    X = np.column_stack([signal, noise, signal * 0.5 + noise])
    beta, _, scale = fit_cox(X, time, event, penalizer=0.05)
    frame = pd.DataFrame(X, columns=["a", "b", "c"]).assign(T=time, E=event)
    reference = CoxPHFitter(penalizer=0.05).fit(frame, "T", "E").params_.to_numpy()
    np.testing.assert_allclose(beta / scale, reference, atol=2e-3)


# -- expected C ---------------------------------------------------------------------------------
def test_expected_c_separates_true_risk_from_noise():
    signal, noise, _, groups, redraw = _cohort(0)
    fit = cox_fit_predict()
    results = expected_c_models({"truth": (fit, signal), "noise": (fit, noise)}, groups, redraw, R=50, seed=4)
    truth, junk = results["truth"], results["noise"]
    assert truth.draws == 50 and truth.mean > 0.7
    assert abs(junk.mean - 0.5) < 0.06
    difference = paired_difference(truth, junk).over_draws()
    assert difference["lower"] > 0.05 and difference["difference"] > 0.15
    # same seed → the same numbers; the single-model call matches the joint one
    # draw r depends only on (seed, r): a shorter run repeats the first draws
    alone = expected_c(fit, signal, groups, redraw, R=8, seed=4)
    np.testing.assert_allclose(alone.per_draw, truth.per_draw[:8])


def test_expected_c_of_noise_without_signal_is_one_half_and_its_difference_covers_zero():
    rng = np.random.default_rng(5)
    noise_a, noise_b = rng.normal(size=(2, N))
    _, _, _, groups, redraw = _cohort(0, strength=0.0)
    fit = cox_fit_predict()
    results = expected_c_models({"a": (fit, noise_a), "b": (fit, noise_b)}, groups, redraw, R=60, seed=9)
    a = results["a"]
    # one fold's C of a useless score has sd ≈ sqrt(1/(3 · events)); the mean over R draws
    # must sit within 4 Monte-Carlo standard errors of 1/2, and that error must be small
    assert a.mc_se < 0.01
    assert abs(a.mean - 0.5) < 4 * a.mc_se
    difference = paired_difference(a, results["b"]).over_draws()
    assert difference["lower"] < 0 < difference["upper"]


def test_expected_c_refits_on_each_draw():
    signal, _, _, groups, redraw = _cohort(0)
    seen = []
    fit = cox_fit_predict()

    def recording(X_train, time_train, event_train, X_test):
        seen.append(float(np.sum(time_train)))
        return fit(X_train, time_train, event_train, X_test)

    expected_c(recording, signal, groups, redraw, R=3, seed=0)
    assert len(seen) == 15 and len(set(np.round(seen, 9))) == 15


def test_expected_c_rejects_a_bad_redraw():
    signal, _, _, groups, _ = _cohort(0)
    with pytest.raises(TruthMetricError, match="redraw"):
        expected_c(cox_fit_predict(), signal, groups, lambda rng: (np.ones(5), np.ones(5)), R=2)


# -- observed C and the paired bootstrap --------------------------------------------------------
def test_observed_c_and_paired_bootstrap():
    signal, noise, _, groups, redraw = _cohort(0)
    time, event = redraw(np.random.default_rng(11))
    fit = cox_fit_predict()
    strong = observed_c(fit, signal, time, event, groups, seed=1)
    weak = observed_c(fit, noise, time, event, groups, seed=1)
    assert strong["harrell_c"] > 0.65 and 0.55 < strong["uno_c"] < 0.95
    assert [f.tolist() for f in strong["folds"]] == [f.tolist() for f in weak["folds"]]
    check_grouped(strong["folds"], groups)
    result = paired_bootstrap_c(time, event, strong["risk"], weak["risk"], strong["folds"], groups, n_boot=200)
    assert result["lower"] > 0 and result["difference"] > 0.1
    same = paired_bootstrap_c(time, event, strong["risk"], strong["risk"], strong["folds"], groups, n_boot=50)
    assert same["difference"] == 0 and same["lower"] == 0 == same["upper"]


# -- truth-only metrics --------------------------------------------------------------------------
def test_risk_concordance():
    rng = np.random.default_rng(0)
    truth = pd.DataFrame({"subject": [f"s{i}" for i in range(100)], "risk": rng.normal(size=100)})
    assert risk_concordance(truth, truth) == 1.0
    assert risk_concordance(truth, truth.assign(risk=-truth["risk"])) == 0.0
    shuffled = truth.assign(risk=rng.permutation(truth["risk"].to_numpy()))
    assert abs(risk_concordance(truth, shuffled) - 0.5) < 0.1
    # only the predicted subjects count, in any row order
    assert risk_concordance(truth, truth.iloc[::-3]) == 1.0
    with pytest.raises(TruthMetricError, match="not in the truth"):
        risk_concordance(truth, pd.DataFrame({"subject": ["zz"], "risk": [1.0]}))


def test_severity_spearman_and_auroc():
    truth = pd.DataFrame({"subject": list("abcdef"), "severity": [0.1, 0.5, 0.9, 0.3, np.nan, np.nan]})
    scores = pd.DataFrame({"subject": list("abcdef"), "up": [1, 5, 9, 3, 0, 0], "down": [9, 5, 1, 7, 0, 0]})
    rho = severity_spearman(truth, scores)
    assert rho == {"up": pytest.approx(1.0), "down": pytest.approx(-1.0)}
    with pytest.raises(TruthMetricError, match="severity"):
        severity_spearman(truth.drop(columns="severity"), scores)
    patient = np.array([1, 1, 1, 0, 0, 0])
    assert patient_control_auroc([3, 4, 5, 0, 1, 2], patient) == 1.0
    assert patient_control_auroc([0, 1, 2, 3, 4, 5], patient) == 0.0
    assert np.isnan(patient_control_auroc([1, 2, 3], [1, 1, 1]))
