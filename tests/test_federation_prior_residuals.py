"""The regional deviations from the diffusion prior in a federated run (non-private), in process.

The sites send only summed statistics of their controls' residual region means; the server's fit
from their sum must be the pooled (centralised) fit, and each site's patients must get the
z-scores the centralised pipeline gives them (`ndae.deviation.prior_residuals` on the pooled data).
The pooled and federated runs checked here are the ones tests/test_federation.py checks
(tests/federation_runs.py): the prior feature is in their Cox model, the voxel-wise baseline on.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ndae.errors import NdaeError
from ndae.federation.config import FederationConfig
from ndae.federation.server.errors import FederationError
from ndae.federation.server.prior_residual_phase import survival_features

from tests.federation_runs import PRIOR_FEATURES as FEATURES, SITES, run_in_process


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cohort(federation_cohort):
    return federation_cohort


def _run(cohort, name, **overrides):
    return run_in_process(cohort, name, **{"survival_features": FEATURES, **overrides})


@pytest.fixture(scope="module")
def pooled_run(pooled_federation):
    # shared with tests/test_federation.py: the voxel-wise baseline is on in it too
    return pooled_federation


def _central(cohort, run):
    """The centralised pipeline's raw region means of every subject, from the run's DAE and its
    normative model of z_sem, on the pooled manifest (`prior_residual_features`)."""
    from ndae.data.dataset import load_slice_dataset
    from ndae.deviation.prior_residuals import prior_residual_features
    from ndae.normative import NormativeModel

    manifest, cache = cohort / "cohort" / "manifest.csv", cohort / "central-cache"
    data = load_slice_dataset(manifest, cache, progress=False)
    raw, _ = prior_residual_features(run, manifest, cache, NormativeModel.load(run / "normative"))
    frame = pd.DataFrame({"subject": data.subjects.astype(str), "site": data.sites.astype(str), "age": data.ages,
                          "sex": data.sexes.astype(str), "group": data.groups})
    return frame.merge(raw, on="subject", validate="one_to_one")


def test_summed_site_statistics_equal_the_pooled_fit_and_patients_get_the_central_z_scores(pooled_run, cohort):
    from ndae.normative import NormativeModel, SufficientStats

    summary, run = pooled_run
    central = _central(cohort, run)
    regions = summary["prior_residuals"]["regions"]
    assert regions == [c for c in central.columns if c.startswith("prior_")]  # both conditionings, same order
    controls = central[central["group"] == "control"].reset_index(drop=True)
    pooled = SufficientStats.from_data(controls, controls[regions].to_numpy(float), site_column="site").to_arrays()
    with np.load(run / "normative_prior" / "sufficient_stats.npz") as saved:
        summed = {k: saved[k] for k in saved.files}
    assert summed["n"] == 21 and list(summed["site_names"]) == list(SITES)
    for key in ("n", "xtx", "xty", "sum_y", "sum_y2", "site_n", "site_sum_x", "site_sum_y"):
        np.testing.assert_allclose(summed[key], pooled[key], rtol=1e-5, atol=1e-7, err_msg=key)
    # the centralised pipeline fits each conditioning's model apart (ndae.evaluation.pipeline,
    # standardised_regions); the federation fits one model of both: per region, the same fit
    patients = central[central["group"] == "als"].reset_index(drop=True)
    federated_model = NormativeModel.load(run / "normative_prior")
    deviations = pd.read_csv(run / "deviations.csv").set_index("subject").loc[patients["subject"]]
    own = [c for c in regions if c.startswith("prior_own_")]
    for columns in ([c for c in regions if c not in own], own):
        central_model = NormativeModel().fit(controls, controls[columns].to_numpy(float), columns)
        expected = central_model.z_scores(patients, patients[columns].to_numpy(float))
        np.testing.assert_allclose(deviations[[f"z_{c}" for c in columns]].to_numpy(), expected, rtol=1e-4, atol=1e-4)
        index = [regions.index(c) for c in columns]
        np.testing.assert_allclose(federated_model.beta[index], central_model.beta, rtol=1e-4, atol=1e-4)


def test_the_cox_model_takes_the_prior_feature_and_the_report_says_so(pooled_run):
    summary, run = pooled_run
    assert list(summary["survival"]["coef"])[:2] == ["mahalanobis", "z_prior_precentral"]
    swap = summary["survival"]["prior_swap"]
    assert swap["subjects"] == 39 and swap["sites"] == list(SITES) and np.isfinite(swap["relative_change"])
    report = (run / "report.md").read_text()
    assert "## Regional deviations from the diffusion prior" in report
    assert "In the survival model: **z_prior_precentral**" in report
    assert "Swap test (mean over 39 subjects" in report
    assert f"moves the denoiser's x̂₀ by {100 * swap['relative_change']:.2g} % of the residual's size" in report
    # the report opens with its verdict: what the imaging adds, and whether the decoder uses z_sem
    head = report.splitlines()[2:4]
    assert head[0].startswith("**Verdict (") and head[1].startswith("z_sem use: ")
    phases = [json.loads(line)["phase"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert phases == ["dae", "normative", "prior_residuals", "voxelwise", "survival"]


def test_federated_survival_with_prior_features_equals_pooled_and_keeps_every_row(pooled_run, federated_federation):
    summary, run = pooled_run
    federated, folder = federated_federation  # the same global model: training is resumed
    assert list(federated["survival"]["coef"]) == list(summary["survival"]["coef"])
    np.testing.assert_allclose(list(federated["survival"]["coef"].values()),
                               list(summary["survival"]["coef"].values()), rtol=1e-7, atol=1e-5)
    assert not (folder / "deviations.csv").exists()  # no patient row left a site
    assert federated["survival"]["prior_swap"]["relative_change"] == pytest.approx(
        summary["survival"]["prior_swap"]["relative_change"])


def test_the_prior_step_can_be_turned_off_and_prior_features_then_refused(cohort):
    with pytest.raises(NdaeError, match="'survival-features' names prior residual features .*'prior-residuals' = false"):
        FederationConfig.from_run_config({"prior-residuals": False, "survival-features": "cosine,prior"})
    summary, run = _run(cohort, "off", rounds=0, prior_residuals=False, survival_features="cosine",
                        survival_mode="pooled")
    assert summary["prior_residuals"] == {"not_computed": "run config prior-residuals = false"}
    assert not (run / "normative_prior").exists()
    assert not [c for c in pd.read_csv(run / "deviations.csv").columns if "prior" in c]
    assert "Not computed: run config prior-residuals = false." in (run / "report.md").read_text()


REGIONS = [f"prior_{r}" for r in ("precentral", "frontal")] + [f"prior_own_{r}" for r in ("precentral", "frontal")]


def test_prior_and_prior_own_expand_to_every_region_of_their_kind():
    info = {"regions": REGIONS}
    assert survival_features(["cosine", "prior"], info) == (["cosine", "z_prior_precentral", "z_prior_frontal"], "")
    assert survival_features(["prior-own", "z_prior_frontal"], info)[0] == [
        "z_prior_own_precentral", "z_prior_own_frontal", "z_prior_frontal"]
    with pytest.raises(FederationError, match="'z_prior_cerebellum' is not a prior residual region"):
        survival_features(["z_prior_cerebellum"], info)
    kept, why = survival_features(["cosine", "prior"], {"not_computed": "site site2: refused"})
    assert kept == ["cosine"] and "['prior'] left out of the survival model: site site2: refused" in why
    with pytest.raises(FederationError, match="names only prior residual features"):
        survival_features(["prior"], {"not_computed": "site site2: refused"})
