"""`ndae evaluate`'s truth-aware pieces without the DAE: held-out controls, grouped shared folds,
nested covariates, and the truth-aware metrics (expected C skipped without a survival model).
The whole pipeline is checked end to end in tests/test_evaluate.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ndae.errors import NdaeError
from ndae.evaluation.comparison import cross_validate_models, model_feature_sets, summarise
from ndae.evaluation.held_out import (calibration, check_training_controls, held_out_controls,
                                      write_training_manifest)
from ndae.evaluation.inputs import cohort_survival_model
from ndae.evaluation.pipeline import EvaluationOptions
from ndae.evaluation.truth_aware import truth_aware_metrics


def _manifest(n_per_site=(8, 4)) -> pd.DataFrame:
    rows = []
    for s, n in enumerate(n_per_site):
        rows += [{"subject": f"C{s}{i:02d}", "site": f"site{s}", "group": "control"} for i in range(n)]
    rows += [{"subject": f"P{i:02d}", "site": "site0", "group": "als"} for i in range(5)]
    return pd.DataFrame(rows)


def test_held_out_controls_are_drawn_per_site_seeded_and_only_controls():
    manifest = _manifest((8, 4))
    held = held_out_controls(manifest, 0.25, seed=3)
    assert len(held) == 3 and all(s.startswith("C") for s in held)
    per_site = pd.Series([s[1] for s in held]).value_counts()
    assert per_site.to_dict() == {"0": 2, "1": 1}  # in proportion to the sites' controls
    assert held == held_out_controls(manifest, 0.25, seed=3)
    assert any(held_out_controls(manifest, 0.25, seed=k) != held for k in range(4, 10))
    assert held_out_controls(manifest, 0.0) == []
    with pytest.raises(NdaeError, match="held-out-controls"):
        held_out_controls(manifest, 1.0)
    with pytest.raises(NdaeError, match="leaves 9, fewer than the 10"):
        check_training_controls("m.csv", 12, held, 0.25, minimum=10)


def test_training_manifest_leaves_the_held_out_controls_out(tmp_path):
    from ndae.data.manifest import read_manifest

    images = []
    for i in range(4):
        path = tmp_path / f"s{i}.nii.gz"
        path.write_bytes(b"x")
        images.append(str(path))
    manifest = pd.DataFrame({"subject": ["C1", "C2", "C3", "P1"], "site": "a", "image": images, "age": 50.0,
                             "sex": "F", "group": ["control", "control", "control", "als"],
                             "time": [np.nan, np.nan, np.nan, 12.0], "event": pd.array([None, None, None, 1], "Int64")})
    path = write_training_manifest(manifest, ["C2"], tmp_path / "train_manifest.csv")
    written = read_manifest(path, check_files=False)
    assert list(written["subject"]) == ["C1", "C3", "P1"]


def test_calibration_of_standard_normal_z():
    z = np.random.default_rng(0).normal(size=20000)
    out = calibration(z)
    assert abs(out["mean_z"]) < 0.03 and abs(out["sd_z"] - 1) < 0.03 and abs(out["median_abs_z"] - 0.674) < 0.02
    assert abs(out["fraction_abs_z_over_1_96"] - 0.05) < 0.006
    assert calibration(2 * z)["fraction_abs_z_over_1_96"] > 0.3  # over-dispersed z is flagged


def _survival_table(n=120, seed=5, beta=(0.8, 0.3)):
    from tests.survival_simulation import simulate_weibull_cox

    table = simulate_weibull_cox(n, beta=list(beta), seed=seed)
    table["subject"] = [f"P{i:03d}" for i in range(len(table))]
    rng = np.random.default_rng(1)
    table["site_b"] = (rng.uniform(size=len(table)) < 0.5).astype(float)
    table["noise"] = rng.normal(size=len(table))
    return table


def test_nested_covariates_and_folds_that_never_split_a_source_anatomy():
    table = _survival_table()
    features = {"covariates": ["x1", "site_b"], "score": ["x0"], "noise": ["noise"], "oracle (true risk)": ["true_risk"]}
    sets = model_feature_sets(table, features, features["covariates"])
    for name, variants in sets.items():
        if "with covariates" in variants:
            assert set(sets["covariates"]["alone"]) <= set(variants["with covariates"]), name
    groups = np.array([f"S{i // 3}" for i in range(len(table))])  # three patients per anatomy
    per_fold, failures, folds = cross_validate_models(table, sets, EvaluationOptions(folds=5, seed=2), groups=groups)
    assert not failures and len(folds) == 5
    fold_of = {}
    for k, fold in enumerate(folds):
        for row in fold:
            assert fold_of.setdefault(groups[row], k) == k
    sizes = per_fold.pivot_table(index="fold", columns=["model", "variant"], values="n_test")
    assert (sizes.nunique(axis=1) == 1).all()  # the same folds for every model


def test_expected_c_is_skipped_with_its_reason_without_a_survival_model(tmp_path):
    (tmp_path / "truth.csv").write_text("subject,risk\n")
    cohort, reason = cohort_survival_model(tmp_path / "truth.csv")
    assert cohort is None and "no survival model in cohort.json" in reason
    (tmp_path / "cohort.json").write_text(json.dumps({"seed": 1}))
    assert "no survival model in cohort.json" in cohort_survival_model(tmp_path / "truth.csv")[1]

    table = _survival_table(150, beta=(1.5, 0.0))
    features = {"covariates": ["x1"], "NDAE score": ["x0"], "oracle (true risk)": ["true_risk"]}
    sets = model_feature_sets(table, features, features["covariates"])
    groups = np.array([f"S{i // 2}" for i in range(len(table))])
    options = EvaluationOptions(folds=3, seed=0, bootstrap=100)
    per_fold, _, folds = cross_validate_models(table, sets, options, groups=groups)
    summary = summarise(per_fold)
    truth = pd.DataFrame({"subject": table["subject"], "risk": table["true_risk"], "severity": table["x0"]})
    scores = pd.DataFrame({"subject": table["subject"], "x0": table["x0"]})
    out = truth_aware_metrics(table, sets, summary, folds=folds, groups=groups, truth=truth, cohort=None,
                              skip_reason=reason, scores=scores, is_patient=np.ones(len(table), bool), options=options)
    assert out["expected_c"]["skipped"] == reason and out["difference_basis"] == "observed_c"
    per_model = out["per_model"]
    assert not any("expected_c" in m for m in per_model.values())
    assert per_model["oracle (true risk) | alone"]["risk_concordance"] > 0.95
    assert per_model["NDAE score | alone"]["risk_concordance"] > per_model["covariates | alone"]["risk_concordance"]
    assert per_model["NDAE score | alone"]["severity_spearman"] == pytest.approx(1.0)
    assert "auroc_patients_vs_held_out_controls" not in per_model["NDAE score | alone"]  # no held-out controls given
    gain = per_model["NDAE score | with covariates"]["vs_covariates"]
    assert gain["basis"] == "observed_c" and gain["lower"] <= gain["difference"] <= gain["upper"]
    assert gain["lower"] > 0  # x0 carries the strong effect: the paired interval sees it
    assert out["best_baseline"] == "covariates | alone"  # the only non-NDAE, non-oracle model


def test_expected_c_from_the_cohort_survival_model_runs_every_model_on_the_same_draws(tmp_path):
    from dataclasses import asdict

    from ndae.cohort.survival import SurvivalModel

    (tmp_path / "cohort.json").write_text(json.dumps({"survival_model": asdict(SurvivalModel())}))
    cohort, reason = cohort_survival_model(tmp_path / "truth.csv")
    assert reason is None
    table = _survival_table(60)
    features = {"covariates": ["x1"], "score": ["x0"]}
    sets = model_feature_sets(table, features, features["covariates"])
    options = EvaluationOptions(folds=3, seed=0, draws=20)
    per_fold, _, folds = cross_validate_models(table, sets, options)
    truth = pd.DataFrame({"subject": table["subject"], "risk": 1.5 * table["x0"]})  # the score is the truth
    scores = pd.DataFrame({"subject": [*table["subject"], "C1", "C2"], "x0": [*table["x0"], -5.0, -4.0]})
    out = truth_aware_metrics(table, sets, summarise(per_fold), folds=folds, groups=None, truth=truth, cohort=cohort,
                              skip_reason=None, scores=scores, is_patient=np.r_[np.ones(len(table), bool), False, False],
                              options=options)
    per_model = out["per_model"]
    assert out["difference_basis"] == "expected_c" and out["expected_c"]["draws"] == 20
    assert per_model["score | alone"]["expected_c_draws"] == 20
    assert per_model["score | alone"]["expected_c"] > per_model["covariates | alone"]["expected_c"] + 0.1
    assert per_model["score | with covariates"]["vs_covariates"]["lower"] > 0
    assert per_model["score | alone"]["auroc_patients_vs_held_out_controls"] == 1.0
