"""Calibration metrics on held-out controls (PCNtoolkit's definitions)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ndae.normative.calibration import calibration_summary, calibration_table
from ndae.normative.model import NormativeModel


def well_specified(n, rng, d=6, site_offsets=None, age=(22, 85)):
    """y = smooth(age) + sex + site + N(0, 1): the model family contains the truth."""
    frame = pd.DataFrame(
        {"age": rng.uniform(*age, n), "sex": rng.choice(["M", "F"], n), "site": rng.choice(["A", "B", "C", "D"], n)}
    )
    weights = np.random.default_rng(99).normal(0, 1, (3, d))
    scaled = (frame["age"].to_numpy() - 50) / 20
    female = (frame["sex"] == "F").to_numpy(float)
    Y = 5 + np.outer(scaled, weights[0]) + 0.4 * np.outer(scaled**2, weights[1]) + np.outer(female, weights[2])
    if site_offsets:
        Y += np.array([site_offsets[s] for s in frame["site"]])[:, None]
    return frame, Y + rng.normal(0, 1, Y.shape)


def test_held_out_controls_are_calibrated():
    rng = np.random.default_rng(0)
    offsets = {"A": -0.8, "B": 0.0, "C": 0.4, "D": 0.8}
    train, Y_train = well_specified(800, rng, site_offsets=offsets)
    test, Y_test = well_specified(2000, rng, site_offsets=offsets, age=(25, 80))
    model = NormativeModel().fit(train, Y_train)
    table = calibration_table(model, test, Y_test)
    summary = calibration_summary(table)
    assert list(table["feature"]) == model.feature_names
    assert abs(summary["mean_z_mean"]) < 0.05
    assert abs(summary["mean_z_sd"] - 1) < 0.05
    assert abs(summary["mean_coverage_95"] - 0.95) < 0.015
    assert summary["min_coverage_95"] > 0.92
    # the noise is N(0, 1): SMSE ≈ 1 / var(y), and the model beats the trivial Gaussian
    expected_smse = 1 / Y_test.var(0)
    np.testing.assert_allclose(table["smse"], expected_smse, rtol=0.1)
    np.testing.assert_allclose(table["explained_variance"], 1 - table["smse"], atol=0.02)
    assert (table["msll"] < 0).all()
    assert (table["rho"] > 0.5).all()


def test_a_shifted_test_set_is_flagged():
    rng = np.random.default_rng(1)
    train, Y_train = well_specified(500, rng)
    test, Y_test = well_specified(1000, rng, age=(25, 80))
    model = NormativeModel().fit(train, Y_train)
    good = calibration_summary(calibration_table(model, test, Y_test))
    bad = calibration_summary(calibration_table(model, test, Y_test + 2.0))
    assert bad["mean_z_mean"] > 1.5
    assert bad["mean_coverage_95"] < 0.6 < good["mean_coverage_95"]
    assert bad["mean_msll"] > good["mean_msll"] + 0.5
    assert bad["mean_smse"] > good["mean_smse"]
