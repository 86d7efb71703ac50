"""Gaussian mechanism on sufficient statistics: exact at zero noise, calibrated otherwise; the
minimal release (`private_moments`), its sensitivity, post-processing and noise warnings."""

from __future__ import annotations

import numpy as np
import pytest

from ndae.errors import NdaeError
from ndae.privacy.gaussian_mechanism import (
    add_gaussian_noise, clip_rows, privatize_sufficient_stats, statistics_sensitivity,
    sufficient_stats_from_records,
)


def _records(n=200, p=3, d=8, seed=0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))])
    Y = rng.normal(size=(n, d))
    return X, Y


def test_zero_noise_gives_the_exact_statistics():
    X, Y = _records()
    release = privatize_sufficient_stats(X, Y, covariate_clip=100.0, latent_clip=100.0,
                                         noise_multiplier=0.0, rng=np.random.default_rng(1))
    exact = sufficient_stats_from_records(X, Y)
    for key, value in exact.items():
        np.testing.assert_array_equal(release.stats[key], value)
    np.testing.assert_allclose(release.stats["xtx"], X.T @ X)
    np.testing.assert_allclose(release.stats["sum_y2"], (Y ** 2).sum(0))
    tiny = privatize_sufficient_stats(X, Y, covariate_clip=100.0, latent_clip=100.0,
                                      noise_multiplier=1e-12, rng=np.random.default_rng(1))
    for key, value in exact.items():
        np.testing.assert_allclose(tiny.stats[key], value, rtol=1e-6, atol=1e-6)


def test_clipping_bounds_each_record():
    X, Y = _records()
    clipped, count = clip_rows(Y, 1.5)
    assert np.linalg.norm(clipped, axis=1).max() <= 1.5 + 1e-12
    assert count == int(np.sum(np.linalg.norm(Y, axis=1) > 1.5)) > 0
    small = np.linalg.norm(Y, axis=1) <= 1.5
    np.testing.assert_array_equal(clipped[small], Y[small])


def test_sensitivity_bounds_the_change_from_one_record():
    cx, cy = 2.0, 3.0
    X, Y = _records(n=50)
    Xc, _ = clip_rows(X, cx)
    Yc, _ = clip_rows(Y, cy)
    full = sufficient_stats_from_records(Xc, Yc)
    sensitivity = statistics_sensitivity(full, cx, cy)
    assert sensitivity == pytest.approx(np.sqrt(1 + cx**4 + cx**2 * cy**2 + cy**2 + cy**4))
    worst = 0.0
    for i in range(50):
        without = sufficient_stats_from_records(np.delete(Xc, i, 0), np.delete(Yc, i, 0))
        change = np.sqrt(sum(np.sum((full[k] - without[k]) ** 2) for k in full))
        worst = max(worst, change)
    assert worst <= sensitivity
    # a record exactly at both clip norms reaches the bound up to the y∘y term
    assert worst > 0.5 * sensitivity


def test_noise_scale_and_symmetry():
    X, Y = _records(n=100)
    release = privatize_sufficient_stats(X, Y, covariate_clip=3.0, latent_clip=4.0,
                                         noise_multiplier=0.5, rng=np.random.default_rng(7))
    exact = sufficient_stats_from_records(*[clip_rows(A, c)[0] for A, c in ((X, 3.0), (Y, 4.0))])
    noise = release.stats["xtx"] - exact["xtx"]
    np.testing.assert_array_equal(noise, noise.T)
    residuals = np.concatenate([(release.stats[k] - exact[k]).ravel() for k in ("xty", "sum_y", "sum_y2")])
    assert np.std(residuals) == pytest.approx(release.sigma, rel=0.25)
    assert release.sigma == pytest.approx(0.5 * release.sensitivity)
    event = release.event(round=3)
    assert event.step == (0.5, 1.0, 1) and event.clip == release.sensitivity
    again = privatize_sufficient_stats(X, Y, covariate_clip=3.0, latent_clip=4.0,
                                       noise_multiplier=0.5, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(again.stats["xty"], release.stats["xty"])  # seeded


def test_unknown_statistic_is_refused():
    with pytest.raises(NdaeError, match="'mystery'"):
        add_gaussian_noise({"mystery": np.zeros(3)}, 1.0, 1.0, np.random.default_rng(0))


def test_payload_with_public_keys_and_data_dependent_extras():
    from ndae.privacy.gaussian_mechanism import privatize_arrays

    X, Y = _records(n=30)
    Xc, Yc = clip_rows(X, 3.0)[0], clip_rows(Y, 2.0)[0]
    payload = {**sufficient_stats_from_records(Xc, Yc), "design": np.array('{"age": 1}'),
               "site_names": np.array(["site-a"])}
    release = privatize_arrays(payload, covariate_clip=3.0, latent_clip=2.0, noise_multiplier=0.0,
                               records=30, rng=np.random.default_rng(0))
    assert release.stats["design"] == payload["design"]
    np.testing.assert_array_equal(release.stats["xty"], payload["xty"])
    with pytest.raises(NdaeError, match="covariate_min"):
        privatize_arrays({**payload, "covariate_min": Xc.min(0)}, covariate_clip=3.0, latent_clip=2.0,
                         noise_multiplier=1.0, records=30, rng=np.random.default_rng(0))


# ---- the minimal release ---------------------------------------------------------------------------
import json  # noqa: E402

import pandas as pd  # noqa: E402

from ndae.normative import DesignSpec, NormativeModel, SufficientStats  # noqa: E402
from ndae.normative.design import clip_design_rows  # noqa: E402
from ndae.privacy.dp_moments import (  # noqa: E402
    BLOCKS, block_sensitivities, moments_noise_sd, moments_sensitivity, private_moments,
)
from ndae.privacy.moments_postprocessing import moments_noise_warnings, postprocess_noisy_stats  # noqa: E402

SITES = ("A", "B", "C")


def _cohort(n_per_site, rng, d=16):
    """z_sem-like latents (‖z‖ ≈ 2.6 for d = 64): shared mean, age and sex effects, site offsets."""
    weights = np.random.default_rng(99)
    base, w_age, w_sex = weights.normal(0, 0.27, d), weights.normal(0, 0.08, d), weights.normal(0, 0.04, d)
    offsets = weights.normal(0, 0.04, (len(SITES), d))
    frames, latents = [], []
    for s, site in enumerate(SITES):
        age = rng.uniform(20, 85, n_per_site)
        female = rng.random(n_per_site) < 0.5
        Y = base + np.outer((age - 52) / 20, w_age) + np.outer(female, w_sex) + offsets[s] + rng.normal(0, 0.15, (n_per_site, d))
        frames.append(pd.DataFrame({"age": age, "sex": np.where(female, "F", "M"), "site": site}))
        latents.append(Y)
    return pd.concat(frames, ignore_index=True), np.vstack(latents)


def _public(spec, site):
    return {"design": np.array(json.dumps(spec.to_dict(), sort_keys=True)), "site_names": np.array([site]),
            "covariate_min": np.array([spec.age_range[0]]), "covariate_max": np.array([spec.age_range[1]])}


def _releases(frame, Y, spec, m, seed, **options):
    options = {"covariate_clip": 2.5, "latent_clip": 3.0, **options}
    out = {}
    for i, site in enumerate(SITES):
        rows = (frame["site"] == site).to_numpy()
        out[site] = private_moments(spec.build(frame[rows]), Y[rows], noise_multiplier=m,
                                    rng=np.random.default_rng([seed, i]), public=_public(spec, site), **options).stats
    return out


def test_minimal_release_sums_to_the_pooled_statistics_and_fit():
    rng = np.random.default_rng(0)
    frame, Y = _cohort(40, rng)
    spec = DesignSpec()
    releases = _releases(frame, Y, spec, 0.0, 1, covariate_clip=1e6, latent_clip=1e6)
    assert set(releases["A"]) == {"xtx", "xty", "yty", "covariate_clip", "latent_clip", "dp_noise_variance",
                                  "design", "site_names", "covariate_min", "covariate_max"}
    summed = sum(SufficientStats.from_arrays(arrays) for arrays in releases.values())
    pooled = SufficientStats.from_data(frame, Y, spec)
    for key in ("n", "xtx", "xty", "sum_y", "sum_y2", "yty", "site_n", "site_sum_x", "site_sum_y"):
        np.testing.assert_allclose(getattr(summed, key), getattr(pooled, key), rtol=1e-10, atol=1e-10, err_msg=key)
    assert summed.site_names == pooled.site_names
    fitted, exact = NormativeModel.from_stats(summed), NormativeModel().fit(frame, Y)
    np.testing.assert_allclose(fitted.coefficients, exact.coefficients, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fitted.residual_covariance, exact.residual_covariance, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fitted.predict(frame)[1], exact.predict(frame)[1], rtol=1e-10)
    # the diagonal variant: ΣY² instead of YᵀY, no cross-products
    diagonal = _releases(frame, Y, spec, 0.0, 1, covariate_clip=1e6, latent_clip=1e6, cross_products=False)
    assert "yty" not in diagonal["A"] and "sum_y2" in diagonal["A"]
    summed = sum(SufficientStats.from_arrays(arrays) for arrays in diagonal.values())
    np.testing.assert_allclose(summed.sum_y2, pooled.sum_y2, rtol=1e-10)
    assert summed.yty is None


def _released_change(x, y):
    """L2 norm of the released coordinates one record adds (symmetric blocks: upper triangle)."""
    iu = np.triu_indices(len(x))
    ju = np.triu_indices(len(y))
    return float(np.sqrt(np.sum(np.outer(x, x)[iu] ** 2) + np.sum(np.outer(x, y) ** 2) + np.sum(np.outer(y, y)[ju] ** 2)))


def test_minimal_sensitivity_is_below_the_old_one_and_is_the_worst_case():
    cx, cy = 2.5, 3.0
    sensitivity = moments_sensitivity(cx, cy)
    old = statistics_sensitivity(("n", "xtx", "xty", "sum_y", "sum_y2", "yty"), cx, cy)
    assert sensitivity**2 == pytest.approx(cx**4 + cx**2 * cy**2 + cy**4)
    assert sensitivity**2 < 177 < 267 < old**2
    rng = np.random.default_rng(3)
    p, d = 5, 16
    worst = 0.0
    for _ in range(3000):  # random records on the clip boundary, and clipped design rows
        x = rng.normal(size=p) * rng.exponential(1.0, p)
        y = rng.normal(size=d) * rng.exponential(1.0, d)
        x, y = cx * x / np.linalg.norm(x), cy * y / np.linalg.norm(y)
        worst = max(worst, _released_change(x, y))
        design = clip_design_rows(np.concatenate([[1.0], rng.normal(0, 5, p - 1)])[None], cx)[0]
        assert np.linalg.norm(design) <= cx + 1e-12 and design[0] == 1.0
        worst = max(worst, _released_change(design, y))
    assert worst <= sensitivity + 1e-12
    # the bound is attained: x and y along one axis each
    axis_x, axis_y = np.eye(p)[1] * cx, np.eye(d)[2] * cy
    assert _released_change(axis_x, axis_y) == pytest.approx(sensitivity, rel=1e-12)
    assert worst > 0.9 * sensitivity
    # and, released: removing that record from a site changes the exact statistics by exactly Δ
    X = np.column_stack([np.ones(20), rng.normal(0, 0.3, (20, p - 1))])
    Y = rng.normal(0, 0.3, (20, d))
    spec_public = _public(DesignSpec(), "A")
    full = private_moments(np.vstack([X, np.r_[1.0, 0, 0, 0, 0]]), np.vstack([Y, axis_y]), covariate_clip=1.0 + 1e-9,
                           latent_clip=cy, noise_multiplier=0.0, rng=rng, public=spec_public).stats
    without = private_moments(X, Y, covariate_clip=1.0 + 1e-9, latent_clip=cy, noise_multiplier=0.0, rng=rng,
                              public=spec_public).stats
    change = np.sqrt(sum(np.sum(np.triu(full[k] - without[k]) ** 2) if k != "xty" else np.sum((full[k] - without[k]) ** 2)
                         for k in BLOCKS))
    assert change <= moments_sensitivity(1.0 + 1e-9, cy) + 1e-9


def test_noise_split_is_one_gaussian_mechanism_with_the_noise_multiplier():
    cx, cy, m = 2.5, 3.0, 1.7
    bounds = block_sensitivities(cx, cy)
    for split in (None, "uniform", {"xtx": 1.0, "xty": 1.0, "yty": 1.0}):
        sigma = moments_noise_sd(cx, cy, m, split)
        # Σ_k (Δ_k / σ_k)² = 1/m²: the whitened release has sensitivity 1/m at unit noise
        assert sum((bounds[k] / sigma[k]) ** 2 for k in BLOCKS) == pytest.approx(1 / m**2)
    uniform = moments_noise_sd(cx, cy, m, "uniform")
    assert all(v == pytest.approx(m * moments_sensitivity(cx, cy)) for v in uniform.values())
    with pytest.raises(NdaeError, match="split"):
        moments_noise_sd(cx, cy, m, {"xtx": 1.0, "xty": 0.0, "yty": 1.0})


def test_noise_comes_from_the_passed_generator():
    rng = np.random.default_rng(4)
    frame, Y = _cohort(30, rng)
    spec = DesignSpec()
    X = spec.build(frame)

    def release(generator):
        return private_moments(X, Y, covariate_clip=2.5, latent_clip=3.0, noise_multiplier=1.0, rng=generator,
                               public=_public(spec, "A"))

    a, b, c = release(np.random.default_rng(11)), release(np.random.default_rng(11)), release(np.random.default_rng(12))
    exact = private_moments(X, Y, covariate_clip=2.5, latent_clip=3.0, noise_multiplier=0.0,
                            rng=np.random.default_rng(0), public=_public(spec, "A")).stats
    for key in BLOCKS:
        np.testing.assert_array_equal(a.stats[key], b.stats[key])
        assert not np.allclose(a.stats[key], c.stats[key])
        assert not np.allclose(a.stats[key], exact[key])
    for key in ("xtx", "yty"):
        np.testing.assert_array_equal(a.stats[key], a.stats[key].T)
    # noise of the stated sd per block
    noise = (a.stats["xty"] - exact["xty"]).ravel()
    assert np.std(noise) == pytest.approx(a.block_sigma["xty"], rel=0.25)
    np.testing.assert_allclose(a.stats["dp_noise_variance"], [a.block_sigma[k] ** 2 for k in BLOCKS])
    event = a.event(run="r1")
    assert event.step == (1.0, 1.0, 1) and event.clip == pytest.approx(moments_sensitivity(2.5, 3.0))


def test_no_clipped_counts_and_no_data_dependent_public_fields():
    rng = np.random.default_rng(5)
    frame, Y = _cohort(30, rng)
    spec = DesignSpec()
    release = private_moments(spec.build(frame), 10 * Y, covariate_clip=2.0, latent_clip=1.0, noise_multiplier=1.0,
                              rng=rng, public=_public(spec, "A"))
    assert not any("clipped" in key for key in release.stats)
    assert not any("clipped" in name for name in vars(release))
    with pytest.raises(NdaeError, match="clipped"):
        release.event(latent_rows_clipped=30)
    observed = {**_public(spec, "A"), "covariate_min": np.array([frame["age"].min()])}
    with pytest.raises(NdaeError, match="covariate_min"):
        private_moments(spec.build(frame), Y, covariate_clip=2.0, latent_clip=1.0, noise_multiplier=1.0, rng=rng,
                        public=observed)
    with pytest.raises(NdaeError, match="'n'"):
        private_moments(spec.build(frame), Y, covariate_clip=2.0, latent_clip=1.0, noise_multiplier=1.0, rng=rng,
                        public={**_public(spec, "A"), "n": np.asarray(30.0)})


def _noise_multiplier(epsilon):
    from ndae.privacy.accountant import epsilon_of
    from ndae.privacy.delta import DEFAULT_DELTA

    low, high = 0.05, 100.0
    for _ in range(50):
        middle = (low * high) ** 0.5
        low, high = (middle, high) if epsilon_of([(middle, 1.0, 1)], DEFAULT_DELTA) > epsilon else (low, middle)
    return high


def test_noise_warning_fires_for_small_sites_at_small_epsilon_only():
    rng = np.random.default_rng(6)
    spec = DesignSpec()
    small, Y_small = _cohort(30, rng, d=64)
    large, Y_large = _cohort(1000, rng, d=64)
    noisy = _releases(small, Y_small, spec, _noise_multiplier(1.0), 7)
    lines = moments_noise_warnings(noisy)
    assert len(lines) == 3 and all("swamps" in line for line in lines)
    assert "'A'" in lines[0]
    assert moments_noise_warnings(_releases(large, Y_large, spec, _noise_multiplier(8.0), 8)) == []
    # an explicit noise sd (per site or one number) overrides the payload's
    assert len(moments_noise_warnings(_releases(large, Y_large, spec, _noise_multiplier(8.0), 8), noise_sd=1e6)) == 3


def test_postprocessed_noisy_statistics_fit_a_usable_model():
    rng = np.random.default_rng(9)
    spec = DesignSpec()
    frame, Y = _cohort(1000, rng, d=64)
    exact = NormativeModel().fit(frame, Y)
    stats = sum(SufficientStats.from_arrays(a) for a in _releases(frame, Y, spec, _noise_multiplier(8.0), 10).values())
    assert stats.dp_noise_variance is not None and stats.latent_clip == 3.0
    processed = postprocess_noisy_stats(stats)
    assert np.linalg.eigvalsh(processed.xtx).min() > 0 and np.linalg.eigvalsh(processed.yty).min() > 0
    np.testing.assert_allclose(np.diag(processed.yty), processed.sum_y2)
    model = NormativeModel.from_stats(processed, site_effects=False)
    grid = pd.DataFrame({"age": np.linspace(20, 85, 14), "sex": "F", "site": "A"})
    ratio = np.sqrt(model.predict(grid)[1] / exact.predict(grid)[1])
    assert 0.6 < np.exp(np.mean(np.log(ratio))) < 1.5  # the old post-processing: ~0.02-0.4
    assert np.corrcoef(model.predict(grid)[0].ravel(), exact.predict(grid)[0].ravel())[0, 1] > 0.9
