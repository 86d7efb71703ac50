"""Deviation scores: standardised cosine, z summaries, federatable Mahalanobis, the CSV table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.covariance import oas

from ndae.deviation.scores import (
    SCORE_COLUMNS,
    cosine_similarity,
    deviation_table,
    normative_cosine,
    oas_shrinkage,
    residual_covariance,
    z_summaries,
)
from ndae.normative.design import DesignSpec
from ndae.normative.model import NormativeModel

D = 16


def latent_cohort(n, rng, shared_mean=50.0, age=(20, 85)):
    """z_sem-like latents: a large shared mean (raw cosine ≈ 1 for everyone), a strong age
    effect, correlated noise."""
    fixed = np.random.default_rng(2024)
    base = shared_mean + fixed.normal(0, 1, D)
    w_age = fixed.normal(0, 1, D)
    mixing = fixed.normal(0, 1, (D, D)) / np.sqrt(D)
    frame = pd.DataFrame(
        {"subject": [f"s{i}" for i in range(n)], "age": rng.uniform(*age, n), "sex": rng.choice(["M", "F"], n),
         "site": rng.choice(["A", "B"], n)}
    )
    scaled = (frame["age"].to_numpy() - 52) / 18
    Y = base + 0.5 * np.outer(scaled, w_age) + 0.3 * rng.normal(0, 1, (n, D)) @ mixing
    return frame, Y


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    train, Y_train = latent_cohort(400, rng)
    model = NormativeModel().fit(train, Y_train)
    controls, Y_controls = latent_cohort(200, rng, age=(25, 80))
    patients, Y_patients = latent_cohort(200, rng, age=(25, 80))
    # 'patients': a strong shift along a direction in latent space (e.g. atrophy)
    direction = np.random.default_rng(7).normal(0, 1, D)
    Y_patients = Y_patients + 2.5 * direction / np.linalg.norm(direction) * np.sqrt(D) * 0.3
    return model, (controls, Y_controls), (patients, Y_patients)


def test_cosine_needs_standardisation_and_separates_patients(fitted):
    model, (controls, Y_c), (patients, Y_p) = fitted
    expected_c, _ = model.predict(controls)
    expected_p, _ = model.predict(patients)
    raw_c = cosine_similarity(Y_c, expected_c)
    raw_p = cosine_similarity(Y_p, expected_p)
    assert raw_c.min() > 0.99 and raw_p.min() > 0.99  # raw latents: no dynamic range at all
    cos_c = normative_cosine(model, controls, Y_c)
    cos_p = normative_cosine(model, patients, Y_p)
    assert cos_c.mean() > cos_p.mean() + 0.2
    assert (cos_c[:, None] > cos_p[None, :]).mean() > 0.75  # AUC, controls vs patients


def test_standardised_cosine_tracks_age_and_ignores_the_shared_mean(fitted):
    """As in the latent study: own-age normative latent vs one 30 years away."""
    model, (controls, Y_c), _ = fitted
    older = controls.assign(age=np.where(controls["age"] < 52, controls["age"] + 30, controls["age"] - 30))
    own = normative_cosine(model, controls, Y_c)
    away = cosine_similarity(model.standardise(Y_c), model.predict_standardised(older)[0])
    assert own.mean() > 0.3 > 0 > away.mean()
    raw_away = cosine_similarity(Y_c, model.predict(older)[0])
    assert raw_away.min() > 0.99  # the raw cosine cannot tell the two apart on its scale
    # moving the latent's shared mean changes raw cosines, not the standardised score
    rng = np.random.default_rng(0)
    train, Y_train = latent_cohort(400, rng)
    shifted = NormativeModel().fit(train, Y_train + 200.0)
    np.testing.assert_allclose(normative_cosine(shifted, controls, Y_c + 200.0), own, atol=1e-6)
    raw_shifted = cosine_similarity(Y_c + 200.0, shifted.predict(controls)[0])
    expected_c, _ = model.predict(controls)
    raw = cosine_similarity(Y_c, expected_c)
    assert (1 - raw_shifted).mean() < 0.2 * (1 - raw).mean()  # raw 'deviation' shrinks ~25×


def test_mahalanobis_is_larger_for_shifted_subjects(fitted):
    model, (controls, Y_c), (patients, Y_p) = fitted
    table_c = deviation_table(controls["subject"], controls, Y_c, model)
    table_p = deviation_table(patients["subject"], patients, Y_p, model)
    assert table_p["mahalanobis"].median() > 2 * table_c["mahalanobis"].median()
    # for controls, squared distance ≈ d on average (shrinkage keeps it close)
    assert 0.7 * D < (table_c["mahalanobis"] ** 2).mean() < 1.4 * D
    assert table_p["mean_abs_z"].mean() > table_c["mean_abs_z"].mean()


def test_residual_covariance_from_statistics_matches_sklearn_oas():
    rng = np.random.default_rng(3)
    frame, Y = latent_cohort(300, rng)
    model = NormativeModel(site_effects=False, prior_precision=1e-12).fit(frame, Y)
    X = DesignSpec().build(frame)
    beta, *_ = np.linalg.lstsq(X, model.standardise(Y), rcond=None)
    residual = model.standardise(Y) - X @ beta
    n, p = X.shape
    np.testing.assert_allclose(model.residual_covariance, residual.T @ residual / (n - p), rtol=1e-6, atol=1e-9)
    ours, shrinkage = residual_covariance(model)
    theirs, their_shrinkage = oas(residual, assume_centered=True)
    assert shrinkage == pytest.approx(their_shrinkage, rel=1e-6)
    np.testing.assert_allclose(ours, theirs * n / (n - p), rtol=1e-6, atol=1e-9)
    assert oas_shrinkage(np.eye(3), 10)[1] == 1.0


def test_z_summaries_on_a_toy():
    z = np.array([[0.5, -3.0, 2.5], [0.0, 0.0, 1.0]])
    table = z_summaries(z)
    np.testing.assert_allclose(table["mean_abs_z"], [2.0, 1 / 3])
    np.testing.assert_allclose(table["max_abs_z"], [3.0, 1.0])
    assert list(table["count_abs_z_gt_2"]) == [2, 0]


def test_deviation_table_contract(fitted):
    model, (controls, Y_c), _ = fitted
    probe = controls.iloc[:10].copy()
    probe.loc[probe.index[:3], "site"] = "no-controls-site"
    table = deviation_table(probe["subject"], probe, Y_c[:10], model, include_z=True)
    assert list(table.columns[: 1 + len(SCORE_COLUMNS)]) == ["subject", *SCORE_COLUMNS]
    assert list(table["subject"]) == list(probe["subject"])
    assert table.shape == (10, 1 + len(SCORE_COLUMNS) + D)
    assert table.drop(columns="subject").notna().all().all()
    z = model.z_scores(probe, Y_c[:10])
    np.testing.assert_allclose(table[[f"z_z_sem_{k}" for k in range(D)]].to_numpy(), z)
