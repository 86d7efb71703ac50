"""Normative model: design, summable sufficient statistics, site effects, transfer, persistence."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from ndae.errors import NdaeError
from ndae.normative.design import DesignSpec
from ndae.normative.model import NormativeModel, OutOfRangeWarning
from ndae.normative.sufficient_stats import SufficientStats

D = 32


def synthetic_latents(covariates, rng, site_offsets=None, shared_mean=20.0, noise=0.5, d=D):
    """z_sem-like: a large shared mean, smooth age effect, sex effect, site offsets, noise."""
    rng_weights = np.random.default_rng(12345)  # same 'anatomy' for every call
    age = covariates["age"].to_numpy(float)
    female = (covariates["sex"] == "F").to_numpy(float)
    base = shared_mean + rng_weights.normal(0, 1, d)
    w_age, w_age2, w_sex = (rng_weights.normal(0, 1, d) for _ in range(3))
    scaled = (age - 50) / 20
    Y = base + np.outer(scaled, w_age) * 0.6 + np.outer(scaled**2, w_age2) * 0.2 + np.outer(female, w_sex) * 0.3
    if site_offsets is not None:
        Y = Y + np.array([site_offsets.get(s, 0.0) for s in covariates["site"]])[:, None]
    return Y + rng.normal(0, noise, (len(age), d))


def synthetic_cohort(n, sites, rng, age=(20, 85)):
    return pd.DataFrame(
        {
            "subject": [f"s{i}" for i in range(n)],
            "age": rng.uniform(*age, n),
            "sex": rng.choice(["M", "F"], n),
            "site": rng.choice(sites, n),
        }
    )


@pytest.fixture(scope="module")
def ixi_cohort(ixi_dir):
    """The 121 real IXI ages and sexes, split over three sites with controls; a fourth site
    (D) has only patients."""
    frame = pd.read_csv(ixi_dir / "demographics.csv")
    rng = np.random.default_rng(0)
    frame["site"] = rng.choice(["A", "B", "C", "D"], len(frame), p=[0.35, 0.3, 0.2, 0.15])
    frame["group"] = np.where(frame["site"] == "D", "als", "control")
    Y = synthetic_latents(frame, rng, site_offsets={"A": -0.4, "B": 0.1, "C": 0.5, "D": 0.3})
    return frame, Y


# -- design ----------------------------------------------------------------------------------


def test_design_names_missing_and_bad_columns():
    spec = DesignSpec()
    frame = pd.DataFrame({"subject": ["a", "b"], "age": [30.0, np.nan], "sex": ["M", "F"]})
    with pytest.raises(NdaeError, match=r"'age'.*\bb\b"):
        spec.build(frame)
    with pytest.raises(NdaeError, match=r"missing column\(s\) \['sex'\]"):
        spec.build(frame.assign(age=[30.0, 40.0]).drop(columns="sex"))
    with pytest.raises(NdaeError, match=r"'sex'.*\bb\b"):
        spec.build(frame.assign(age=[30.0, 40.0], sex=["M", "X"]))


def test_design_is_fixed_by_declaration_not_data():
    rng = np.random.default_rng(1)
    frame = synthetic_cohort(50, ["A"], rng)
    for spec in (DesignSpec(), DesignSpec(basis="polynomial", degree=3), DesignSpec(basis="linear")):
        full = spec.build(frame)
        assert full.shape == (50, spec.n_columns)
        np.testing.assert_array_equal(spec.build(frame.iloc[10:20]), full[10:20])
        assert np.linalg.matrix_rank(full) == spec.n_columns  # no column collinear with intercept
    # natural spline: linear beyond the boundary knots
    spec = DesignSpec(age_range=(20, 80))
    basis = spec.age_basis(np.array([80.0, 90.0, 100.0, 110.0]))
    np.testing.assert_allclose(np.diff(basis, 2, axis=0), 0, atol=1e-12)
    assert DesignSpec.from_dict(spec.to_dict()) == spec


# -- sufficient statistics --------------------------------------------------------------------


def test_summed_site_statistics_equal_the_pooled_fit(ixi_cohort):
    frame, Y = ixi_cohort
    controls = (frame["group"] == "control").to_numpy()
    pooled = NormativeModel().fit(frame[controls], Y[controls])

    per_site = []
    for site in ["A", "B", "C", "D"]:
        rows = controls & (frame["site"] == site).to_numpy()
        stats = SufficientStats.from_data(frame[rows], Y[rows])
        # the Flower payload round trip (D has no controls: an empty statistic)
        per_site.append(SufficientStats.from_arrays(stats.to_arrays()))
    assert per_site[3].n == 0
    assert "site_sum_y" not in per_site[0].to_arrays()  # derived from the intercept rows
    federated = NormativeModel.from_stats(sum(per_site))

    assert federated.site_names == ["A", "B", "C"]
    assert np.all(pooled.site_variance > 0)
    np.testing.assert_allclose(federated.coefficients, pooled.coefficients, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(federated.site_offset, pooled.site_offset, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        federated.residual_covariance, pooled.residual_covariance, rtol=1e-9, atol=1e-9
    )
    mean_p, var_p = pooled.predict(frame)  # all four sites, D falls back to the pooled model
    mean_f, var_f = federated.predict(frame)
    np.testing.assert_allclose(mean_f, mean_p, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(var_f, var_p, rtol=1e-9, atol=1e-12)
    # and a fit from the order-scrambled sum too
    scrambled = NormativeModel.from_stats(per_site[2] + per_site[0] + per_site[3] + per_site[1])
    np.testing.assert_allclose(scrambled.predict(frame)[0], mean_p, rtol=1e-9, atol=1e-9)


def test_statistics_refuse_different_designs_and_bad_payloads():
    rng = np.random.default_rng(2)
    frame = synthetic_cohort(30, ["A"], rng)
    Y = synthetic_latents(frame, rng, d=4)
    a = SufficientStats.from_data(frame, Y)
    b = SufficientStats.from_data(frame, Y, design=DesignSpec(basis="polynomial"))
    with pytest.raises(NdaeError, match="different designs"):
        a + b
    arrays = a.to_arrays()
    arrays["xty"] = arrays["xty"][:, :3]
    with pytest.raises(NdaeError, match="'xty'"):
        SufficientStats.from_arrays(arrays)
    assert all(v.dtype == np.float64 for k, v in a.to_arrays().items() if k not in ("site_names", "design"))


def test_without_site_effects_it_is_bayesian_ridge():
    rng = np.random.default_rng(3)
    frame = synthetic_cohort(200, ["A", "B"], rng)
    Y = synthetic_latents(frame, rng, d=5)
    model = NormativeModel(site_effects=False, prior_precision=1e-9).fit(frame, Y)
    X = DesignSpec().build(frame)
    beta, *_ = np.linalg.lstsq(X, Y, rcond=None)
    np.testing.assert_allclose(model.coefficients, beta, rtol=1e-6, atol=1e-8)
    residual = Y - X @ beta
    sigma2 = (residual**2).sum(0) / (len(X) - X.shape[1])
    leverage = np.einsum("np,pq,nq->n", X, np.linalg.inv(X.T @ X), X)
    _, variance = model.predict(frame)
    np.testing.assert_allclose(variance, sigma2 * (1 + leverage[:, None]), rtol=1e-6)


# -- site effects ------------------------------------------------------------------------------


def test_site_offsets_are_recovered():
    rng = np.random.default_rng(4)
    truth = {"A": -1.0, "B": -0.5, "C": 0.0, "D": 0.5, "E": 1.0}
    frame = synthetic_cohort(500, list(truth), rng)
    Y = synthetic_latents(frame, rng, site_offsets=truth, d=8)
    model = NormativeModel().fit(frame, Y)
    estimated = model.site_offsets.loc[list(truth)].to_numpy()  # (sites, features)
    expected = np.array(list(truth.values())) - np.mean(list(truth.values()))
    assert np.abs(estimated - expected[:, None]).max() < 0.2
    # τ² ≈ the variance of the offsets (0.5 for these five), σ² ≈ 0.25
    site_variance = model.site_variance * model.control_sd**2
    noise_variance = model.noise_variance * model.control_sd**2
    assert 0.15 < np.median(site_variance) < 1.5
    np.testing.assert_allclose(noise_variance, 0.25, rtol=0.2)


def test_site_without_controls_falls_back_to_the_pooled_model():
    rng = np.random.default_rng(5)
    truth = {"A": -1.0, "B": 0.0, "C": 1.0}
    frame = synthetic_cohort(300, list(truth), rng)
    model = NormativeModel().fit(frame, synthetic_latents(frame, rng, site_offsets=truth, d=4))
    probe = frame.iloc[:5].copy()
    no_site = probe.drop(columns="site")
    unseen = probe.assign(site="Z")
    known = probe.assign(site="C")
    np.testing.assert_array_equal(model.predict(unseen)[0], model.predict(no_site)[0])
    np.testing.assert_array_equal(model.predict(unseen)[1], model.predict(no_site)[1])
    # unseen site: wider (τ² added); known site C: shifted by its offset
    assert np.all(model.predict(unseen)[1] > model.predict(known)[1])
    shift = model.predict(known)[0] - model.predict(unseen)[0]
    np.testing.assert_allclose(shift, model.site_offsets.loc["C"].to_numpy()[None].repeat(5, 0))


def test_transfer_moves_a_new_site_toward_z_zero():
    rng = np.random.default_rng(6)
    truth = {"A": -1.0, "B": 0.0, "C": 1.0, "D": 0.5}
    frame = synthetic_cohort(400, list(truth), rng)
    model = NormativeModel().fit(frame, synthetic_latents(frame, rng, site_offsets=truth, d=8))

    new = synthetic_cohort(208, ["NEW"], rng, age=(25, 80))
    Y_new = synthetic_latents(new, rng, site_offsets={"NEW": 1.5}, d=8)
    adaptation, held_out = slice(0, 8), slice(8, None)
    before = model.z_scores(new.iloc[held_out], Y_new[held_out])
    adapted = model.transfer(new.iloc[adaptation], Y_new[adaptation])
    after = adapted.z_scores(new.iloc[held_out], Y_new[held_out])
    assert abs(before.mean()) > 1.0
    assert abs(after.mean()) < min(0.5, abs(before.mean()) / 3)
    assert 0.8 < after.std() < 1.25
    # the rest of the model is untouched
    np.testing.assert_array_equal(adapted.beta, model.beta)
    np.testing.assert_array_equal(adapted.predict(frame)[0], model.predict(frame)[0])
    assert "NEW" not in model.site_names and "NEW" in adapted.site_names


# -- persistence and warnings ------------------------------------------------------------------


def test_save_load_gives_identical_predictions(tmp_path):
    rng = np.random.default_rng(7)
    frame = synthetic_cohort(120, ["A", "B", "C"], rng)
    model = NormativeModel(design=DesignSpec(basis="polynomial", degree=3)).fit(
        frame, synthetic_latents(frame, rng, site_offsets={"A": 1.0}, d=6), [f"f{k}" for k in range(6)]
    )
    model.save(tmp_path / "normative")
    assert sorted(p.name for p in (tmp_path / "normative").iterdir()) == ["model.json", "model.npz"]
    loaded = NormativeModel.load(tmp_path / "normative")
    probe = pd.concat([frame, frame.iloc[:3].assign(site="unseen")])
    for a, b in zip(model.predict(probe), loaded.predict(probe)):
        np.testing.assert_array_equal(a, b)
    assert loaded.feature_names == [f"f{k}" for k in range(6)]
    assert loaded.design == model.design
    # a model.npz that does not belong to its model.json is refused
    other = NormativeModel().fit(frame, synthetic_latents(frame, rng, d=6))
    other.save(tmp_path / "other")
    (tmp_path / "normative" / "model.npz").write_bytes((tmp_path / "other" / "model.npz").read_bytes())
    with pytest.raises(NdaeError, match="sha256"):
        NormativeModel.load(tmp_path / "normative")


def test_predicting_outside_the_fitted_age_range_warns():
    rng = np.random.default_rng(8)
    frame = synthetic_cohort(80, ["A"], rng, age=(30, 60))
    model = NormativeModel().fit(frame, synthetic_latents(frame, rng, d=3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(frame)  # inside: silent
    with pytest.warns(OutOfRangeWarning, match=r"age outside .* fitted on \[30\.\d+, 59\.\d+\]"):
        model.predict(frame.iloc[:2].assign(age=[75.0, 40.0]))


def test_fit_refuses_too_few_controls():
    rng = np.random.default_rng(9)
    frame = synthetic_cohort(4, ["A"], rng)
    with pytest.raises(NdaeError, match="more controls than design columns"):
        NormativeModel().fit(frame, synthetic_latents(frame, rng, d=2))


def test_random_intercept_fit_matches_dense_gls_and_mixedlm():
    """β and the site offsets equal the textbook GLS/BLUP with V = σ²I + τ²ZZᵀ (at the fitted
    variances), and the variances are close to statsmodels' maximum-likelihood MixedLM."""
    import statsmodels.api as sm

    rng = np.random.default_rng(10)
    truth = {"A": -0.6, "B": 0.0, "C": 0.3, "D": 0.9, "E": -0.2}
    frame = synthetic_cohort(250, list(truth), rng)
    Y = synthetic_latents(frame, rng, site_offsets=truth, d=2)
    model = NormativeModel(prior_precision=1e-3).fit(frame, Y)
    X = DesignSpec().build(frame)
    Z = (frame["site"].to_numpy()[:, None] == np.array(model.site_names)[None]).astype(float)
    for f in range(2):
        y = model.standardise(Y)[:, f]
        sigma2, tau2 = model.noise_variance[f], model.site_variance[f]
        V_inverse = np.linalg.inv(sigma2 * np.eye(len(y)) + tau2 * Z @ Z.T)
        beta = np.linalg.solve(sigma2 * X.T @ V_inverse @ X + 1e-3 * np.eye(X.shape[1]), sigma2 * X.T @ V_inverse @ y)
        np.testing.assert_allclose(model.beta[f], beta, rtol=1e-8, atol=1e-10)
        offsets = tau2 * Z.T @ V_inverse @ (y - X @ beta)
        np.testing.assert_allclose(model.site_offset[:, f], offsets, rtol=1e-8, atol=1e-10)

        mixed = sm.MixedLM(y, X, groups=frame["site"].to_numpy()).fit(reml=False)
        assert sigma2 == pytest.approx(mixed.scale * len(y) / (len(y) - X.shape[1]), rel=0.01)
        assert tau2 == pytest.approx(float(np.asarray(mixed.cov_re).ravel()[0]), rel=0.01)
