"""`ndae cohort --disease`: named disease settings. The same seed gives the same people (controls'
images byte-identical, every patient's severity, onset and survival the same); only what the
disease does to the patients' images differs, and each setting does what its name says."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from ndae import cli
from ndae.cohort import CohortConfig, generate_cohort
from ndae.cohort.disease import DISEASE_SETTINGS, DiseaseModel, disease_setting
from ndae.cohort.store import CohortMismatchError, check_complete
from tests.test_cohort_generate import _healthy_manifest

SEED = 3
PEOPLE = ["subject", "severity", "onset", "risk", "event_time", "censor_time", "time", "event", "site", "group", "age",
          "sex", "onset_region", "onset_side", "asymmetry", "source_subject"]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cohorts(ixi_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("disease-settings")
    healthy = _healthy_manifest(ixi_dir, root / "healthy", 4)
    made = {}
    for name in ("als", "cortex-only", "mild"):
        config = CohortConfig(sites=2, seed=SEED, patients=2, figure=False, disease=disease_setting(name),
                              disease_name=name)
        generate_cohort(healthy, root / name, config)
        made[name] = root / name
    return healthy, made


def _truth(folder):
    return pd.read_csv(folder / "truth.csv", dtype={"subject": str, "source_subject": str})


def test_same_seed_same_people_only_the_patients_images_differ(cohorts):
    _, made = cohorts
    base = _truth(made["als"])
    manifest = pd.read_csv(made["als"] / "manifest.csv", dtype={"subject": str}).set_index("subject")
    for name in ("cortex-only", "mild"):
        other = _truth(made[name])
        pd.testing.assert_frame_equal(base[PEOPLE], other[PEOPLE])
        for subject, group in zip(base["subject"], base["group"]):
            same = _sha(made["als"] / manifest.at[subject, "image"]) == _sha(made[name] / manifest.at[subject, "image"])
            assert same == (group == "control"), (name, subject, group)


def test_each_setting_changes_what_its_name_says(cohorts):
    _, made = cohorts
    truths = {name: _truth(folder) for name, folder in made.items()}
    patients = {name: t[t["group"] == "als"].set_index("subject") for name, t in truths.items()}
    als, cortex, mild = patients["als"], patients["cortex-only"], patients["mild"]
    assert (als["severity"] > 0.05).all()
    # the default grows the ventricles and shrinks the brain; cortex-only does neither
    assert (als["ventricles_volume_change"] > 0).all()
    assert np.abs(cortex["ventricles_volume_change"]).max() < 0.25 * als["ventricles_volume_change"].min()
    assert np.abs(cortex["brain_volume_change"]).max() < 0.25 * np.abs(als["brain_volume_change"]).min()
    # ... and keeps the motor cortex's partial-volume loss (its T1 signal towards CSF); at 2 mm the
    # focal thinning hardly moves the label volume, the global shrinkage does (measured)
    drop = lambda t: t["precentral_to_white_matter_disease"] - t["precentral_to_white_matter_source"]
    assert (drop(cortex) < -0.02).all()
    # at least half the default's (the default's tract drop darkens the white matter this ratio is
    # taken against, so the two need not be equal)
    assert (drop(cortex).abs() >= 0.5 * drop(als).abs()).all()
    # the tract is left alone in cortex-only
    tract = lambda t: (t["internal_capsule_to_white_matter_disease"] - t["internal_capsule_to_white_matter_source"]).abs()
    assert tract(cortex).mean() < 0.5 * tract(als).mean()
    # mild: every effect smaller than the default's, of the same sign
    for name, effect in (("ventricles", lambda t: t["ventricles_volume_change"]), ("brain", lambda t: t["brain_volume_change"]),
                         ("precentral signal", drop)):
        assert (np.sign(effect(mild)) == np.sign(effect(als))).all(), name
        assert (effect(mild).abs() < effect(als).abs()).all(), name


def test_cohort_json_records_the_setting_and_check_complete_compares_it(cohorts):
    _, made = cohorts
    for name, folder in made.items():
        marker = json.loads((folder / "cohort.json").read_text())
        assert marker["parameters"]["disease"] == name
        assert marker["disease_model"] == json.loads(json.dumps(DISEASE_SETTINGS[name]().__dict__))
        check_complete(folder, {"disease": name, "seed": SEED})
    with pytest.raises(CohortMismatchError, match="disease 'cortex-only', not 'als'"):
        check_complete(made["cortex-only"], {"disease": "als"})


def test_a_custom_model_is_recorded_as_custom(cohorts, tmp_path):
    healthy, _ = cohorts
    config = CohortConfig(sites=1, seed=SEED, patients=1, figure=False, max_subjects=3,
                          disease=DiseaseModel(global_shrink=0.03))
    generate_cohort(healthy, tmp_path / "custom", config)
    assert json.loads((tmp_path / "custom" / "cohort.json").read_text())["parameters"]["disease"] == "custom"


def test_unknown_setting_is_refused_before_anything_is_written(cohorts, tmp_path, capsys):
    healthy, _ = cohorts
    out = tmp_path / "never"
    code = cli.main(["cohort", "--healthy", str(healthy), "--out", str(out), "--disease", "ventricles-only"])
    assert code != 0
    err = capsys.readouterr().err
    assert "--disease 'ventricles-only'" in err and "cortex-only" in err and "Traceback" not in err
    assert not out.exists()
