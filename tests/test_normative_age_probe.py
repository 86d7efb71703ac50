"""The age probe computed from the sites' sufficient statistics equals the same probe run on the
rows, and it tells a latent that carries age from one that does not."""

import numpy as np
import pandas as pd
import pytest

from ndae.normative import DesignSpec, SufficientStats
from ndae.normative.age_probe import ALPHAS, site_out_age_probe


def _sites(signal: float, seed: int = 0, d: int = 6, sizes=(30, 25, 35)):
    rng = np.random.default_rng(seed)
    frames, latents = {}, {}
    for k, n in enumerate(sizes):
        site = f"site{k + 1}"
        age = rng.uniform(20 + 5 * k, 80, n)  # the sites' age ranges differ
        frame = pd.DataFrame({"subject": [f"{site}-{i}" for i in range(n)], "site": site, "age": age,
                              "sex": rng.choice(["F", "M"], n)})
        direction = np.linspace(1.0, -0.5, d)
        z = 5.0 + signal * np.outer((age - 50) / 15, direction) + rng.normal(0, 1, (n, d)) + 0.3 * k
        frames[site], latents[site] = frame, z
    return frames, latents


def _stats(frames, latents):
    return {s: SufficientStats.from_data(frames[s], latents[s], DesignSpec(), site_column="site") for s in frames}


def _probe_on_rows(frames, latents):
    """The same probe on the rows: standardise on the training sites, alpha by GCV with the explicit
    hat matrix, fit with scikit-learn's Ridge, predict the held-out site."""
    from sklearn.linear_model import Ridge

    predictions, truth = [], []
    for held in frames:
        train = [s for s in frames if s != held]
        Z = np.vstack([latents[s] for s in train])
        a = np.concatenate([frames[s]["age"].to_numpy() for s in train])
        mean, sd = Z.mean(0), Z.std(0)
        Zs = (Z - mean) / sd
        centred = a - a.mean()
        best = None
        for alpha in ALPHAS:
            H = Zs @ np.linalg.solve(Zs.T @ Zs + alpha * np.eye(Z.shape[1]), Zs.T)
            rss = float(np.sum(((np.eye(len(a)) - H) @ centred) ** 2))
            gcv = len(a) * rss / (len(a) - np.trace(H) - 1) ** 2
            if best is None or gcv < best[0]:
                best = (gcv, alpha)
        model = Ridge(alpha=best[1]).fit(Zs, a)
        predictions.append(model.predict((latents[held] - mean) / sd))
        truth.append(frames[held]["age"].to_numpy())
    p, t = np.concatenate(predictions), np.concatenate(truth)
    return np.corrcoef(p, t)[0, 1], np.sqrt(np.mean((p - t) ** 2))


@pytest.mark.parametrize("signal", [0.0, 0.6])
def test_probe_from_statistics_equals_the_probe_on_the_rows(signal):
    frames, latents = _sites(signal)
    probe = site_out_age_probe(_stats(frames, latents))
    r, rmse = _probe_on_rows(frames, latents)
    assert probe["r"] == pytest.approx(r, abs=1e-8)
    assert probe["rmse"] == pytest.approx(rmse, rel=1e-8)
    assert probe["n_controls"] == 90


def test_probe_tells_a_latent_with_age_from_one_without():
    with_age = site_out_age_probe(_stats(*_sites(0.6, seed=1)))  # r 0.68 measured
    without = site_out_age_probe(_stats(*_sites(0.0, seed=1)))  # r -0.10
    assert with_age["r"] > 0.5 and with_age["rmse"] < 0.8 * with_age["mean_rmse"]
    assert abs(without["r"]) < 0.35 and without["rmse"] >= 0.95 * without["mean_rmse"]


def test_probe_says_why_it_is_not_computed():
    frames, latents = _sites(0.6, sizes=(30,))
    assert "two sites" in site_out_age_probe(_stats(frames, latents))["not_computed"]
    frames, latents = _sites(0.6, sizes=(6, 6))
    assert "fewer than" in site_out_age_probe(_stats(frames, latents))["not_computed"]
