"""Federated phases through the real ClientApp/ServerApp code, in process (no Ray, no SuperLink).

`InProcessGrid` hands each message to the same `ClientApp` Flower would run at a site; the
ServerApp body `run_federation` is the same function `server/server_app.py` calls.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ndae.errors import NdaeError
from ndae.federation.config import FederationConfig
from ndae.federation.records import arrays_to_record, frame_to_record, record_to_arrays, record_to_frame
from ndae.federation.server.phases import FederationError, SimulatedKill

from tests.federation_runs import SITES, VOXELWISE, run_in_process


@pytest.fixture(scope="module")
def cohort(federation_cohort):
    return federation_cohort


def _run(cohort, name, **overrides):
    return run_in_process(cohort, name, **overrides)


@pytest.fixture
def test_hooks(monkeypatch):
    """The fault-injection keys are honoured only with NDAE_TEST_HOOKS=1 (ndae.federation.config)."""
    monkeypatch.setenv("NDAE_TEST_HOOKS", "1")


@pytest.fixture(scope="module")
def pooled_run(pooled_federation):
    # shared with tests/test_federation_prior_residuals.py: the prior feature is in its Cox model too
    return pooled_federation


def test_records_round_trip_keep_dtypes_and_0d_arrays():
    frame = pd.DataFrame({"subject": ["a", "b"], "time": [1.5, 2.0], "event": [1, 0]})
    back = record_to_frame(frame_to_record(frame))
    assert list(back.columns) == ["subject", "time", "event"] and back["subject"].tolist() == ["a", "b"]
    arrays = record_to_arrays(arrays_to_record({"design": np.array('{"a": 1}'), "x": np.arange(3.0)}))
    assert arrays["design"].shape == () and str(arrays["design"]) == '{"a": 1}'
    assert arrays["x"].dtype == np.float64


def test_run_config_refuses_unknown_keys_and_bad_values():
    with pytest.raises(NdaeError, match="unknown run config key 'round'"):
        FederationConfig.from_run_config({"round": 3})
    with pytest.raises(NdaeError, match="strategy"):
        FederationConfig.from_run_config({"strategy": "fedsgd"})
    assert FederationConfig.from_run_config({"local-epochs": 2, "resume": "false"}).resume is False
    with pytest.raises(NdaeError, match="'audit-canaries' must be >= 0"):
        FederationConfig.from_run_config({"audit-canaries": -4})


def test_run_directory_follows_the_contract(pooled_run):
    summary, run = pooled_run
    for path in ("config.json", "dae/checkpoint.pt", "normative/model.npz", "normative/model.json", "deviations.csv",
                 "survival/cox.json", "survival/hazard_ratios.csv", "survival/km_risk_within_site_tertiles.png",
                 "survival/km_risk.png", "report.md", "metrics.jsonl", "status.json"):
        assert (run / path).exists(), path
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    report = (run / "report.md").read_text()
    assert "C-index" in report and "None: every site answered" in report
    # each hazard ratio with its Wald 95 % interval, exp(coef ± 1.96 se)
    for name, coef in summary["survival"]["coef"].items():
        se = summary["survival"]["se"][name]
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
        assert row.rstrip(" |").endswith(f"{np.exp(coef - 1.96 * se):.3f}–{np.exp(coef + 1.96 * se):.3f}"), row
    deviations = pd.read_csv(run / "deviations.csv")
    assert len(deviations) == 18 and deviations["subject"].is_unique and "cosine" in deviations
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rounds] == ["dae", "normative", "prior_residuals", "voxelwise", "survival"]
    assert sorted(rounds[0]["sites"]) == list(SITES)
    assert 0.0 <= summary["survival"]["c_index_within_site"] <= 1.0


def test_a_run_leaves_no_state_beyond_what_federation_init_declares(pooled_federation):
    """The phases return their results (the summary is assembled from them) instead of leaving
    attributes on the Federation; the later phases get a PhaseContext, not the Federation."""
    from ndae.federation.server.phases import Federation
    from tests.federation_runs import FEDERATIONS

    summary, _ = pooled_federation
    federation = FEDERATIONS["pooled"]
    fresh = Federation(federation.grid, federation.config, log=lambda _: None)
    assert set(vars(federation)) == set(vars(fresh))
    assert fresh.dae_config is None and federation.dae_config is not None
    assert summary["latent_probe"] and "regions" in summary["prior_residuals"] and "voxels_modelled" in summary["voxelwise"]


def test_federated_normative_moments_equal_central_ones(pooled_run, cohort):
    """Sum of the sites' statistics == statistics of the pooled controls, same global model."""
    from ndae.model import encode, load_checkpoint
    from ndae.normative import NormativeModel, SufficientStats

    _, run = pooled_run
    ema = load_checkpoint(run / "dae" / "checkpoint.pt").ema.model
    data = _central_data(cohort)
    control = data.groups == "control"
    covariates = pd.DataFrame({"site": data.sites[control], "age": data.ages[control], "sex": data.sexes[control]})
    z_sem = encode(ema, data.images[control]).numpy().astype(np.float64)
    central = SufficientStats.from_data(covariates, z_sem, site_column="site").to_arrays()
    with np.load(run / "normative" / "sufficient_stats.npz") as saved:
        federated = {k: saved[k] for k in saved.files}
    assert federated["n"] == 21
    for key in ("n", "xtx", "xty", "sum_y", "sum_y2", "yty", "site_n", "site_sum_x", "site_sum_y"):
        np.testing.assert_allclose(federated[key], central[key], rtol=1e-6, atol=1e-6, err_msg=key)
    assert list(federated["site_names"]) == list(SITES)
    fitted = NormativeModel.load(run / "normative")
    reference = NormativeModel().fit(covariates, z_sem)
    # the same sums (above, to 1e-6); the site-intercept EM stops at its tolerance (~1e-5 here)
    np.testing.assert_allclose(fitted.beta, reference.beta, rtol=1e-4, atol=1e-4)


def test_pooled_and_federated_survival_give_the_same_cox_coefficients(pooled_run, federated_federation):
    summary, run = pooled_run
    federated, federated_dir = federated_federation  # same global model: training is resumed, not redone
    assert federated["participation"] == summary["participation"]
    pooled_coef, federated_coef = summary["survival"]["coef"], federated["survival"]["coef"]
    assert list(pooled_coef) == list(federated_coef) and len(pooled_coef) >= 2
    np.testing.assert_allclose(list(federated_coef.values()), list(pooled_coef.values()), rtol=0, atol=1e-6)
    assert federated["survival"]["c_index_within_site"] == pytest.approx(summary["survival"]["c_index_within_site"])
    assert not (federated_dir / "deviations.csv").exists()  # no row left the sites
    assert federated["survival"]["newton_message_rounds"] >= 2
    # the voxel-wise baseline's Cox model too, and its paired within-site comparisons
    pooled_voxel, federated_voxel = summary["survival"]["voxelwise"], federated["survival"]["voxelwise"]
    assert list(pooled_voxel["coef"]) == list(federated_voxel["coef"])
    np.testing.assert_allclose(list(federated_voxel["coef"].values()), list(pooled_voxel["coef"].values()),
                               rtol=0, atol=1e-5)
    for name in ("vs_covariates", "ndae_vs_voxelwise"):
        assert federated_voxel["within_site"][name]["difference"] == pytest.approx(
            pooled_voxel["within_site"][name]["difference"], abs=1e-6)
    assert "cross_validated" not in federated_voxel  # the server holds no row to cross-validate on


def _central_data(cohort):
    from ndae.data.dataset import load_slice_dataset

    return load_slice_dataset(cohort / "cohort" / "manifest.csv", cohort / "central-cache", progress=False)


def test_the_federated_voxelwise_baseline_scores_patients_as_the_central_fit_does(pooled_run, cohort):
    """Summed per-voxel statistics -> the pooled fit; each site's patients scored against it."""
    from ndae.baselines.voxelwise import VoxelwiseNormativeBaseline
    from ndae.data.cache import load_prepared

    summary, run = pooled_run
    data = _central_data(cohort)
    frame = pd.DataFrame({"subject": data.subjects, "site": data.sites, "age": data.ages, "sex": data.sexes})
    control = np.asarray(data.groups) == "control"
    image = lambda subject: load_prepared(cohort / "central-cache", subject).image  # noqa: E731
    central = VoxelwiseNormativeBaseline(stride=2).fit(frame[control].reset_index(drop=True), image)
    expected = central.features(frame[~control].reset_index(drop=True), image).set_index("subject")
    federated = pd.read_csv(run / "deviations.csv").set_index("subject")
    columns = [c for c in expected.columns if c.startswith("z_voxel_")]
    assert len(columns) >= 9 and set(columns) <= set(federated.columns)
    np.testing.assert_allclose(federated.loc[expected.index, columns].to_numpy(), expected[columns].to_numpy(),
                               rtol=1e-6, atol=1e-6)
    assert summary["voxelwise"]["n_controls"] == 21 and summary["voxelwise"]["sites"] == list(SITES)
    report = (run / "report.md").read_text()
    assert "## Beside the voxel-wise normative baseline" in report
    within = summary["survival"]["voxelwise"]["within_site"]["vs_covariates"]
    assert f"{within['difference']:.3f} ({within['lower']:.3f} to {within['upper']:.3f})" in report


def test_the_age_probe_is_run_on_the_trained_and_the_initial_encoders_latents(pooled_run, cohort):
    """The probe the report shows is the one of the global EMA's z_sem and of the weights training
    started from, per site (the statistics-to-probe step itself: tests/test_normative_age_probe.py)."""
    from ndae.model import build_model, encode, load_checkpoint
    from ndae.normative import SufficientStats
    from ndae.normative.age_probe import site_out_age_probe

    summary, run = pooled_run
    checkpoint = load_checkpoint(run / "dae" / "checkpoint.pt")
    initial = build_model(checkpoint.config, seed=checkpoint.config.train.seed)
    data = _central_data(cohort)
    frame = pd.DataFrame({"site": data.sites, "age": data.ages, "sex": data.sexes})
    for name, model in (("trained", checkpoint.ema.model), ("init", initial)):
        stats = {}
        for site in SITES:
            rows = (np.asarray(data.groups) == "control") & (np.asarray(data.sites) == site)
            z_sem = encode(model, data.images[rows]).numpy().astype(np.float64)
            stats[site] = SufficientStats.from_data(frame[rows].reset_index(drop=True), z_sem, site_column="site")
        expected = site_out_age_probe(stats)
        assert summary["latent_probe"][name]["r"] == pytest.approx(expected["r"], abs=1e-5), name
        assert summary["latent_probe"][name]["rmse"] == pytest.approx(expected["rmse"], rel=1e-5), name
    assert summary["latent_probe"]["trained"]["r"] != pytest.approx(summary["latent_probe"]["init"]["r"], abs=1e-9)
    assert f"| trained (global EMA) | {summary['latent_probe']['trained']['r']:.3f} |" in (run / "report.md").read_text()


# Runs that check training and what follows a fault: survival fitted federated (no pooled
# bootstraps), no prior residuals (the shared runs above check both).
AFTER_TRAINING_CHEAP = {"survival_mode": "federated", "prior_residuals": False}


@pytest.mark.slow
def test_a_site_that_fails_a_round_is_dropped_and_reported(cohort, test_hooks):
    summary, run = _run(cohort, "dropout", rounds=2, fault_site="site2", fault_phase="train", fault_round=1,
                        **AFTER_TRAINING_CHEAP)
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rounds[0]["sites"] == ["site1", "site3"] and "site2" in rounds[0]["missing"]
    assert rounds[1]["sites"] == list(SITES)
    assert summary["participation"] == {"site1": 2, "site2": 1, "site3": 2}
    report = (run / "report.md").read_text()
    assert "| train | 1 | site2 | error: RuntimeError: injected fault at site 'site2'" in report


def test_too_few_sites_fails_the_run_and_says_so(cohort, test_hooks):
    with pytest.raises(FederationError, match="fewer than min-sites = 3"):
        _run(cohort, "failed", min_sites=3, fault_site="site1", fault_phase="site_info")
    status = json.loads((cohort / "failed" / "status.json").read_text())
    assert status["status"] == "failed" and "site1" in status["error"]


@pytest.mark.slow
def test_resume_after_a_killed_server_equals_an_uninterrupted_run(cohort, test_hooks):
    from ndae.model import load_checkpoint

    _run(cohort, "uninterrupted", rounds=2, **AFTER_TRAINING_CHEAP)
    with pytest.raises(SimulatedKill):
        _run(cohort, "resumed", rounds=2, stop_after_round=1, **AFTER_TRAINING_CHEAP)
    assert load_checkpoint(cohort / "resumed" / "dae" / "checkpoint.pt").extra["federation"]["round"] == 1
    _run(cohort, "resumed", rounds=2, **AFTER_TRAINING_CHEAP)
    a = load_checkpoint(cohort / "uninterrupted" / "dae" / "checkpoint.pt")
    b = load_checkpoint(cohort / "resumed" / "dae" / "checkpoint.pt")
    assert a.step == b.step and a.extra["federation"]["round"] == 2
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), name
    for x, y in zip(a.ema.model.state_dict().values(), b.ema.model.state_dict().values()):
        assert torch.equal(x, y)
    lines = [json.loads(line) for line in (cohort / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [x.get("round") for x in lines if x["phase"] == "dae"] == [1, 2]
    coef_a = json.loads((cohort / "uninterrupted" / "survival" / "cox.json").read_text())["coef"]
    coef_b = json.loads((cohort / "resumed" / "survival" / "cox.json").read_text())["coef"]
    assert coef_a == coef_b


# What these runs check is the DAE's aggregate. Several local steps: FedProx's proximal gradient
# mu·(w − w_global) is zero on a round's first step.
STRATEGY_RUN = {**AFTER_TRAINING_CHEAP, "local_epochs": 3}


@pytest.fixture(scope="module")
def fedavg_3_epochs(cohort):
    return _run(cohort, "fedavg-3-epochs", **STRATEGY_RUN)[1]


@pytest.mark.parametrize("strategy", ["fedadam", "fedprox"])
def test_fedadam_and_fedprox_complete_and_differ_from_fedavg(cohort, fedavg_3_epochs, strategy):
    """The selectable strategies really change the aggregate (not FedAvg under another name)."""
    from ndae.model import load_checkpoint

    fedavg_dir = fedavg_3_epochs
    _, run_dir = _run(cohort, strategy, strategy=strategy, proximal_mu=0.5, **STRATEGY_RUN)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "completed", status
    fedavg = load_checkpoint(fedavg_dir / "dae" / "checkpoint.pt").model.state_dict()
    other = load_checkpoint(run_dir / "dae" / "checkpoint.pt").model.state_dict()
    assert fedavg.keys() == other.keys()
    assert any(not torch.equal(fedavg[k], other[k]) for k in fedavg)


def test_a_voxelwise_baseline_that_cannot_be_fitted_leaves_the_ndae_run_complete(cohort, test_hooks):
    """The baseline is a yardstick: a site failing its query (here with min-sites = 3) is reported,
    and the NDAE model, its survival results and the report are all there."""
    summary, run = _run(cohort, "voxelwise-fault", rounds=0, min_sites=3, fault_site="site2",
                        fault_phase="voxelwise_stats", survival_mode="pooled", prior_residuals=False, **VOXELWISE)
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert "fewer than min-sites" in summary["voxelwise"]["not_computed"]
    assert "voxelwise" not in summary["survival"] and summary["survival"]["coef"]
    report = (run / "report.md").read_text()
    assert "| voxelwise_stats |  | site2 | error:" in report and "Not computed: phase voxelwise_stats" in report


def test_a_malformed_voxelwise_model_is_a_clear_error_and_a_non_finite_score_is_refused():
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from ndae.federation.records import arrays_to_record, config_to_voxelwise
    from ndae.federation.site.context import FEATURES_KEY
    from ndae.federation.site.survival_queries import beta_and_covariates

    for record in ({"stride": "two", "informative.npy": b"", "model.npz": b"", "model.json": b""},
                   {"stride": 2, "informative.npy": b"junk", "model.npz": b"junk", "model.json": b"{}"}):
        with pytest.raises(NdaeError, match="voxel-wise baseline message is malformed"):
            config_to_voxelwise(ConfigRecord(record))
    from ndae.federation.inprocess import _set_task_identity

    _set_task_identity()  # a Message built outside a ServerApp process needs one (alone, no run has set it)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    context.state[FEATURES_KEY] = ConfigRecord({"features": ["z_voxel_precentral"]})
    table = pd.DataFrame({"z_voxel_precentral": [0.1, np.nan, 0.3], "age": [50.0, 60.0, 70.0]})
    message = Message(RecordDict({"beta": arrays_to_record({"beta": np.array([0.5, 0.0])}),
                                  "config": ConfigRecord({"covariates": ["z_voxel_precentral", "age"]})}),
                      dst_node_id=1, message_type="query.cox_terms")
    with pytest.raises(NdaeError, match="not finite at this site"):
        beta_and_covariates(message, context, table)
