"""`ndae normative fit` and `ndae deviations` on files following the contracts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ndae.cli import main
from ndae.io import atomic_save_npz


@pytest.fixture()
def run_dir(tmp_path):
    rng = np.random.default_rng(0)
    n_controls, n_patients, d = 70, 20, 8
    n = n_controls + n_patients
    manifest = pd.DataFrame(
        {
            "subject": [f"sub-{i:03d}" for i in range(n)],
            "site": rng.choice(["london", "paris"], n),
            "image": [f"images/sub-{i:03d}.nii.gz" for i in range(n)],
            "age": rng.uniform(30, 75, n).round(1),
            "sex": rng.choice(["M", "F"], n),
            "group": ["control"] * n_controls + ["als"] * n_patients,
            "time": [np.nan] * n_controls + list(rng.uniform(5, 60, n_patients).round(1)),
            "event": [np.nan] * n_controls + list(rng.integers(0, 2, n_patients)),
        }
    )
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    z_sem = 10 + 0.05 * (manifest["age"].to_numpy()[:, None] - 50) + rng.normal(0, 0.3, (n, d))
    # patients deviate, across the shared mean's direction: a shift along it (+1 in every dimension)
    # only lengthens the vector, which no cosine sees (the paper's keeps the mean; Mahalanobis would)
    z_sem[n_controls:] += np.where(np.arange(d) % 2 == 0, 1.0, -1.0)
    order = rng.permutation(n)  # latents need not follow the manifest's order
    run = tmp_path / "run"
    atomic_save_npz(
        run / "latents.npz",
        subject=manifest["subject"].to_numpy(str)[order],
        z_sem=z_sem[order],
        x_T=rng.normal(size=(n, 1, 4, 4))[order],
    )
    return run


def test_fit_then_score_every_subject(run_dir, capsys):
    manifest = run_dir.parent / "manifest.csv"
    assert main(["normative", "fit", "--latents", str(run_dir / "latents.npz"), "--manifest", str(manifest),
                 "--out", str(run_dir / "normative")]) == 0
    model_json = json.loads((run_dir / "normative" / "model.json").read_text())
    assert model_json["n_controls"] == 70 and model_json["n_features"] == 8
    assert set(model_json["sites"]) == {"london", "paris"}
    calibration = json.loads((run_dir / "normative" / "calibration_in_sample.json").read_text())
    assert abs(calibration["mean_coverage_95"] - 0.95) < 0.05

    assert main(["deviations", "--run", str(run_dir), "--manifest", str(manifest)]) == 0
    table = pd.read_csv(run_dir / "deviations.csv", dtype={"subject": str})
    assert table.columns[0] == "subject"
    assert len(table) == 90 and table["subject"].is_unique
    manifest_frame = pd.read_csv(manifest).set_index("subject")
    group = manifest_frame.loc[table["subject"], "group"].to_numpy()
    assert table.loc[group == "als", "mahalanobis"].median() > table.loc[group == "control", "mahalanobis"].median()
    assert table.loc[group == "als", "cosine"].mean() < table.loc[group == "control", "cosine"].mean()
    assert "deviation scores of 90 subjects" in capsys.readouterr().out


def test_unknown_subjects_are_named(run_dir, capsys):
    manifest = pd.read_csv(run_dir.parent / "manifest.csv")
    manifest.iloc[3:].to_csv(run_dir.parent / "short.csv", index=False)
    code = main(["normative", "fit", "--latents", str(run_dir / "latents.npz"),
                 "--manifest", str(run_dir.parent / "short.csv"), "--out", str(run_dir / "normative")])
    assert code == 1
    error = capsys.readouterr().err
    assert "3 subject(s)" in error and "sub-000" in error
    assert not (run_dir / "normative").exists()
