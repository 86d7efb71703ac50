"""`ndae survival` end to end on a small simulated cohort (manifest + deviations.csv)."""

import json

import numpy as np
import pandas as pd
import pytest

from ndae.cli import main
from tests.survival_simulation import simulate_weibull_cox


@pytest.fixture()
def inputs(tmp_path):
    patients = simulate_weibull_cox(150, [0.9, 0.0], seed=8, sites=["s1", "s2", "s3"], site_scale=[1.0, 1.3, 0.8])
    rng = np.random.default_rng(8)
    patients["subject"] = [f"als-{i:03d}" for i in range(len(patients))]
    patients["group"] = "als"
    controls = pd.DataFrame({"subject": [f"ctl-{i:03d}" for i in range(40)], "site": "s1", "group": "control"})
    manifest = pd.concat([patients[["subject", "site", "group", "time", "event"]], controls], ignore_index=True)
    manifest["image"] = [f"images/{s}.nii.gz" for s in manifest.subject]
    manifest["age"] = rng.uniform(45, 75, len(manifest)).round(1)
    manifest["sex"] = rng.choice(["M", "F"], len(manifest))
    manifest = manifest[["subject", "site", "image", "age", "sex", "group", "time", "event"]]
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    deviations = pd.DataFrame({"subject": patients.subject, "cosine_deviation": patients.x0, "z_deviation": patients.x1})
    # controls have scores too, and one patient has none: both must be handled
    deviations = pd.concat([deviations.iloc[1:], pd.DataFrame({"subject": controls.subject, "cosine_deviation": 0.0, "z_deviation": 0.0})])
    deviations.to_csv(tmp_path / "deviations.csv", index=False)
    return tmp_path


def test_survival_command_writes_every_output(inputs, capsys):
    out = inputs / "survival"
    code = main(["survival", "--deviations", str(inputs / "deviations.csv"), "--manifest", str(inputs / "manifest.csv"),
                 "--out", str(out), "--strata", "site", "--folds", "3"])
    assert code == 0, capsys.readouterr().err
    for name in ("cox.json", "hazard_ratios.csv", "metrics.json", "km_cosine_deviation.png", "km_z_deviation.png"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 149 and metrics["patients_in_manifest"] == 150
    assert metrics["patients_without_deviations"] == ["als-000"]
    assert metrics["strata"] == ["site"]
    assert set(metrics["cross_validation"]["summary"]) == {"clinical", "deviation", "clinical+deviation"}
    assert metrics["kaplan_meier"]["cosine_deviation"]["p_value"] < 1e-3
    table = pd.read_csv(out / "hazard_ratios.csv").set_index("covariate")
    assert set(table.index) == {"cosine_deviation", "z_deviation", "age", "sex_female"}
    assert table.loc["cosine_deviation", "hazard_ratio_lower_95"] > 1
    printed = capsys.readouterr().out
    assert "optimism-corrected" in printed and "in-sample" in printed
    validated = metrics["harrell_c"]
    assert validated["method"] == "refit bootstrap" and validated["n_boot"] > 50
    assert validated["corrected"] <= validated["apparent"] + 0.01


def test_survival_command_names_a_missing_feature(inputs, capsys):
    code = main(["survival", "--deviations", str(inputs / "deviations.csv"), "--manifest", str(inputs / "manifest.csv"),
                 "--out", str(inputs / "out"), "--features", "mahalanobis"])
    assert code == 1
    assert "mahalanobis" in capsys.readouterr().err


def test_survival_command_names_a_bad_event_value(inputs, capsys):
    manifest = pd.read_csv(inputs / "manifest.csv")
    manifest.loc[4, "event"] = 2
    manifest.to_csv(inputs / "manifest.csv", index=False)
    code = main(["survival", "--deviations", str(inputs / "deviations.csv"), "--manifest", str(inputs / "manifest.csv"),
                 "--out", str(inputs / "out")])
    assert code == 1
    error = capsys.readouterr().err
    assert "event" in error and "als-004" in error, error
