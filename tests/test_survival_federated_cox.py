"""Federated site-stratified Cox (Efron ties) against lifelines' pooled stratified fit."""

import warnings

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter

from ndae.errors import NdaeError
from ndae.survival.federated_cox import FederatedCoxFitter, efron_terms, site_partial_likelihood_terms

COVARIATES = ["age", "deviation", "sex_female"]


def _sites_with_ties(seed=1, sizes=(40, 90, 170)):
    """Three sites of different sizes and baseline hazards; times in whole months (many ties)."""
    rng = np.random.default_rng(seed)
    frames = []
    for index, n in enumerate(sizes):
        deviation = rng.normal(size=n)
        age = rng.normal(60, 8, n)
        sex = rng.integers(0, 2, n).astype(float)
        risk = 0.6 * deviation + 0.03 * (age - 60) + 0.4 * sex
        event_time = np.ceil(rng.exponential(14 * (1 + 0.4 * index) * np.exp(-risk)))
        censor_time = np.ceil(rng.uniform(4, 40, n))
        frames.append(
            pd.DataFrame(
                {
                    "age": age,
                    "deviation": deviation,
                    "sex_female": sex,
                    "time": np.minimum(event_time, censor_time),
                    "event": (event_time <= censor_time).astype(int),
                    "site": f"site_{index}",
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def pooled():
    data = _sites_with_ties()
    # The test is about ties: make sure there are many, including tied events.
    tied_events = data[data.event == 1].groupby(["site", "time"]).size()
    assert (tied_events > 1).sum() > 20
    return data


def _lifelines(pooled, penalizer=0.0, tight=False):
    options = {"precision": 1e-13, "r_precision": 1e-15} if tight else None
    return CoxPHFitter(penalizer=penalizer).fit(
        pooled[[*COVARIATES, "time", "event", "site"]], "time", "event", strata=["site"], fit_options=options
    )


def test_federated_equals_lifelines_stratified_efron(pooled):
    reference = _lifelines(pooled)
    federated = FederatedCoxFitter().fit({s: g for s, g in pooled.groupby("site")}, COVARIATES)
    np.testing.assert_allclose(federated.params_.to_numpy(), reference.params_.to_numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(federated.standard_errors_.to_numpy(), reference.standard_errors_.to_numpy(), rtol=1e-5)
    assert federated.log_likelihood_ == pytest.approx(reference.log_likelihood_, abs=1e-8)
    assert federated.n_ == len(pooled) and federated.events_ == pooled.event.sum()
    # lifelines stops slightly early by default; run to full convergence both agree to rounding.
    tight = _lifelines(pooled, tight=True)
    np.testing.assert_allclose(federated.params_.to_numpy(), tight.params_.to_numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(federated.variance_matrix_.to_numpy(), tight.variance_matrix_.to_numpy(), rtol=1e-7, atol=1e-12)


def test_penalizer_has_lifelines_semantics(pooled):
    reference = _lifelines(pooled, penalizer=0.1, tight=True)
    federated = FederatedCoxFitter(penalizer=0.1).fit({s: g for s, g in pooled.groupby("site")}, COVARIATES)
    np.testing.assert_allclose(federated.params_.to_numpy(), reference.params_.to_numpy(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(federated.standard_errors_.to_numpy(), reference.standard_errors_.to_numpy(), rtol=1e-6)
    # and the penalty really shrinks (the test would pass trivially if it were ignored... it is not)
    unpenalised = FederatedCoxFitter().fit({s: g for s, g in pooled.groupby("site")}, COVARIATES)
    assert np.abs(federated.params_).sum() < np.abs(unpenalised.params_).sum()


def test_site_message_is_numpy_arrays_of_the_right_shape(pooled):
    site = pooled[pooled.site == "site_1"]
    terms = site_partial_likelihood_terms(site, np.array([0.01, 0.5, 0.2]), COVARIATES)
    assert set(terms) == {"gradient", "hessian", "log_likelihood", "n", "events"}
    assert all(isinstance(v, np.ndarray) for v in terms.values())
    assert terms["gradient"].shape == (3,) and terms["hessian"].shape == (3, 3)
    assert terms["log_likelihood"].shape == () and int(terms["n"]) == len(site)
    assert int(terms["events"]) == site.event.sum()
    np.testing.assert_allclose(terms["hessian"], terms["hessian"].T, atol=1e-10)


def test_efron_gradient_and_hessian_match_finite_differences(pooled):
    site = pooled[pooled.site == "site_2"]
    x, time, event = site[COVARIATES].to_numpy(), site.time.to_numpy(), site.event.to_numpy().astype(bool)
    beta = np.array([0.02, 0.4, -0.3])
    gradient, hessian, _ = efron_terms(x, time, event, beta)
    step = 1e-5
    for j in range(3):
        e = np.zeros(3)
        e[j] = step
        up, down = efron_terms(x, time, event, beta + e), efron_terms(x, time, event, beta - e)
        assert (up[2] - down[2]) / (2 * step) == pytest.approx(gradient[j], rel=1e-6, abs=1e-6)
        np.testing.assert_allclose((up[0] - down[0]) / (2 * step), hessian[:, j], rtol=1e-5, atol=1e-5)


def test_callable_sites_give_the_same_fit(pooled):
    frames = {s: g for s, g in pooled.groupby("site")}
    # A remote site is just a function of beta returning the payload (e.g. a Flower round trip).
    remote = {s: (lambda beta, g=g: site_partial_likelihood_terms(g, beta, COVARIATES)) for s, g in frames.items()}
    local = FederatedCoxFitter().fit(frames, COVARIATES)
    federated = FederatedCoxFitter().fit(remote, COVARIATES)
    np.testing.assert_allclose(federated.params_.to_numpy(), local.params_.to_numpy(), atol=1e-12)
    with pytest.raises(NdaeError, match="moments"):
        FederatedCoxFitter(penalizer=0.1).fit(remote, COVARIATES)


def test_unstratified_single_site_matches_lifelines(pooled):
    site = pooled[pooled.site == "site_2"]
    reference = CoxPHFitter().fit(site[[*COVARIATES, "time", "event"]], "time", "event", fit_options={"precision": 1e-13, "r_precision": 1e-15})
    federated = FederatedCoxFitter().fit([site], COVARIATES)
    np.testing.assert_allclose(federated.params_.to_numpy(), reference.params_.to_numpy(), atol=1e-9)


def test_site_errors_name_the_column(pooled):
    broken = pooled.copy()
    broken.loc[3, "deviation"] = np.nan
    with pytest.raises(NdaeError, match="'deviation'"):
        FederatedCoxFitter().fit({s: g for s, g in broken.groupby("site")}, COVARIATES)


def test_a_site_without_events_contributes_nothing(pooled):
    frames = {s: g for s, g in pooled.groupby("site")}
    quiet = frames["site_0"].assign(event=0)
    with_quiet = FederatedCoxFitter().fit({**frames, "site_0": quiet}, COVARIATES)
    without = FederatedCoxFitter().fit({k: v for k, v in frames.items() if k != "site_0"}, COVARIATES)
    np.testing.assert_allclose(with_quiet.params_.to_numpy(), without.params_.to_numpy(), atol=1e-12)


def test_a_monotone_likelihood_is_named_before_the_coefficients_run_away():
    """Events perfectly ordered by a score: the MLE is at infinity. Without the check Newton walked
    on for ~1200 message rounds to |beta·sd| ≈ 400 (past the sites' bound of 100, then overflow)
    and ended in 'did not converge'; now the fit stops early, naming the score."""
    rng = np.random.default_rng(0)
    sent, sites = [], {}
    for index in range(3):
        score = rng.normal(size=20)
        time = np.argsort(np.argsort(-score)) + 1.0 + rng.uniform(0, 0.1, 20)  # higher score, earlier death
        frame = pd.DataFrame({"score": score, "age": rng.normal(60, 10, 20), "time": time, "event": 1})

        def terms(beta, frame=frame):
            sent.append(np.abs(beta) * frame[["score", "age"]].std().to_numpy())
            return site_partial_likelihood_terms(frame, beta, ["score", "age"])
        sites[f"site_{index}"] = terms
    with pytest.raises(NdaeError, match=r"monotone likelihood — \['score'\]"):
        FederatedCoxFitter().fit(sites, ["score", "age"])
    assert len(sent) <= 3 * 12 and max(s.max() for s in sent) < 40


def test_strong_finite_effects_still_fit_and_only_separated_cohorts_are_refused():
    """A binary covariate with hazard ratio e^4 on 3 sites × 20 patients: some draws separate (lifelines
    then gives beta ≈ 20 with se in the thousands), the others have a finite MLE. The federated fit
    must refuse exactly the first kind and match lifelines on the second."""
    refused = fitted = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        frames = []
        for index in range(3):
            x = rng.integers(0, 2, 20).astype(float)
            event_time, censor_time = rng.exponential(np.exp(-4 * x)), rng.exponential(2, 20)
            frames.append(pd.DataFrame({"x": x, "time": np.minimum(event_time, censor_time),
                                        "event": (event_time <= censor_time).astype(int), "site": index}))
        with warnings.catch_warnings():  # lifelines warns on the separated draws: that is the point
            warnings.simplefilter("ignore")
            reference = CoxPHFitter().fit(pd.concat(frames), "time", "event", strata=["site"],
                                          fit_options={"precision": 1e-12})
        separated = reference.standard_errors_["x"] > 100
        try:
            fitter = FederatedCoxFitter().fit(frames, ["x"])
        except NdaeError as error:
            assert separated and "monotone likelihood" in str(error), (seed, str(error))
            refused += 1
            continue
        assert not separated, seed
        assert fitter.params_["x"] == pytest.approx(reference.params_["x"], abs=1e-6)
        fitted += 1
    assert refused >= 3 and fitted >= 8  # both kinds occur: the test can tell them apart
