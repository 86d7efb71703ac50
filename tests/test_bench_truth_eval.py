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
