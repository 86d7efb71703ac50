"""A federated Cox model with a monotone likelihood (no finite MLE) is a finding, not a crash: the
run completes, the report's verdict says why no finite model exists, and everything else the run
made (normative model, score distributions, privacy ledgers, audit) is there.

The refusal is the fitter's own: where the run fits the model named in a test, the fitter is given
sites whose first covariate orders the events perfectly (`_separated`), so the real check refuses.
No DAE is trained (rounds = 0)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ndae.errors import NdaeError
from ndae.federation.config import FederationConfig
from ndae.federation.inprocess import InProcessGrid
from ndae.federation.server.phases import run_federation
from ndae.privacy.audit import audit_run
from ndae.survival.federated_cox import FederatedCoxFitter, site_partial_likelihood_terms
from ndae.testing.synthetic_cohort import make_synthetic_cohort

SITES = ("site1", "site2", "site3")
BUDGET = 50.0
FEATURES = "cosine,mahalanobis"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("monotone")
    make_synthetic_cohort(root / "cohort", sites=3, controls_per_site=6, patients_per_site=4, seed=2)
    return root


def _separated(covariates: list[str]) -> dict:
    """Sites whose first covariate orders the events perfectly (higher value, earlier death)."""
    rng = np.random.default_rng(0)
    sites = {}
    for index in range(3):
        frame = pd.DataFrame({c: rng.normal(size=20) for c in covariates})
        frame["time"] = np.argsort(np.argsort(-frame[covariates[0]].to_numpy())) + 1.0 + rng.uniform(0, 0.1, 20)
        frame["event"] = 1

        def terms(beta, frame=frame):
            full = site_partial_likelihood_terms(frame, beta, covariates)
            return {k: v for k, v in full.items() if k not in ("n", "events")}

        sites[f"site_{index}"] = terms
    return sites


def _fitter_refusing(monkeypatch, which: str, error: Exception | None = None) -> None:
    """The federated fitter refuses the `which` model ("full": the one with the deviation scores,
    "covariates-only": the one without): by a monotone likelihood, or by `error` where given."""
    original = FederatedCoxFitter.fit
    features = set(FEATURES.split(","))

    def fit(self, sites, covariates, *args, **kwargs):
        full = bool(features & set(covariates))
        if full == (which == "full"):
            if error is not None:
                raise error
            # the fitter's own refusal of a monotone likelihood, on covariates named as the run's
            ordered = [next(c for c in covariates if c in features) if full else covariates[0]]
            ordered += [c for c in covariates if c not in ordered]
            return original(self, _separated(ordered), covariates=ordered)
        return original(self, sites, covariates, *args, **kwargs)

    monkeypatch.setattr(FederatedCoxFitter, "fit", fit)


def _run(cohort, name, private: bool):
    run_dir = cohort / name
    # Neither the prior residual step nor the sites' example maps (drawn on their disks) bear on the Cox fit.
    settings = dict(rounds=0, batch_size=4, seed=3, survival_mode="federated", survival_features=FEATURES,
                    voxelwise_baseline=False, prior_residuals=False, cache_dir=str(cohort / "cache"))
    node_config = {"example-maps": "false"}
    if private:
        settings["privacy"] = True
        node_config.update({"privacy-dir": str(run_dir / "privacy"), "budget-epsilon": BUDGET,
                            "max-epsilon-per-run": BUDGET})
    config = FederationConfig(run_dir=str(run_dir), **settings)
    manifests = [cohort / "cohort" / "sites" / s / "manifest.csv" for s in SITES]
    grid = InProcessGrid(manifests, config.to_run_config(), node_config=node_config)
    return run_federation(grid, config, log=lambda _: None), run_dir


@pytest.fixture(scope="module")
def refused_run(cohort):
    with pytest.MonkeyPatch.context() as monkeypatch:
        _fitter_refusing(monkeypatch, "full")
        return _run(cohort, "refused", private=True)


def test_a_monotone_full_model_leaves_the_private_run_complete_and_says_why(refused_run):
    summary, run = refused_run
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    metrics = json.loads((run / "survival" / "metrics.json").read_text())
    refusal = metrics["cox_refused"]
    assert "monotone likelihood" in refusal and "\n" not in refusal
    assert "coef" not in metrics and "c_index_within_site" not in metrics
    assert summary["survival"]["cox_refused"] == refusal
    # what needs no beta is still there: the scores' distributions and the counts
    assert metrics["score_distributions"] and metrics["features"] == FEATURES.split(",")
    assert "the full Cox model has no finite fit" in metrics["added_value"]["not_computed"]
    line = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(x).get("phase") == "survival"][0]
    assert line["cox_refused"] == refusal and line["coef"] is None
    report = (run / "report.md").read_text()
    verdict = report.split("## Sites")[0]
    assert "No finite Cox model" in verdict and refusal in verdict
    survival_section = report.split("## Survival")[1]
    assert refusal in survival_section and "| covariate | coef |" not in survival_section
    assert (run / "report.html").exists() and (run / "normative").is_dir()


def test_the_refused_run_keeps_its_privacy_ledgers_and_ndae_audit_reads_them(refused_run, capsys):
    from ndae.cli import main

    summary, run = refused_run
    heads = json.loads((run / "privacy" / "heads.json").read_text())
    assert sorted(heads) == list(SITES) == sorted(summary["privacy"])
    assert audit_run(run, {s: (BUDGET, heads[s]["delta"]) for s in SITES})["ok"]
    assert main(["audit", str(run)]) == 0
    assert "budget epsilon 50" in capsys.readouterr().out


def test_a_monotone_covariates_only_model_keeps_the_full_model(cohort, monkeypatch):
    _fitter_refusing(monkeypatch, "covariates-only")
    summary, run = _run(cohort, "reference-refused", private=False)
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    survival = json.loads((run / "survival" / "metrics.json").read_text())
    assert "cox_refused" not in survival and set(survival["coef"]) >= set(FEATURES.split(","))
    refusal = survival["covariates_only"]["cox_refused"]
    assert "monotone likelihood" in refusal and "coef" not in survival["covariates_only"]
    assert refusal in survival["added_value"]["not_computed"]
    assert "within_site" not in survival["added_value"]
    report = (run / "report.md").read_text()
    assert "| covariate | coef |" in report and refusal in report


def test_any_other_refusal_of_the_fitter_still_fails_the_run(cohort, monkeypatch):
    _fitter_refusing(monkeypatch, "full", NdaeError("federated Cox: site 'site1' sent no 'gradient'"))
    with pytest.raises(NdaeError, match="sent no 'gradient'"):
        _run(cohort, "other-error", private=False)
    status = json.loads((cohort / "other-error" / "status.json").read_text())
    assert status["status"] == "failed"
