"""Deviation scores: the paper's cosine (and the centred variant), z summaries, federatable Mahalanobis, the CSV table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.covariance import oas

from ndae.deviation.scores import (
    SCORE_COLUMNS,
    centred_cosine,
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


def test_paper_cosine_by_hand_for_a_known_model():
    """Two latent dimensions with known means and sds: the paper's cosine is the cosine of z_sem and
    the normative expected z_sem, each divided by the controls' sd, the shared mean kept."""
    rng = np.random.default_rng(5)
    n = 4000
    frame = pd.DataFrame({"subject": [f"c{i}" for i in range(n)], "age": rng.uniform(30, 70, n),
                          "sex": rng.choice(["M", "F"], n), "site": "A"})
    # dimension 0: mean 10, sd 1, no covariate effect; dimension 1: mean 0 at age 50, +1 per 10 years
    age_effect = (frame["age"].to_numpy() - 50) / 10
    Y = np.column_stack([10 + rng.normal(0, 1, n), age_effect + rng.normal(0, 0.5, n)])
    model = NormativeModel(site_effects=False, prior_precision=1e-9).fit(frame, Y)
    probe = pd.DataFrame({"subject": ["p"], "age": [65.0], "sex": ["M"], "site": ["A"]})
    expected = model.predict(probe)[0][0]
    np.testing.assert_allclose(expected, [10.0, 1.5], atol=0.2)  # the model is the one we built
    z = np.array([[10.0, -1.5]])  # at 65 the latent of a 35-year-old
    sd = model.control_sd
    a, b = z[0] / sd, expected / sd
    by_hand = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert normative_cosine(model, probe, z)[0] == pytest.approx(by_hand, abs=1e-12)
    table = deviation_table(["p"], probe, z, model)
    assert table["cosine"].iloc[0] == pytest.approx(by_hand, abs=1e-12)
    # the old, centred variant is another number, kept under its own name
    centred = centred_cosine(model, probe, z)[0]
    assert table["cosine_centred"].iloc[0] == pytest.approx(centred, abs=1e-12)
    assert abs(centred - by_hand) > 0.5


def test_centred_cosine_moves_with_age_and_the_paper_cosine_does_not(fitted):
    """Why the centred cosine was replaced: centring leaves the expectation only its covariate effect, so for
    healthy subjects the centred cosine grows with |age − mean age| (how well the subject's
    deviation lines up with the age direction). The paper's cosine asks how far the latent turns
    from its own expectation, which healthy subjects of every age do alike."""
    from scipy.stats import spearmanr

    model, (controls, Y_c), _ = fitted
    distance = np.abs(controls["age"].to_numpy() - 52)
    centred = spearmanr(centred_cosine(model, controls, Y_c), distance)[0]
    paper = spearmanr(normative_cosine(model, controls, Y_c), distance)[0]
    assert centred > 0.5, centred
    assert abs(paper) < 0.2, paper


def test_paper_cosine_separates_patients_and_ignores_units(fitted):
    model, (controls, Y_c), (patients, Y_p) = fitted
    cos_c = normative_cosine(model, controls, Y_c)
    cos_p = normative_cosine(model, patients, Y_p)
    assert (cos_c[:, None] > cos_p[None, :]).mean() > 0.75  # AUC, controls vs patients
    # own-age expectation vs one 30 years away: the own one is closer for most controls
    older = controls.assign(age=np.where(controls["age"] < 52, controls["age"] + 30, controls["age"] - 30))
    assert (cos_c > normative_cosine(model, older, Y_c)).mean() > 0.8
    # the sd division: a dimension in other units (×1000) changes nothing
    rng = np.random.default_rng(0)
    train, Y_train = latent_cohort(400, rng)
    units = np.ones(D)
    units[0] = 1000.0
    rescaled = NormativeModel().fit(train, Y_train * units)
    np.testing.assert_allclose(normative_cosine(rescaled, controls, Y_c * units), cos_c, rtol=1e-9, atol=1e-12)


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
    # the table's cosine is the paper's, at sites with and without controls
    np.testing.assert_allclose(table["cosine"], normative_cosine(model, probe, Y_c[:10]), rtol=1e-12)
    np.testing.assert_allclose(table["cosine_centred"], centred_cosine(model, probe, Y_c[:10]), rtol=1e-12)
    assert list(table.columns[: 1 + len(SCORE_COLUMNS)]) == ["subject", *SCORE_COLUMNS]
    assert list(table["subject"]) == list(probe["subject"])
    assert table.shape == (10, 1 + len(SCORE_COLUMNS) + D)
    assert table.drop(columns="subject").notna().all().all()
    z = model.z_scores(probe, Y_c[:10])
    np.testing.assert_allclose(table[[f"z_z_sem_{k}" for k in range(D)]].to_numpy(), z)
