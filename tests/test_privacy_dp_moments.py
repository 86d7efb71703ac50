"""Gaussian mechanism on sufficient statistics: exact at zero noise, calibrated otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from ndae.errors import NdaeError
from ndae.privacy.dp_moments import (
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
    assert release.covariate_rows_clipped == release.latent_rows_clipped == 0
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
    from ndae.privacy.dp_moments import privatize_arrays

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
