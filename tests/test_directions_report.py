"""benchmarks/directions_report.py decides issue 16's goal points from the numbers: a cell whose
numbers meet a point says so, one that misses it by a little does not."""

import json

import pytest

from benchmarks.directions_report import RHO_GOAL, cell_summary, write


def _entry(d, low, high):
    return {"d": d, "low": low, "high": high}


def raw_cell(rho=-0.7, baseline_rho=0.5, gain_low=0.01, hr_upper=0.9, preset="tiny", disease="als"):
    versus = {"covariates | alone": {**_entry(0.03, gain_low, 0.05), "risk_concordance": _entry(0.04, gain_low, 0.06)},
              "voxel-wise normative z | with covariates": {**_entry(0.02, gain_low, 0.03),
                                                            "risk_concordance": _entry(0.02, gain_low, 0.03)}}
    rows = [{"model": "NDAE cosine | alone", "severity_spearman": rho, "severity_spearman_seeds_sd": 0.05},
            {"model": "NDAE Mahalanobis | alone", "severity_spearman": 0.2},
            {"model": "voxel-wise normative z precentral | alone", "severity_spearman": -baseline_rho},
            {"model": "voxel-wise normative z | alone", "risk_severity_spearman": baseline_rho - 0.1},
            {"model": "regional normative z | alone", "risk_severity_spearman": baseline_rho - 0.2},
            {"model": "covariates | alone", "expected_c": 0.6, "risk_concordance": 0.65},
            {"model": "voxel-wise normative z | with covariates", "expected_c": 0.62},
            {"model": "NDAE cosine | with covariates", "expected_c": 0.63, "versus": versus},
            {"model": "NDAE Mahalanobis | with covariates", "expected_c": 0.61, "versus": {}}]
    runs = [{"subjects": {"patients": 240}, "dae_steps": 200, "timings": {"dae_training_s": 60.0},
             "cosine_hr_per_sd": {"hazard_ratio": 0.8, "lower_95": 0.7, "upper_95": hr_upper}} for _ in range(3)]
    return {"preset": preset, "disease": disease, "runs": runs, "truth_summary": rows}


def test_a_cell_that_meets_every_point():
    summary = cell_summary(raw_cell())
    assert summary["best_score"] == "NDAE cosine | alone" and summary["best_rho"] == -0.7
    assert summary["rho_met"] and summary["gain_met"] and summary["cosine_met"]
    assert summary["top_with_covariates"] == "NDAE cosine | with covariates"


@pytest.mark.parametrize("change, point", [
    ({"rho": -(RHO_GOAL - 0.01)}, "rho_met"),           # just under the ρ goal
    ({"baseline_rho": 0.75}, "rho_met"),                # a baseline orders severity better
    ({"gain_low": -0.001}, "gain_met"),                 # one CI touches 0
    ({"hr_upper": 1.01}, "cosine_met"),                 # the cosine HR's CI includes 1
])
def test_a_point_missed_by_a_little_is_not_met(change, point):
    summary = cell_summary(raw_cell(**change))
    assert not summary[point]
    assert all(summary[other] for other in ("rho_met", "gain_met", "cosine_met") if other != point)


def test_a_multi_feature_ndae_model_counts_by_its_risk_and_the_image_variant_is_named():
    raw = raw_cell(rho=-0.2)
    raw["truth_summary"].append({"model": "NDAE image-space deviation | alone", "risk_severity_spearman": 0.65})
    raw["image_deviation_steps"] = 30
    summary = cell_summary(raw)
    assert summary["best_score"] == "NDAE image-space deviation | alone" and summary["best_rho_kind"] == "risk"
    assert summary["rho_met"] and summary["preset"] == "tiny+image30"


def test_the_section_states_what_the_cells_show(tmp_path):
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "tiny_als.json").write_text(json.dumps(raw_cell()))
    (tmp_path / "cells" / "tiny-age_cortex-only.json").write_text(
        json.dumps(raw_cell(rho=-0.3, hr_upper=1.2, preset="tiny-age", disease="cortex-only")))
    text = write(tmp_path / "cells", tmp_path / "directions.md").read_text()
    reading = text.split("Reading (computed): ", 1)[1]
    assert "goal 1: met in `tiny`/als." in reading and "goal 3: met in `tiny`/als." in reading
    assert "goal 2: met in `tiny`/als, `tiny-age`/cortex-only." in reading
    assert json.loads((tmp_path / "directions.json").read_text())[0]["preset"] == "tiny"  # als first
