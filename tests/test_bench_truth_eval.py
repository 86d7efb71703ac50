"""benchmarks/truth_eval.py: the survival benchmarks' truth-aware metrics on a table whose truth is known."""

from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from benchmarks.statements import truth_reading
from benchmarks.truth_eval import BenchmarkInputError, evaluate_models, summarise, with_site_indicators
from ndae.cohort.survival import SurvivalModel


def cohort(seed: int, n_sources: int = 40, per_source: int = 3):
    """Patients with a true risk driven by severity; a noisy copy of the severity as the 'score'
    and pure noise as a second score; three patients per source anatomy."""
    rng = np.random.default_rng(seed)
    model = SurvivalModel()
    n = n_sources * per_source
    severity = rng.beta(2.5, 2.5, n)
    age = rng.normal(62, 11, n)
    risk = model.linear_predictor(severity, age, np.zeros(n))
    drawn = model.simulate(risk, rng)
    subjects = [f"p{i:03d}" for i in range(n)]
    table = pd.DataFrame({"subject": subjects, "time": drawn["time"], "event": drawn["event"],
                          "site": rng.choice(["a", "b"], n), "age": age, "sex_female": rng.integers(0, 2, n).astype(float),
                          "score": severity + rng.normal(0, 0.05, n), "noise": rng.normal(size=n)})
    truth = pd.DataFrame({"subject": subjects, "risk": risk, "severity": severity,
                          "source_subject": [f"s{i // per_source}" for i in range(n)]})
    return table, truth, {"survival_model": asdict(model)}


def test_metrics_separate_a_signal_score_from_noise_and_pool_over_seeds():
    results = {}
    for seed in (0, 1, 2):
        table, truth, cohort_json = cohort(seed)
        table, covariates = with_site_indicators(table)
        models = {"covariates": covariates, "score": ["score"], "noise": ["noise"], "oracle": ["age", "score"]}
        held_out = pd.DataFrame({"subject": [f"c{i}" for i in range(30)], "score": np.random.default_rng(seed).normal(0.15, 0.05, 30)})
        results[seed] = evaluate_models(table, models, truth, cohort_json, folds=4, seed=seed, draws=8,
                                        references=("covariates",), held_out=held_out, n_boot=50)
        one = results[seed]["models"]
        # folds never split a source anatomy; every model is on the same draws
        assert results[seed]["source_anatomies"] == 40 and results[seed]["draws"] == 8
        assert len(one["score"]["per_draw"]) == len(one["noise"]["per_draw"]) == 8
        assert one["score"]["severity_spearman"] > 0.9 and abs(one["noise"]["severity_spearman"]) < 0.35
        assert one["score"]["risk_concordance"] > 0.75 and 0.3 < one["noise"]["risk_concordance"] < 0.7
        assert one["score"]["auroc_vs_held_out_controls"] > 0.8
        # the out-of-fold risk's ρ with severity, for multi-feature models too
        assert one["score"]["risk_severity_spearman"] > 0.85 and abs(one["noise"]["risk_severity_spearman"]) < 0.35
        assert one["oracle"]["risk_severity_spearman"] > 0.6  # age + score: age orders the risk too
        assert "severity_spearman" not in one["oracle"]  # a single score's ρ only for single scores
        # the paired risk-concordance difference is the two models' own difference
        for name in ("score", "noise"):
            entry = one[name]["versus"]["covariates"]["risk_concordance"]
            assert entry == pytest.approx(one[name]["risk_concordance"] - one["covariates"]["risk_concordance"])
    rows = {row["model"]: row for row in summarise(results)}
    assert rows["oracle"]["expected_c"] > rows["noise"]["expected_c"] + 0.1
    versus = rows["oracle"]["versus"]["covariates"]
    assert versus["n"] == 3 and versus["low"] > 0 and versus["fraction_positive"] > 0.8
    assert versus["risk_concordance"]["low"] > 0 and len(versus["risk_concordance"]["per_seed"]) == 3
    noise = rows["noise"]["versus"]["covariates"]["risk_concordance"]
    assert noise["high"] < 0 or noise["low"] < 0 < noise["high"]  # noise never beats the covariates
    text = truth_reading(list(rows.values()), {"covariates": "covariates alone"})
    higher = text.split("higher: ", 1)[1].split(" — ")[0]
    assert "oracle +" in higher and "noise" not in higher


def test_rows_out_of_truth_order_are_refused():
    table, truth, cohort_json = cohort(0, n_sources=10)
    with pytest.raises(BenchmarkInputError, match="subject order"):
        evaluate_models(table.iloc[::-1].reset_index(drop=True), {"score": ["score"]}, truth, cohort_json, draws=0)


def test_both_voxel_wise_baselines_are_models_and_references_and_old_results_render():
    import json
    from pathlib import Path

    from benchmarks.bench_survival import RESULTS, _reference_of, render, run_models
    from benchmarks.truth_eval import VOXELWISE, VOXELWISE_HIGHPASS, table_lines

    # the run fitted the high-pass baseline but not the raw one: the raw one is still added from
    # its columns (its name is a prefix of the high-pass one's), and each gets its precentral score
    patients = pd.DataFrame({"subject": ["p0", "p1"], "age": [60.0, 70.0], "sex_female": [0.0, 1.0],
                             "z_voxel_precentral": [0.1, 0.2], "z_voxel_whole_brain": [0.0, 0.1],
                             "z_highpass_voxel_precentral": [0.3, 0.4], "z_highpass_voxel_whole_brain": [0.1, 0.2]})
    per_fold = pd.DataFrame({"model": ["covariates", VOXELWISE_HIGHPASS], "variant": ["alone", "alone"],
                             "features": ["age, sex_female", "z_highpass_voxel_precentral, z_highpass_voxel_whole_brain"]})
    models = run_models(per_fold, patients)
    assert models[f"{VOXELWISE} | alone"] == ["z_voxel_precentral", "z_voxel_whole_brain"]
    assert models[f"{VOXELWISE} precentral | alone"] == ["z_voxel_precentral"]
    assert models[f"{VOXELWISE_HIGHPASS} precentral | alone"] == ["z_highpass_voxel_precentral"]
    assert models[f"{VOXELWISE_HIGHPASS} | with covariates"] == ["age", "sex_female", "z_highpass_voxel_precentral",
                                                                  "z_highpass_voxel_whole_brain"]
    # every model is compared with both baselines of its variant, a baseline's own rows with the other one only
    assert _reference_of("NDAE cosine | with covariates") == (
        "covariates | alone", f"{VOXELWISE} | with covariates", f"{VOXELWISE_HIGHPASS} | with covariates")
    assert _reference_of(f"{VOXELWISE} precentral | alone") == ("covariates | alone", None, f"{VOXELWISE_HIGHPASS} | alone")
    assert _reference_of(f"{VOXELWISE_HIGHPASS} | alone") == ("covariates | alone", f"{VOXELWISE} | alone", None)
    # a row saved before the high-pass baseline: "–" in its column; a two-reference caller keeps the old table
    row = {"model": "NDAE cosine | alone", "harrell_c": 0.6, "uno_c": 0.6, "expected_c": 0.6, "sd_per_draw": 0.02,
           "risk_concordance": 0.7, "severity_spearman": 0.5, "auroc_vs_held_out_controls": None,
           "versus": {f"{VOXELWISE} | alone": {"d": 0.01, "low": -0.01, "high": 0.03}}}
    header, _, line = table_lines([row], _reference_of)
    assert header.endswith("| Δ vs voxel-wise [95 % CI] | Δ vs high-pass voxel-wise [95 % CI] |")
    assert line.endswith("| – | +0.010 [-0.010, +0.030] | – |")
    old_layout = table_lines([row], lambda model: ("covariates | alone", None))
    assert old_layout[0].endswith("| Δ vs voxel-wise [95 % CI] |") and old_layout[2].endswith("| – | – |")
    saved = RESULTS / "survival.json"  # the shipped results (saved before the high-pass baseline, or after)
    if saved.exists():
        assert "Δ vs high-pass voxel-wise" in render(json.loads(Path(saved).read_text()))
