"""`ndae evaluate`: refusals, the shared-fold Cox comparison, and the whole pipeline end to end
on a small synthetic cohort made outside the project's cohort generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ndae.cli import main
from ndae.errors import NdaeError
from ndae.evaluation.comparison import cross_validate_models, model_feature_sets, summarise
from ndae.evaluation.inputs import check_manifest, read_truth
from ndae.evaluation.pipeline import EvaluationOptions

MODELS = ("covariates", "NDAE cosine", "NDAE centred cosine", "NDAE Mahalanobis", "NDAE deviation scores",
          "NDAE prior residual", "NDAE prior residual (own z_sem)", "regional normative z",
          "voxel-wise normative z", "voxel-wise normative z (high-pass)", "autoencoder", "z_sem PCA", "brain-age gap", "oracle (true risk)")
IMAGE_MODELS = ("NDAE image-space deviation", "NDAE image mean abs z")  # with --image-deviation-steps


def add_cohort_truth(truth_path: Path) -> None:
    """What the project's cohort generator records and the toy does not: two patients per source
    anatomy (`source_subject`) and the survival model (cohort.json beside truth.csv; the toy's
    Weibull, administrative censoring only, no onset effect)."""
    from dataclasses import asdict

    from ndae.cohort.survival import SurvivalModel

    truth = pd.read_csv(truth_path)
    truth["source_subject"] = [f"S{i // 2:02d}" for i in range(len(truth))]
    truth.to_csv(truth_path, index=False)
    model = SurvivalModel(median_months=32.0, log_hazard_ratio_bulbar=0.0, accrual_months=24.0, study_months=60.0,
                          dropout_months=1e9)
    (truth_path.parent / "cohort.json").write_text(json.dumps({"survival_model": asdict(model)}))


@pytest.fixture(scope="module")
def toy_cohort(evaluation_toy_cohort) -> tuple[Path, Path]:
    return evaluation_toy_cohort  # tests/conftest.py: shared with tests/test_evaluate_external_features.py


def _rewrite(manifest: Path, tmp_path: Path, change) -> Path:
    table = pd.read_csv(manifest)
    table["image"] = [str(manifest.parent / p) for p in table["image"]]
    table["mask"] = [str(manifest.parent / p) for p in table["mask"]]
    path = tmp_path / "manifest.csv"
    change(table).to_csv(path, index=False)
    return path


def test_refuses_a_manifest_without_controls(toy_cohort, tmp_path, capsys):
    path = _rewrite(toy_cohort[0], tmp_path, lambda t: t[t.group == "als"])
    assert main(["evaluate", "--manifest", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    assert "no controls" in capsys.readouterr().err
    assert not (tmp_path / "out" / "dae").exists()  # refused before any training


def test_refuses_a_manifest_without_patients(toy_cohort, tmp_path, capsys):
    path = _rewrite(toy_cohort[0], tmp_path, lambda t: t[t.group == "control"].drop(columns=["time", "event"]))
    assert main(["evaluate", "--manifest", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    assert "no patients" in capsys.readouterr().err


def test_refuses_too_few_events_for_the_folds(toy_cohort):
    with pytest.raises(NdaeError, match="lower --folds"):
        check_manifest(toy_cohort[0], folds=10)


def test_truth_must_cover_every_patient(toy_cohort, tmp_path):
    truth = pd.read_csv(toy_cohort[1])
    truth.iloc[1:].to_csv(tmp_path / "truth.csv", index=False)
    with pytest.raises(NdaeError, match="no true risk for 1 patient"):
        read_truth(tmp_path / "truth.csv", truth["subject"])


def test_cox_on_the_true_predictor_reaches_c_star_on_shared_folds():
    from ndae.survival.oracle import oracle_c_index
    from tests.survival_simulation import simulate_weibull_cox

    table = simulate_weibull_cox(400, beta=[0.8, 0.0], seed=5)
    table["noise"] = np.random.default_rng(0).normal(size=len(table))
    features = {"covariates": ["x1"], "score": ["x0", "noise"], "oracle (true risk)": ["true_risk"]}
    sets = model_feature_sets(table, features, covariates=["x1"])
    assert sets["score"] == {"alone": ["x0", "noise"], "with covariates": ["x0", "noise", "x1"]}
    assert list(sets["oracle (true risk)"]) == ["alone"]
    per_fold, failures, folds = cross_validate_models(table, sets, EvaluationOptions(folds=5, seed=1, penalizer=0.1))
    assert not failures and len(folds) == 5
    summary = summarise(per_fold).set_index(["model", "variant"])
    c_star = oracle_c_index(table["time"], table["event"], table["true_risk"])
    oracle = summary.loc[("oracle (true risk)", "alone")]
    assert abs(oracle["harrell_c_mean"] - c_star) < 2 * oracle["harrell_c_sd"] / np.sqrt(5) + 0.01
    assert summary.loc[("score", "alone"), "harrell_c_mean"] > 0.6  # x0 is the truth plus nothing
    assert summary.loc[("covariates", "alone"), "harrell_c_mean"] < 0.58  # x1 has no effect
    # same folds: every model's per-fold test sizes agree
    sizes = per_fold.pivot_table(index="fold", columns=["model", "variant"], values="n_test")
    assert (sizes.nunique(axis=1) == 1).all()


@pytest.mark.slow
def test_evaluate_end_to_end_writes_every_model_and_c_star(toy_cohort, tmp_path):
    manifest, truth = toy_cohort
    out = tmp_path / "eval"
    assert main(["evaluate", "--manifest", str(manifest), "--truth", str(truth), "--out", str(out), "--steps", "2",
                 "--inversion-steps", "1", "--folds", "3", "--autoencoder-steps", "10", "--draws", "50",
                 "--image-deviation-steps", "1", "--quiet"]) == 0
    for name in ("report.md", "evaluation.json", "km_cosine.png", "c_index.png", "latents.npz", "deviations.csv",
                 "normative/model.json", "patients.csv", "survival/cv_per_fold.csv", "dae/checkpoint.pt"):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "evaluation.json").read_text())
    assert not result["skipped_baselines"] and not result["failed_models"]
    models = {(m["model"], m["variant"]): m for m in result["models"]}
    assert {m for m, _ in models} == set(MODELS) | set(IMAGE_MODELS)
    report = (out / "report.md").read_text()
    for name in MODELS + IMAGE_MODELS:
        assert f"| {name} |" in report
    c_star = result["oracle_c_index"]
    assert f"C* = {c_star:.3f}" in report and 0.5 < c_star < 1
    # Cox on the true predictor: the same ranking as C* up to fold noise
    oracle = models[("oracle (true risk)", "alone")]
    assert abs(oracle["harrell_c_mean"] - c_star) < 2 * oracle["harrell_c_sd"] / np.sqrt(3) + 0.02
    assert np.isfinite(models[("NDAE cosine", "alone")]["harrell_c_mean"])
    assert "HR per SD" in report and "per unit of cosine" in report
    # one row per patient, every feature finite
    patients = pd.read_csv(out / "patients.csv")
    manifest_table = pd.read_csv(manifest)
    assert sorted(patients["subject"]) == sorted(manifest_table.loc[manifest_table.group == "als", "subject"])
    features = patients.drop(columns=["subject", "site", "time", "event"])
    assert np.isfinite(features.to_numpy(float)).all()
    assert len(result["folds"]) == 3 and sum(len(f) for f in result["folds"]) == len(patients)

    # -- truth-aware evaluation (the toy cohort's truth) ---------------------------------------
    by_model = {}
    for m in result["models"]:
        by_model.setdefault(m["model"], {})[m["variant"]] = m["features"].split(", ")
    covariates = by_model["covariates"]["alone"]
    assert {"age", "sex_female", "onset_bulbar"} <= set(covariates) and any(c.startswith("site_") for c in covariates)
    for name, variants in by_model.items():  # nested: every "+ covariates" model holds all of them
        if "with covariates" in variants:
            assert set(covariates) <= set(variants["with covariates"]), name
    # folds never split a source anatomy
    truth_table = pd.read_csv(truth).set_index("subject")
    source_of_fold = {}
    for k, fold in enumerate(result["folds"]):
        for row in fold:
            source = truth_table.at[patients["subject"].iloc[row], "source_subject"]
            assert source_of_fold.setdefault(source, k) == k, source
    assert result["groups"] == {"column": "source_subject", "count": truth_table["source_subject"].nunique()}
    # held-out controls: in neither the DAE's training manifest nor any normative fit
    held = set(result["held_out_controls"]["subjects"])
    controls = set(manifest_table.loc[manifest_table.group == "control", "subject"])
    assert held and held < controls and result["subjects"]["held_out_controls"] == len(held)
    sites = manifest_table.set_index("subject").loc[sorted(held), "site"]
    assert sites.nunique() == manifest_table["site"].nunique()  # drawn per site
    dae_training = json.loads((out / "config.json").read_text())["dae_training"]  # what train_run read
    trained_on = pd.read_csv(dae_training["manifest"])
    assert not held & set(trained_on["subject"]) and controls - held <= set(trained_on["subject"])
    assert dae_training["n_controls"] == len(controls - held)
    # image-space NDAE features: every subject's in image_deviations.csv, the patients' in patients.csv
    image = pd.read_csv(out / "image_deviations.csv")
    assert sorted(image["subject"]) == sorted(manifest_table["subject"])
    assert {"z_image_precentral", "z_image_ventricles", "image_mean_abs_z"} <= set(image.columns)
    assert {"z_image_precentral", "image_mean_abs_z"} <= set(patients.columns)
    assert (out / "normative_image" / "model.json").exists()
    assert "NDAE image-space z" in result["calibration"] and result["timings"]["image_deviations_s"] > 0
    # regional deviations from the diffusion prior: every subject's, both conditionings, a model each
    prior = pd.read_csv(out / "prior_deviations.csv")
    assert sorted(prior["subject"]) == sorted(manifest_table["subject"])
    assert {"z_prior_precentral", "z_prior_own_precentral", "z_prior_ventricles"} <= set(prior.columns)
    assert {"z_prior_precentral", "z_prior_own_precentral", "cosine_centred"} <= set(patients.columns)
    assert (out / "normative_prior" / "model.json").exists() and (out / "prior_residuals.csv").exists()
    swap = result["prior_residuals"]
    assert swap["levels"] == [100, 250, 400] and swap["relative_change"] >= 0
    assert "z_sem use (swap test)" in report and report.splitlines()[2].startswith("**Verdict.**")
    assert set(result["normative_fits"]) >= {"NDAE latent normative model", "regional normative z",
                                             "voxel-wise normative z", "autoencoder"}
    for name, fitted in result["normative_fits"].items():
        assert set(fitted) == controls - held, name
    for name, pair in result["calibration"].items():
        assert pair["held_out_controls"]["subjects"] == len(held), name
        assert 0 <= pair["held_out_controls"]["fraction_abs_z_over_1_96"] <= 1
    # the new metric keys, in range
    assert result["expected_c"]["skipped"] is None and result["expected_c"]["draws"] == 50
    for m in result["models"]:
        assert 0 <= m["expected_c"] <= 1 and m["expected_c_sd"] > 0 and m["expected_c_draws"] == 50, m["model"]
        assert abs(m["expected_c_mc_se"] - m["expected_c_sd"] / np.sqrt(50)) < 1e-9
        assert 0 <= m["risk_concordance"] <= 1
        if m["model"] != "oracle (true risk)" and (m["model"], m["variant"]) != ("covariates", "alone"):
            d = m["vs_covariates"]
            assert d["lower"] <= d["difference"] <= d["upper"] and d["basis"] == "expected_c"
    single = [m for m in result["models"] if m["variant"] == "alone" and len(m["features"].split(", ")) == 1
              and m["model"] != "oracle (true risk)"]
    assert {m["model"] for m in single} >= {"NDAE cosine", "NDAE Mahalanobis", "brain-age gap"}
    for m in single:
        assert -1 <= m["severity_spearman"] <= 1 and 0 <= m["auroc_patients_vs_held_out_controls"] <= 1
    oracle_row = models[("oracle (true risk)", "alone")]
    assert oracle_row["risk_concordance"] > 0.95  # Cox on the true risk recovers its ordering
    assert oracle_row["expected_c"] > models[("covariates", "alone")]["expected_c"]
    best = result["best_baseline"]
    assert not best.startswith("NDAE") and not best.startswith("oracle")
    assert "to the covariates' expected C" in report and "| voxel-wise normative z | alone |" in report


def test_cosine_hazard_ratio_of_a_score_with_a_tiny_spread():
    """The paper's cosine keeps the latent's shared mean: it sits near 1 with sd ~1e-4. Its hazard
    ratio per SD must be the same as for the score rescaled, and the report must render even where
    the per-unit ratio overflows."""
    from ndae.evaluation.comparison import cosine_hazard_ratio
    from ndae.evaluation.report import _g

    rng = np.random.default_rng(0)
    n = 200
    score = rng.normal(size=n)
    time = rng.exponential(np.exp(0.5 * score))  # higher score, longer survival: HR per SD < 1
    table = pd.DataFrame({"time": time, "event": rng.random(n) < 0.8, "cosine": 1.0 - 1e-5 + 1e-5 * score})
    tiny = cosine_hazard_ratio(table)
    plain = cosine_hazard_ratio(table.assign(cosine=score))
    assert tiny["per_sd"]["hazard_ratio"] == pytest.approx(plain["per_sd"]["hazard_ratio"], rel=1e-4)
    assert tiny["per_sd"]["hazard_ratio"] < 0.8 and tiny["per_sd"]["upper_95"] < 1
    assert tiny["coef"] * 1e-5 == pytest.approx(plain["coef"], rel=1e-4)  # per unit = per SD / sd
    assert tiny["per_unit"]["hazard_ratio"] == 0.0  # exp(-5e4): underflows, rendered as such, no crash
    assert _g(float("inf")) == "–" and _g(None) == "–" and _g(0.5) == "0.5"
