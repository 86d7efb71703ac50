"""A normative model fitted on DP statistics clips everyone it scores like its controls; a plain
model clips no one. The clips travel with the statistics, the saved model and the Flower message."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from ndae.deviation.scores import deviation_table, mahalanobis, normative_cosine
from ndae.errors import NdaeError
from ndae.normative import DesignSpec, NormativeModel, SufficientStats
from ndae.normative.design import clip_design_rows
from ndae.privacy.dp_moments import private_moments

D = 8
COVARIATE_CLIP, LATENT_CLIP = 2.0, 1.0


def _cohort(n, rng, sites=("A", "B")):
    frame = pd.DataFrame({"subject": [f"s{i}" for i in range(n)], "age": rng.uniform(20, 85, n),
                          "sex": rng.choice(["M", "F"], n), "site": rng.choice(sites, n)})
    Y = 0.3 + 0.1 * np.outer((frame["age"] - 50) / 20, np.linspace(-1, 1, D)) + rng.normal(0, 0.1, (n, D))
    return frame, Y


def _dp_model(frame, Y, noise_multiplier=0.0):
    spec = DesignSpec()
    stats = []
    for site in sorted(set(frame["site"])):
        rows = (frame["site"] == site).to_numpy()
        public = {"design": np.array(json.dumps(spec.to_dict(), sort_keys=True)), "site_names": np.array([site]),
                  "covariate_min": np.array([spec.age_range[0]]), "covariate_max": np.array([spec.age_range[1]])}
        stats.append(SufficientStats.from_arrays(private_moments(
            spec.build(frame[rows]), Y[rows], covariate_clip=COVARIATE_CLIP, latent_clip=LATENT_CLIP,
            noise_multiplier=noise_multiplier, rng=np.random.default_rng(0), public=public).stats))
    return NormativeModel.from_stats(sum(stats))


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    frame, Y = _cohort(300, rng)
    patients, Y_patients = _cohort(20, rng)
    Y_patients = Y_patients * 6.0  # far outside the latent clip (controls' ‖z‖ ≈ 0.9)
    patients.loc[:3, "age"] = [18.0, 89.0, 90.0, 25.0]  # design rows beyond the covariate clip
    return frame, Y, patients, Y_patients


def _clipped(Y, clip):
    norms = np.linalg.norm(Y, axis=1, keepdims=True)
    return Y * np.minimum(1.0, clip / norms)


def test_patients_are_clipped_like_controls_under_a_dp_model(fitted):
    frame, Y, patients, Y_patients = fitted
    model = _dp_model(frame, Y)
    assert (model.covariate_clip, model.latent_clip) == (COVARIATE_CLIP, LATENT_CLIP)
    assert (np.linalg.norm(Y_patients, axis=1) > LATENT_CLIP).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = deviation_table(patients["subject"], patients, Y_patients, model, include_z=True)
        same = deviation_table(patients["subject"], patients, _clipped(Y_patients, LATENT_CLIP), model, include_z=True)
        pd.testing.assert_frame_equal(table, same)
        np.testing.assert_allclose(model.z_scores(patients, Y_patients), model.z_scores(patients, _clipped(Y_patients, 1.0)))
        np.testing.assert_allclose(mahalanobis(model, patients, Y_patients), table["mahalanobis"])
        np.testing.assert_allclose(normative_cosine(model, patients, Y_patients), table["cosine"])
        # design rows: clipped keeping the intercept, as the controls' rows were
        X = DesignSpec().build(patients)
        assert (np.linalg.norm(X[:3], axis=1) > COVARIATE_CLIP).all()
        np.testing.assert_allclose(model.design_matrix(patients), clip_design_rows(X, COVARIATE_CLIP))
        assert np.linalg.norm(model.design_matrix(patients), axis=1).max() <= COVARIATE_CLIP + 1e-12
        mean, _ = model.predict_standardised(patients)
        np.testing.assert_allclose(mean, model.design_matrix(patients) @ model.beta.T
                                   + model.site_offset[model.site_index(patients)])


def test_a_plain_model_clips_no_one(fitted):
    frame, Y, patients, Y_patients = fitted
    model = NormativeModel().fit(frame, Y)
    assert model.covariate_clip is None and model.latent_clip is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = deviation_table(patients["subject"], patients, Y_patients, model)
        clipped = deviation_table(patients["subject"], patients, _clipped(Y_patients, LATENT_CLIP), model)
        assert not np.allclose(table["mahalanobis"], clipped["mahalanobis"])
        np.testing.assert_array_equal(model.standardise(Y_patients), (Y_patients - model.control_mean) / model.control_sd)
        np.testing.assert_array_equal(model.design_matrix(patients), DesignSpec().build(patients))


def test_clips_survive_save_load_and_the_federation_message(fitted, tmp_path):
    from ndae.federation.records import config_to_normative, normative_to_config

    frame, Y, patients, Y_patients = fitted
    model = _dp_model(frame, Y, noise_multiplier=0.5)
    loaded = NormativeModel.load(model.save(tmp_path / "normative"))
    carried = config_to_normative(normative_to_config(model))
    plain = config_to_normative(normative_to_config(NormativeModel().fit(frame, Y)))
    assert plain.latent_clip is None and plain.covariate_clip is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = deviation_table(patients["subject"], patients, Y_patients, model)
        for copy in (loaded, carried):
            assert (copy.covariate_clip, copy.latent_clip) == (COVARIATE_CLIP, LATENT_CLIP)
            pd.testing.assert_frame_equal(deviation_table(patients["subject"], patients, Y_patients, copy), expected)


def test_statistics_carry_the_clips_and_refuse_mixing_them(fitted):
    frame, Y, _, _ = fitted
    spec = DesignSpec()
    public = {"design": np.array(json.dumps(spec.to_dict(), sort_keys=True)), "site_names": np.array(["A"])}
    release = private_moments(spec.build(frame), Y, covariate_clip=2.0, latent_clip=1.0, noise_multiplier=1.0,
                              rng=np.random.default_rng(1), public={**public, "covariate_min": np.array([18.0]),
                                                                    "covariate_max": np.array([90.0])}).stats
    stats = SufficientStats.from_arrays(release)
    assert stats.n == release["xtx"][0, 0] and stats.is_private
    np.testing.assert_array_equal(stats.sum_y, release["xty"][0])
    np.testing.assert_array_equal(stats.sum_y2, np.diag(release["yty"]))
    again = SufficientStats.from_arrays(stats.to_arrays())  # the full set (what the server saves) still reads
    assert (again.covariate_clip, again.latent_clip) == (2.0, 1.0)
    np.testing.assert_array_equal((stats + stats).dp_noise_variance, 2 * stats.dp_noise_variance)
    plain = SufficientStats.from_data(frame, Y, spec)
    with pytest.raises(NdaeError, match="clipped differently"):
        stats + plain
    assert not plain.is_private and "latent_clip" not in plain.to_arrays()
