"""The verdict at the top of the reports: every clause chosen by the numbers, on both sides of its threshold."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ndae.evaluation.report import headline
from ndae.federation.server.report import headline_lines, latent_probe_lines


def _estimate(difference, lower, upper, kind="cross-validated (5 folds)"):
    return {"difference": difference, "lower": lower, "upper": upper, "kind": kind, "ci": "bootstrap",
            "c_model": 0.6, "c_reference": 0.6 - difference}


def _summary(*, added=(-0.023, -0.041, -0.006), ndae_vs_voxel=(-0.069, -0.1, -0.03), rmse=13.8, mean_rmse=12.5,
             init_rmse=14.0, warnings=(), privacy=None):
    summary = {
        "sites": {"A": {"controls": 29, "patients": 80}, "B": {"controls": 17, "patients": 80}},
        "normative": {"n_controls": 220.0, "sites": ["A", "B"], "warnings": list(warnings)},
        "latent_probe": {"method": "ridge", "trained": {"r": 0.5, "rmse": rmse, "mean_rmse": mean_rmse, "n_controls": 90},
                         "init": {"r": 0.2, "rmse": init_rmse, "mean_rmse": mean_rmse, "n_controls": 90},
                         "trained_beats_init": True},
        "survival": {"added_value": {"features": ["z_prior_precentral"], "covariates": ["age", "sex"],
                                     "cross_validated": _estimate(*added)},
                     "voxelwise": {"cross_validated": {"ndae_vs_voxelwise": _estimate(*ndae_vs_voxel)}}},
    }
    if privacy is not None:
        summary["privacy"] = privacy
    return summary


METRICS = [{"phase": "normative", "controls_by_site": {"A": 32.4, "B": 188.0}}]


def _text(summary, private=False, target=8.0):
    config = SimpleNamespace(privacy=private, target_epsilon=target)
    return "\n".join(headline_lines(summary, METRICS, config))


@pytest.mark.parametrize("added, words", [((0.05, 0.01, 0.09), "the imaging adds to the covariates"),
                                          ((-0.023, -0.041, -0.006), "worse with the imaging"),
                                          ((0.01, -0.02, 0.04), "not distinguishable from nothing")])
def test_the_imaging_clause_follows_its_ci(added, words):
    lines = headline_lines(_summary(added=added), METRICS, SimpleNamespace(privacy=False, target_epsilon=0.0))
    assert lines[0].startswith("**Verdict (cross-validated") and words in lines[0]
    assert f"{added[0]:+.3f}" in lines[0]


@pytest.mark.parametrize("ci, words", [((-0.069, -0.1, -0.03), "voxel-wise baseline ranks patients better"),
                                       ((0.04, 0.01, 0.07), "NDAE model ranks patients better"),
                                       ((0.0, -0.03, 0.03), "not distinguishable")])
def test_the_ndae_against_voxelwise_clause_follows_its_ci(ci, words):
    text = _text(_summary(ndae_vs_voxel=ci))
    assert words in text and f"{ci[0]:+.3f} in C" in text


def test_the_age_clause_says_no_gain_when_z_sem_predicts_age_worse_than_the_mean():
    worse = _text(_summary(rmse=13.8, mean_rmse=12.5))
    assert "z_sem does not carry age" in worse and "13.8" in worse and "12.5" in worse and "no gain" in worse
    better = _text(_summary(rmse=9.0, mean_rmse=12.5, init_rmse=11.0))
    assert "z_sem carries age" in better and "does not carry" not in better and "better than the initial" in better
    untrained = _text(_summary(rmse=9.0, mean_rmse=12.5, init_rmse=8.5))
    assert "training added none" in untrained
    same = _text(_summary(rmse=13.62, mean_rmse=14.0, init_rmse=13.64))  # equal at the 0.1 y shown
    assert "training added none" in same and "better than the initial" not in same
    little = _text(_summary(rmse=13.6, mean_rmse=14.0, init_rmse=15.0))  # 3 % below the mean's error
    assert "z_sem carries little age" in little and "(3 % smaller)" in little
    # and the probe's own section reads the same numbers, not only "trained minus initial r"
    section = "\n".join(latent_probe_lines(_summary(rmse=13.8, mean_rmse=12.5)["latent_probe"]))
    assert "Reading: z_sem does not carry age" in section


def test_a_private_run_whose_noise_swamps_a_site_says_so_first_with_noised_and_true_counts():
    heads = {"A": {"epsilon": 7.9, "budget_epsilon": 10.0}, "B": {"epsilon": 1.5, "budget_epsilon": 10.0}}
    swamped = _text(_summary(warnings=["site 'B': predicted correlation 0.21 (< 0.5) ..."], privacy=heads),
                    private=True)
    first = swamped.splitlines()[0]
    assert first.startswith("**Verdict (") and "Not interpretable at this size" in first and "1 of 2 sites" in first
    assert "DP noise swamps the statistics of 1 of 2 sites (B)" in swamped
    assert "A 32 (true 29)" in swamped and "B 188 (true 17)" in swamped
    clean = _text(_summary(privacy=heads), private=True)
    assert "Not interpretable" not in clean and "no site's statistics are swamped" in clean
    hidden = _summary(privacy=heads)
    hidden["sites"]["A"]["controls"] = None  # a site that keeps its count
    assert "A 32, B 188 (true 17); 1 site(s) withheld the true count." in _text(hidden, private=True)


def test_the_budget_clause_gives_spent_and_left_and_says_when_another_run_does_not_fit():
    heads = {"A": {"epsilon": 7.9, "budget_epsilon": 10.0}, "B": {"epsilon": 1.5, "budget_epsilon": 10.0}}
    text = _text(_summary(privacy=heads), private=True, target=8.0)
    assert "A 7.90 of 10 (2.10 left)" in text and "B 1.50 of 10 (8.50 left)" in text
    assert "A cannot afford another run at epsilon 8" in text
    roomy = _text(_summary(privacy=heads), private=True, target=2.0)
    assert "cannot afford" not in roomy
    assert "Epsilon spent" not in _text(_summary())  # a non-private run has no ledger


def _result(ndae_vs_best=(-0.05, -0.09, -0.01)):
    d, lower, upper = ndae_vs_best
    return {"difference_basis": "observed_c", "best_baseline": "voxel-wise normative z", "models": [
        {"model": "NDAE cosine", "variant": "with covariates",
         "vs_covariates": {"difference": -0.02, "lower": -0.04, "upper": -0.001},
         "vs_best_baseline": {"difference": d, "lower": lower, "upper": upper}},
        {"model": "voxel-wise normative z", "variant": "with covariates",
         "vs_covariates": {"difference": 0.03, "lower": 0.01, "upper": 0.05}}]}


@pytest.mark.parametrize("ci, words", [((-0.05, -0.09, -0.01), "best baseline (voxel-wise normative z) ranks "
                                        "patients better"),
                                       ((0.05, 0.01, 0.09), "ranks patients better than the best baseline"),
                                       ((0.0, -0.03, 0.03), "not distinguishable from the best baseline")])
def test_the_evaluate_verdict_sets_the_ndae_against_the_best_baseline(ci, words):
    lines = headline(_result(ci))
    assert lines[0].startswith("**Verdict.**")
    assert any(words in line for line in lines), lines


# ---- `ndae survival` --------------------------------------------------------------------------
def _survival_metrics(c=(0.62, 0.55, 0.70), differences=(0.02, 0.01, 0.03)):
    corrected, lower, upper = c
    per_fold = []
    for fold, d in enumerate(differences):
        per_fold += [{"model": "clinical", "fold": fold, "harrell_c": 0.6},
                     {"model": "clinical+deviation", "fold": fold, "harrell_c": 0.6 + d}]
    return {"n": 60, "events": 40, "covariates": ["cosine", "age"], "strata": None,
            "harrell_c": {"apparent": 0.65, "corrected": corrected, "lower": lower, "upper": upper, "n_boot": 100},
            "cross_validation": {"folds": len(differences), "per_fold": per_fold, "summary": {}}}


@pytest.mark.parametrize("c, words", [((0.62, 0.55, 0.70), "better than chance"),
                                      ((0.42, 0.35, 0.48), "worse than chance"),
                                      ((0.52, 0.45, 0.60), "not distinguishable from chance")])
def test_the_survival_verdict_reads_the_validated_c_against_chance(tmp_path, c, words):
    from ndae.survival.report import write_survival_report

    report = write_survival_report(tmp_path, _survival_metrics(c=c)).read_text().splitlines()
    assert report[2].startswith("**Verdict.** ") and words in report[2] and f"{c[0]:.3f}" in report[2]


@pytest.mark.parametrize("differences, words", [((0.02, 0.01, 0.03), "add to the clinical covariates in every fold"),
                                                ((-0.02, -0.01, -0.03), "add nothing"),
                                                ((0.02, -0.01, 0.03), "higher with them in 2 of 3 folds")])
def test_the_survival_verdict_reads_the_deviation_scores_fold_by_fold(differences, words):
    from ndae.survival.report import survival_verdict

    text = "\n".join(survival_verdict(_survival_metrics(differences=differences)))
    assert words in text and f"{np.mean(differences):+.3f}" in text


def test_ndae_survival_writes_its_report_and_ends_with_the_verdict_and_its_path(tmp_path, monkeypatch, capsys):
    import ndae.survival.analysis
    from ndae.cli import main

    monkeypatch.setattr(ndae.survival.analysis, "run_survival_analysis",
                        lambda *a, **k: _survival_metrics(c=(0.42, 0.35, 0.48)))
    for name in ("deviations.csv", "manifest.csv"):
        (tmp_path / name).write_text("subject\n")
    out = tmp_path / "survival"
    assert main(["survival", "--deviations", str(tmp_path / "deviations.csv"), "--manifest",
                 str(tmp_path / "manifest.csv"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"report: {out / 'report.md'}" and "worse than chance" in printed[-3]
    assert (out / "report.md").read_text().splitlines()[2].startswith("**Verdict.** The Cox model ranks patients worse")
