"""End to end: a small multi-site cohort from real healthy scans, read back from disk."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ndae import cli
from ndae.cohort import CohortConfig, generate_cohort
from ndae.cohort import anatomy as landmarks
from ndae.data.manifest import read_manifest
from ndae.errors import ManifestError


def _healthy_manifest(ixi_dir, folder, n, with_mask=True):
    demographics = pd.read_csv(ixi_dir / "demographics.csv").sort_values("age")
    pick = demographics.iloc[np.linspace(0, len(demographics) - 1, n).round().astype(int)]
    frame = pd.DataFrame(
        {
            "subject": pick["subject"],
            "site": "HH",
            "image": [str(ixi_dir / "T1" / f"{s}_T1.nii.gz") for s in pick["subject"]],
            "age": pick["age"],
            "sex": pick["sex"],
            "group": "control",
        }
    )
    if with_mask:
        frame["mask"] = [str(ixi_dir / "labels" / f"{s}_T1_DLMUSE.nii.gz") for s in pick["subject"]]
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cohort(ixi_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    healthy = _healthy_manifest(ixi_dir, root / "healthy", 12)
    config = CohortConfig(sites=3, seed=3, patients=7, controls_only_site="site3", patients_only_site="site2")
    summary = generate_cohort(healthy, root / "out", config)
    return root / "out", summary, pd.read_csv(healthy)


def test_outputs_follow_the_contract(cohort):
    out, summary, healthy = cohort
    manifest = read_manifest(out / "manifest.csv")  # the project's own validator, files checked
    truth = pd.read_csv(out / "truth.csv")
    assert list(truth.columns[:6]) == ["subject", "severity", "onset", "risk", "event_time", "censor_time"]
    assert set(manifest["site"]) == {"site1", "site2", "site3"}
    usable = set(healthy["subject"]) - set(summary["excluded_subjects"])
    assert len(manifest) == len(usable) == summary["subjects"]
    # Each healthy anatomy is used once: as a control or as one patient.
    assert truth["source_subject"].is_unique and set(truth["source_subject"]) == usable
    patients = manifest[manifest["group"] == "als"]
    assert len(patients) == 7 and patients["time"].notna().all() and patients["event"].isin([0, 1]).all()
    assert manifest.loc[manifest["group"] == "control", "time"].isna().all()
    for site in ("site1", "site2", "site3"):
        local = read_manifest(out / "sites" / site / "manifest.csv")
        assert (local["site"] == site).all()
        assert sorted(local["image"]) == sorted(manifest.loc[manifest["site"] == site, "image"])
    assert (out / "cohort_example.png").stat().st_size > 10_000
    assert summary["survival"]["oracle_c_index"] > 0.5


def test_controls_only_and_patients_only_sites(cohort):
    out, summary, _ = cohort
    manifest = pd.read_csv(out / "manifest.csv")
    assert (manifest.loc[manifest["site"] == "site3", "group"] == "control").all()
    assert (manifest.loc[manifest["site"] == "site2", "group"] == "als").all()
    assert summary["sites"]["site3"]["patients"] == 0 and summary["sites"]["site2"]["controls"] == 0
    mixed = manifest[manifest["site"] == "site1"]["group"]
    assert {"als", "control"} <= set(mixed)


def test_effects_measured_from_written_label_maps(cohort):
    out, _, healthy = cohort
    truth = pd.read_csv(out / "truth.csv")
    manifest = read_manifest(out / "manifest.csv").set_index("subject")
    sources = healthy.set_index("subject")
    rows = []
    for row in truth.itertuples():
        written = np.asarray(nib.load(manifest.at[row.subject, "mask"]).dataobj)
        original = np.asarray(nib.as_closest_canonical(nib.load(sources.at[row.source_subject, "mask"])).dataobj)
        volume = lambda labels, ids: np.isin(labels, ids).sum()  # noqa: E731
        rows.append(
            {
                "group": row.group,
                "severity": 0.0 if row.group == "control" else row.severity,
                "ventricles": volume(written, landmarks.LATERAL_VENTRICLES) / volume(original, landmarks.LATERAL_VENTRICLES) - 1,
                "precentral": volume(written, landmarks.PRECENTRAL) / volume(original, landmarks.PRECENTRAL) - 1,
            }
        )
    measured = pd.DataFrame(rows)
    controls, patients = measured[measured["group"] == "control"], measured[measured["group"] == "als"]
    # Controls: only the scanner's small rigid jitter (nearest-neighbour relabelling noise).
    assert controls[["ventricles", "precentral"]].abs().max().max() < 0.04
    # Patients: ventricles grow and precentral gyri shrink more with higher severity.
    assert patients["severity"].corr(patients["ventricles"], method="spearman") > 0.6
    assert patients["severity"].corr(patients["precentral"], method="spearman") < -0.4
    severe = patients[patients["severity"] > 0.5]
    assert (severe["ventricles"] > controls["ventricles"].max()).all()


def test_sites_differ_more_than_the_disease_shifts_the_image(cohort):
    out, summary, _ = cohort
    effect = summary["site_effect"]
    assert effect["between_site_range_delivered"] > abs(effect["disease_shift_mean"])
    intensity = effect["brain_intensity_median_by_site"]
    assert max(intensity.values()) > 1.3 * min(intensity.values())  # gain alone: ignoring site hurts


def test_same_seed_is_byte_identical_and_seeds_differ(ixi_dir, tmp_path):
    healthy = _healthy_manifest(ixi_dir, tmp_path / "healthy", 4)
    runs = {}
    for name, seed, jobs in (("a", 11, 1), ("b", 11, 2), ("c", 12, 1)):
        config = CohortConfig(sites=2, seed=seed, patients=2, jobs=jobs, figure=False)
        generate_cohort(healthy, tmp_path / name, config)
        runs[name] = tmp_path / name
    for file in ("manifest.csv", "truth.csv", "sites/site1/manifest.csv"):
        assert _digest(runs["a"] / file) == _digest(runs["b"] / file), file
    images = sorted(p.relative_to(runs["a"]) for p in (runs["a"] / "images").rglob("*.nii.gz"))
    assert len(images) == 8
    for image in images:
        assert _digest(runs["a"] / image) == _digest(runs["b"] / image), image
    assert _digest(runs["a"] / "truth.csv") != _digest(runs["c"] / "truth.csv")
    assert json.loads((runs["a"] / "cohort.json").read_text()) == json.loads((runs["b"] / "cohort.json").read_text())


def test_missing_mask_column_is_a_clear_error(ixi_dir, tmp_path, capsys):
    healthy = _healthy_manifest(ixi_dir, tmp_path / "healthy", 3, with_mask=False)
    with pytest.raises(ManifestError, match="mask"):
        generate_cohort(healthy, tmp_path / "out", CohortConfig(sites=1))
    code = cli.main(["cohort", "--healthy", str(healthy), "--out", str(tmp_path / "out"), "--sites", "1"])
    assert code == 1
    assert "needs a 'mask' column" in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_failed_segmentation_is_left_out_and_listed(ixi_dir, tmp_path):
    from ndae.cohort.source import usable_subjects

    healthy = pd.read_csv(_healthy_manifest(ixi_dir, tmp_path / "healthy", 3))
    source = nib.load(healthy.at[0, "mask"])
    data = np.asarray(source.dataobj).copy()
    data[np.isin(data, landmarks.PRECENTRAL_LEFT)] = 0  # as in a real IXI failure
    nib.save(nib.Nifti1Image(data, source.affine), tmp_path / "broken.nii.gz")
    healthy.at[0, "mask"] = str(tmp_path / "broken.nii.gz")
    kept, excluded = usable_subjects(healthy)
    assert list(kept["subject"]) == list(healthy["subject"][1:])
    assert list(excluded) == [healthy.at[0, "subject"]] and "183" in excluded[healthy.at[0, "subject"]]


def test_impossible_site_plan_is_a_clear_error(ixi_dir, tmp_path):
    healthy = _healthy_manifest(ixi_dir, tmp_path / "healthy", 4)
    with pytest.raises(Exception, match="site-sizes"):
        generate_cohort(healthy, tmp_path / "out", CohortConfig(sites=2, site_sizes=[3, 3]))
    with pytest.raises(Exception, match="not one of the sites"):
        generate_cohort(healthy, tmp_path / "out", CohortConfig(sites=2, controls_only_site="site9"))
