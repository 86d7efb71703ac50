"""--patients-per-anatomy K: K patients from each patient anatomy (own draws, own images), controls
unchanged, copy 1 = the K = 1 cohort; survival redrawn from the stored model; completion marker."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from ndae import cli
from ndae.cohort import CohortConfig, generate_cohort
from ndae.cohort import generate as generate_module
from ndae.cohort.seeds import survival_stream
from ndae.cohort.store import CohortFolderError, CohortMismatchError, IncompleteCohortError, check_complete
from ndae.cohort.survival import redraw_survival
from tests.test_cohort_generate import _healthy_manifest

SEED, K = 5, 3
SAME_PER_COPY = ["severity", "onset", "risk", "event_time", "censor_time", "time", "event", "site", "group",
                 "age", "sex", "onset_region", "onset_side", "asymmetry", "min_jacobian", "brain_intensity"]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cohorts(ixi_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("copies")
    healthy = _healthy_manifest(ixi_dir, root / "healthy", 5)
    made = {}
    for k in (1, K):
        config = CohortConfig(sites=2, seed=SEED, patients=2, patients_per_anatomy=k, figure=False)
        generate_cohort(healthy, root / f"k{k}", config)
        made[k] = root / f"k{k}"
    return healthy, made


def _read(folder):
    truth = pd.read_csv(folder / "truth.csv")
    manifest = pd.read_csv(folder / "manifest.csv").set_index("subject")
    truth["image_sha"] = [_digest(folder / manifest.at[s, "image"]) for s in truth["subject"]]
    truth["mask_sha"] = [_digest(folder / manifest.at[s, "mask"]) for s in truth["subject"]]
    return truth, json.loads((folder / "cohort.json").read_text())


def test_each_patient_anatomy_gives_k_patients_with_their_own_draws_and_images(cohorts):
    _, made = cohorts
    truth, summary = _read(made[K])
    patients, controls = truth[truth["group"] == "als"], truth[truth["group"] == "control"]
    assert summary["patients_per_anatomy"] == K and summary["patient_anatomies"] == 2
    assert len(patients) == summary["patients"] == K * 2 and controls["source_subject"].is_unique
    assert truth["subject"].is_unique
    for source, copies in patients.groupby("source_subject"):
        assert len(copies) == K, source
        assert copies["site"].nunique() == 1  # an anatomy's patients stay in its site
        assert copies["severity"].nunique() == K and copies["event_time"].nunique() == K
        assert copies["image_sha"].nunique() == K  # each patient its own rendered image
    assert set(patients["source_subject"]).isdisjoint(controls["source_subject"])
    # Models never see the source anatomy: it is in truth.csv only.
    assert "source_subject" not in pd.read_csv(made[K] / "manifest.csv").columns


def test_copy_one_is_the_one_patient_cohort_and_controls_are_unchanged(cohorts):
    _, made = cohorts
    one, _ = _read(made[1])
    many, _ = _read(made[K])
    assert one["source_subject"].is_unique
    for row in one.itertuples():
        candidates = many[many["source_subject"] == row.source_subject]
        same = [
            c for c in candidates.itertuples()
            if all(pd.isna(getattr(row, col)) and pd.isna(getattr(c, col)) or getattr(row, col) == getattr(c, col)
                   for col in SAME_PER_COPY + ["image_sha", "mask_sha"])
        ]
        assert len(same) == 1, (row.source_subject, row.group)


def test_redraw_with_the_cohort_stream_reproduces_its_survival(cohorts):
    _, made = cohorts
    truth = pd.read_csv(made[1] / "truth.csv")
    summary = json.loads((made[1] / "cohort.json").read_text())
    # Patients in source order (the healthy manifest's subjects, sorted), as the generator drew them.
    patients = truth[truth["group"] == "als"].sort_values("source_subject")
    time, event = redraw_survival(summary, patients, survival_stream(SEED))
    np.testing.assert_allclose(time, patients["time"], rtol=1e-5)  # truth.csv keeps 6 digits
    np.testing.assert_array_equal(event, patients["event"])
    other, _ = redraw_survival(summary, patients, np.random.default_rng(1))
    assert not np.allclose(other, patients["time"], rtol=1e-3)


def test_complete_cohort_passes_and_changed_parameters_are_named(cohorts, tmp_path):
    healthy, made = cohorts
    expected = {"sites": 2, "seed": SEED, "patients-per-anatomy": K, "healthy_manifest": healthy}
    assert check_complete(made[K], expected)["complete"] is True
    assert check_complete(made[K])["patients"] == 2 * K
    with pytest.raises(CohortMismatchError, match=rf"{made[1]}.*seed {SEED}, not {SEED + 1}"):
        check_complete(made[1], {"seed": SEED + 1, "sites": 2})
    with pytest.raises(CohortMismatchError, match=rf"patients-per-anatomy 1, not {K}") as error:
        check_complete(made[1], {"patients_per_anatomy": K, "sites": 3})
    assert "sites 2, not 3" in str(error.value)
    edited = pd.read_csv(healthy)
    edited.loc[0, "age"] += 1
    edited.to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(CohortMismatchError, match="healthy manifest"):
        check_complete(made[1], {"healthy_manifest": tmp_path / "manifest.csv"})
    with pytest.raises(CohortFolderError, match="unknown parameter 'rounds'"):
        check_complete(made[1], {"rounds": 3})


def test_truncated_cohort_folder_is_not_complete(cohorts, tmp_path):
    _, made = cohorts
    manifest = pd.read_csv(made[1] / "manifest.csv")
    cases = {
        "image": (lambda d: (d / manifest.at[2, "image"]).unlink(), manifest.at[2, "image"]),
        "site": (lambda d: (d / "sites" / "site2" / "manifest.csv").unlink(), "sites/site2/manifest.csv"),
        "truth": (lambda d: (d / "truth.csv").unlink(), "truth.csv"),
        "marker": (lambda d: (d / "cohort.json").unlink(), "no cohort.json"),
        "flag": (lambda d: (d / "cohort.json").write_text('{"sites": {}, "parameters": {}}'), "complete"),
        "json": (lambda d: (d / "cohort.json").write_text('{"sites": '), "unreadable"),
    }
    for name, (damage, named) in cases.items():
        folder = tmp_path / name
        shutil.copytree(made[1], folder)
        check_complete(folder)
        damage(folder)
        with pytest.raises(IncompleteCohortError, match=str(folder)) as error:
            check_complete(folder)
        assert named in str(error.value), name
    with pytest.raises(IncompleteCohortError, match="no cohort folder"):
        check_complete(tmp_path / "nowhere")


def test_generation_killed_half_way_leaves_no_marker(cohorts, tmp_path, monkeypatch):
    healthy, made = cohorts
    folder = tmp_path / "rerun"
    shutil.copytree(made[1], folder)  # a complete cohort, regenerated with another seed ...
    real, calls = generate_module.render_subject, []

    def killed_after_one(task):
        if calls:
            raise KeyboardInterrupt  # ... and killed after one image
        calls.append(task["subject"])
        return real(task)

    monkeypatch.setattr(generate_module, "render_subject", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        generate_cohort(healthy, folder, CohortConfig(sites=2, seed=SEED + 1, patients=2, figure=False))
    assert len(calls) == 1
    with pytest.raises(IncompleteCohortError, match="no cohort.json"):
        check_complete(folder)


def test_cli_refuses_an_existing_cohort_before_writing(cohorts, tmp_path, capsys):
    healthy, made = cohorts
    folder = tmp_path / "existing"
    shutil.copytree(made[1], folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    code = cli.main(["cohort", "--healthy", str(healthy), "--out", str(folder), "--sites", "2", "--seed", "9"])
    assert code == 1 and "already holds a cohort" in capsys.readouterr().err
    assert before == {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_bad_patients_per_anatomy_is_refused(cohorts, tmp_path):
    healthy, _ = cohorts
    for bad in (0, -1, 1.5):
        with pytest.raises(Exception, match="patients-per-anatomy"):
            generate_cohort(healthy, tmp_path / "out", CohortConfig(sites=2, patients_per_anatomy=bad))
    assert not (tmp_path / "out").exists()
