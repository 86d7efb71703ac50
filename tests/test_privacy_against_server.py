"""A site's privacy against a hostile server and a careless researcher (docs/privacy.md, threat model).

Each test plays the attacker: it sends what a server may send, or writes the run config a
researcher may write, and checks what the site answers against the release table.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from ndae.errors import NdaeError
from ndae.federation.config import FederationConfig
from ndae.federation.inprocess import InProcessGrid
from ndae.federation.server.phases import run_federation
from ndae.federation.site.policy import PolicyViolation
from ndae.privacy.delta import DEFAULT_DELTA
from ndae.privacy.ledger import read_ledger
from ndae.testing.synthetic_cohort import make_synthetic_cohort

SITES = ("site1", "site2", "site3")
POLICY = {"budget-epsilon": 50.0, "max-epsilon-per-run": 50.0}  # 5 controls a site buy little at the default 10


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("against-server")
    make_synthetic_cohort(root / "cohort", sites=3, controls_per_site=5, patients_per_site=6, seed=4)
    return root


def _manifest(cohort, site):
    return cohort / "cohort" / "sites" / site / "manifest.csv"


def _config(cohort, name, **overrides):
    settings = dict(run_dir=str(cohort / name), rounds=1, batch_size=4, seed=3, privacy=True,
                    cache_dir=str(cohort / "cache"))
    settings.update(overrides)
    return FederationConfig(**settings)


class RecordingGrid(InProcessGrid):
    """The server's view: every reply it received, by message type and site."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received: list[tuple[str, str, RecordDict]] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        kinds = {m.metadata.dst_node_id: m.metadata.message_type for m in messages}
        replies = list(super().send_and_receive(messages, timeout=timeout))
        for reply in replies:
            node = reply.metadata.src_node_id if reply.metadata.src_node_id != 1 else None
            site = self.contexts[reply.metadata.dst_node_id if node is None else node]
            if not reply.has_error():
                self.received.append((kinds.get(reply.metadata.src_node_id, "?"), str(site.node_config["manifest"]),
                                      reply.content))
        return replies


@pytest.fixture(scope="module")
def private_run(cohort):
    config = _config(cohort, "recorded")
    grid = RecordingGrid([_manifest(cohort, s) for s in SITES], config.to_run_config(),
                         node_config={**POLICY, "privacy-dir": str(cohort / "recorded-ledgers")})
    summary = run_federation(grid, config, log=lambda _: None)
    return summary, grid, cohort / "recorded"


def _replies(grid, kind):
    return [content for message_type, _, content in grid.received if message_type == kind]


# ---- 1. the noise cannot be regenerated --------------------------------------------------------
def _one_round(cohort, name, node_config):
    """One private run's first training round and moments release, from identical requests (the
    prior residual step, whose release these runs do not compare, is off)."""
    config = _config(cohort, name, survival_mode="federated", prior_residuals=False)
    grid = RecordingGrid([_manifest(cohort, "site1"), _manifest(cohort, "site2")], config.to_run_config(),
                         node_config={**POLICY, "privacy-dir": str(cohort / name / "ledgers"), **node_config})
    run_federation(grid, config, log=lambda _: None)
    site1 = str(_manifest(cohort, "site1"))  # Flower samples the nodes in random order: pick site1's
    weights = next(c for kind, m, c in grid.received if kind == "train" and m == site1)["arrays"]
    stats = next(c for kind, m, c in grid.received if kind == "query.normative_stats" and m == site1)["stats"]
    return ({k: v.numpy() for k, v in weights.items()}, {k: v.numpy() for k, v in stats.items()},
            read_ledger(cohort / name / "ledgers" / "site1.jsonl"))


def test_two_identical_private_runs_release_different_noise_only_an_insecure_seed_repeats_it(cohort):
    """Same run config, same data, same global model: whatever the server knows is identical,
    so if the noise were a function of it the releases would be identical. They differ; with the
    test-only node config key they repeat bit for bit (the check can fail), and the ledger says so."""
    import shutil

    weights_a, stats_a, ledger_a = _one_round(cohort, "same", {})
    shutil.rmtree(cohort / "same")
    weights_b, stats_b, _ = _one_round(cohort, "same", {})
    assert any(not np.array_equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert not np.allclose(stats_a["xty"], stats_b["xty"])
    assert all("insecure_reproducible_seed" not in e.get("details", {}) for e in ledger_a)
    weights_c, stats_c, ledger_c = _one_round(cohort, "seeded", {"insecure-reproducible-seed": 7})
    shutil.rmtree(cohort / "seeded")  # the same run again, from scratch
    weights_d, stats_d, _ = _one_round(cohort, "seeded", {"insecure-reproducible-seed": 7})
    assert all(np.array_equal(weights_c[k], weights_d[k]) for k in weights_c)
    assert all(np.array_equal(stats_c[k], stats_d[k]) for k in stats_c if stats_c[k].dtype.kind == "f")
    assert all(e["details"]["insecure_reproducible_seed"] is True for e in ledger_c)
    from ndae.cli import main  # such a run is not passed by the audit, and its report opens saying so

    assert main(["audit", str(cohort / "seeded")]) == 1
    assert (cohort / "seeded" / "report.md").read_text().splitlines()[2].startswith("**NOT PRIVATE: site(s) site1, site2")


def test_the_old_seed_derivation_no_longer_removes_the_moments_noise(private_run, cohort):
    """The attack on the old seed derivation (a seed the server knows): rebuild the site's noise from the run config's seed and the site
    name, subtract it, and read the exact statistics. Now the residual is the full noise."""
    from ndae.privacy.dp_moments import moments_noise_sd

    summary, grid, _ = private_run
    config = _config(cohort, "recorded")
    site1 = str(_manifest(cohort, "site1"))
    released = next(c for kind, m, c in grid.received if kind == "query.normative_stats" and m == site1)["stats"]["xty"].numpy()
    seed = (config.seed * 1_000_003 + 10_000 * 7919 + __import__("zlib").crc32(b"site1")) % 2**31  # old site_seed
    guess = np.random.default_rng(seed)
    sd = moments_noise_sd(config.moments_covariate_clip, config.moments_latent_clip, config.moments_noise_multiplier)
    # whatever order the old code drew in, a correct guess would match one draw sequence exactly
    candidates = [guess.normal(0.0, sd["xty"], size=released.shape) for _ in range(3)]
    for noise in candidates:
        assert np.abs(released - noise).std() > 0.3 * sd["xty"]  # nothing cancels: the noise is not this


# ---- 2. the site's policy is law ---------------------------------------------------------------
LOOSER = [  # (run config, node config, key the refusal must name)
    ({"budget-epsilon": 20.0}, {"budget-epsilon": 10.0}, "'budget-epsilon'"),
    ({"budget-delta": 1e-3}, {}, "'budget-delta'"),
    ({"delta": 0.5}, {}, "'delta'"),
    ({"max-epsilon-per-run": 9.0}, {"max-epsilon-per-run": 4.0}, "'max-epsilon-per-run'"),
    ({"target-epsilon": 8.0}, {"max-epsilon-per-run": 4.0}, "'target-epsilon'"),
    ({"max-cox-queries": 1000}, {}, "'max-cox-queries'"),
    ({"privacy": False}, {"require-privacy": "true"}, "'privacy'"),
    ({"survival-mode": "pooled"}, {}, "'survival-mode'"),  # private + pooled without the site's consent
    ({"survival-mode": "pooled", "privacy": False}, {"allow-pooled-scores": "false", "require-privacy": "false"},
     "'survival-mode'"),
    ({"privacy": False}, {"budget-epsilon": 3.0}, "'privacy'"),  # a site with a privacy policy is not downgraded
    ({"audit-canaries": 10**9}, {}, "'audit-canaries'"),
    ({"survival-mode": "federated"}, {"survival-modes": "pooled"}, "'survival-mode'"),
]


@pytest.mark.parametrize("request_keys, policy, named", LOOSER, ids=[n for _, _, n in LOOSER])
def test_a_run_config_asking_for_more_than_the_site_allows_is_refused_before_any_data_is_read(
        tmp_path, request_keys, policy, named):
    from ndae.federation.site.handlers import handle_site_info

    run_config = {**FederationConfig(privacy=True).to_run_config(), **request_keys}
    # The manifest does not exist: a refusal that read data first would complain about it instead.
    context = _context(run_config, {**policy, "manifest": str(tmp_path / "no-such" / "manifest.csv")})
    with pytest.raises(PolicyViolation, match=named):
        handle_site_info(Message(RecordDict(), dst_node_id=1, message_type="query.site_info"), context)
    assert not any(tmp_path.rglob("*"))  # nothing written


@pytest.mark.parametrize("key", ["privacy-dir", "allow-pooled-scores", "insecure-reproducible-seed", "public-counts",
                                 "signing-key-file", "require-privacy", "canary-secret"])
def test_keys_only_a_site_sets_are_refused_in_the_run_config(key):
    with pytest.raises(NdaeError, match=f"run config key '{key}' is the site's to set"):
        FederationConfig.from_run_config({"privacy": True, key: "true"})


def test_a_stricter_request_holds_and_a_silent_one_keeps_the_sites_values():
    from ndae.federation.site.policy import SitePolicy

    policy = SitePolicy.from_node_config({"budget-epsilon": 10, "delta": 1e-6})
    stricter = policy.enforce(FederationConfig(privacy=True, budget_epsilon=2.0, max_cox_queries=5))
    assert (stricter.budget_epsilon, stricter.max_cox_queries, stricter.delta) == (2.0, 5, 1e-6)
    assert policy.enforce(FederationConfig(privacy=True)) == policy


def test_a_node_config_typo_is_refused_naming_it():
    from ndae.federation.site.policy import SitePolicy

    with pytest.raises(NdaeError, match="budget-epsilion"):
        SitePolicy.from_node_config({"budget-epsilion": 1})
    with pytest.raises(NdaeError, match="'delta'"):
        SitePolicy.from_node_config({"delta": "nan"})


def _context(run_config, node_config):
    from flwr.app import Context

    from ndae.federation.inprocess import _set_task_identity

    _set_task_identity()  # the tests build Messages, which need the process's task identity (alone, no run set it)
    return Context(run_id=1, node_id=1, node_config=dict(node_config), state=RecordDict(), run_config=dict(run_config))


# ---- 3. every release of a private run is what the release table says ----------------------------
def test_site_info_withholds_counts_unless_the_site_declares_them_public(private_run, cohort):
    summary, grid, _ = private_run
    for content in _replies(grid, "query.site_info"):
        info = dict(content["info"])
        assert info["controls"] == -1 and info["patients"] == -1
    assert all(i["controls"] == -1 for i in summary["sites"].values())
    assert "withheld" in (cohort / "recorded" / "report.md").read_text()


def test_training_replies_hold_weights_and_steps_but_neither_loss_nor_count(private_run):
    _, grid, _ = private_run
    for content in _replies(grid, "train"):
        assert dict(content["metrics"]) .keys() == {"num-examples", "local-steps"}
        assert content["metrics"]["num-examples"] == 1  # FedAvg weighs the sites equally


def test_the_ledger_the_server_receives_holds_no_count_and_one_delta(private_run):
    summary, grid, run = private_run
    allowed_details = {"run", "round", "mode", "beta", "covariates", "gradient", "hessian", "log_likelihood",
                       "comparable", "concordant",
                       # the covariates-only model beside it, and the nine paired concordance sums (docs/privacy.md)
                       "reference_beta", "reference_covariates", "paired_sums", "paired_cross",
                       "statistic"}  # which moments: the prior residuals' (a name, not data)
    for site in SITES:
        entries = read_ledger(run / "privacy" / f"{site}.jsonl")
        assert entries and all(e["records_touched"] == 0 for e in entries)
        assert {e["delta"] for e in entries} == {DEFAULT_DELTA}  # the site's policy, not 1/(10 n)
        for entry in entries:  # no count of clipped rows, no other data-dependent detail
            assert set(entry.get("details", {})) <= allowed_details, entry["details"]


def test_moments_are_the_minimal_noised_statistics_without_exact_counts(private_run):
    _, grid, _ = private_run
    for content in _replies(grid, "query.normative_stats"):
        keys = set(content["stats"].keys())
        assert {"xtx", "xty"} <= keys
        assert not keys & {"n", "sum_y", "site_n", "site_sum_x", "site_sum_y"}, keys


def test_deviations_replies_hold_neither_rows_nor_counts_nor_covariate_moments(private_run):
    _, grid, _ = private_run
    replies = _replies(grid, "query.deviations")
    assert len(replies) == 3 and all(set(c.keys()) == {"privacy"} for c in replies)


def test_cox_queries_return_aggregates_only_and_each_is_in_the_ledger(private_run):
    summary, grid, run = private_run
    replies = _replies(grid, "query.cox_terms")
    assert replies and all(set(c["terms"].keys()) == {"gradient", "hessian", "log_likelihood"} for c in replies)
    for site in SITES:
        cox = [e for e in read_ledger(run / "privacy" / f"{site}.jsonl") if e["mechanism"] == "cox-terms"]
        if "cox_refused" in summary["survival"]:  # the DP noise left the events perfectly ordered: no finite model
            assert cox and all(len(e["details"]["beta"]) == len(summary["survival"]["covariates"]) for e in cox)
            continue
        fits = (summary["survival"], summary["survival"]["covariates_only"])  # the full and the covariates-only model
        assert len(cox) == sum(fit["newton_message_rounds"] for fit in fits)
        assert all(len(e["details"]["beta"]) in {len(fit["covariates"]) for fit in fits} for e in cox)


def test_risk_summary_sends_no_kaplan_meier_rows(private_run):
    summary, grid, run = private_run
    replies = _replies(grid, "query.risk_summary")
    for content in replies:
        assert content["summary"]["km"].numpy().size == 0
    if "cox_refused" not in summary["survival"]:  # a refused Cox model asks for no risk summary
        assert replies and "private sites keep them" in (run / "report.md").read_text()


_GLOBAL_MODELS: dict = {}  # (cohort, DAE config) -> (EMA DAE, normative model): read only


def _deviations_context(cohort, tmp_path, node_config, **request):
    """A site that has scored its patients (phase 'deviations' answered) for a hostile server."""
    from ndae.federation.site.handlers import handle_deviations
    from ndae.federation.records import dae_to_record, normative_to_config
    from ndae.federation.server.phases import dae_config_for
    from ndae.federation.site.data import load_site
    from ndae.federation.site.statistics import normative_statistics
    from ndae.model import EMA, build_model
    from ndae.normative import DesignSpec, NormativeModel, SufficientStats

    config = _config(cohort, "hostile", **request)
    site = load_site(_manifest(cohort, "site1"), config.cache_dir)
    cfg = dae_config_for(config, site.data.images.shape[1])
    key = (str(cohort), json.dumps(cfg.to_dict(), sort_keys=True))
    if key not in _GLOBAL_MODELS:  # the same untrained DAE and its normative model for every such site
        model = build_model(cfg, seed=0)
        ema = EMA(model, cfg.train.ema_decay, cfg.train.ema_warmup)
        stats = sum(SufficientStats.from_arrays(normative_statistics(
            load_site(_manifest(cohort, s), config.cache_dir), dae_to_record(ema.model, ema), cfg.to_dict(),
            DesignSpec().to_dict())) for s in SITES)
        _GLOBAL_MODELS[key] = ema, NormativeModel.from_stats(stats, [f"z_sem_{k}" for k in range(stats.n_features)])
    ema, normative = _GLOBAL_MODELS[key]
    context = _context(config.to_run_config(), {**POLICY, "privacy-dir": str(tmp_path / "ledger"),
                                                "manifest": str(_manifest(cohort, "site1")), **node_config})

    def deviations(share_rows: bool, **extra):
        content = RecordDict({"dae": dae_to_record(ema.model, ema), "normative": normative_to_config(normative),
                              "config": ConfigRecord({"dae-config": json.dumps(cfg.to_dict()),
                                                      "features": ["cosine", "mahalanobis"], "share-rows": share_rows}),
                              **extra})
        return handle_deviations(Message(content, dst_node_id=1, message_type="query.deviations"), context)

    return context, deviations


def test_a_server_asking_for_rows_the_run_config_did_not_request_is_refused(cohort, tmp_path):
    _, deviations = _deviations_context(cohort, tmp_path, {}, survival_mode="federated")
    with pytest.raises(PolicyViolation, match="refuses to share patients' deviation scores"):
        deviations(share_rows=True)


def test_cox_queries_stop_at_the_sites_limit_and_a_new_deviations_phase_does_not_reset_it(cohort, tmp_path):
    from ndae.federation.site.survival_queries import handle_cox_terms
    from ndae.federation.records import arrays_to_record

    context, deviations = _deviations_context(cohort, tmp_path, {"max-cox-queries": 3}, survival_mode="federated")
    deviations(share_rows=False)

    def query(beta):
        content = RecordDict({"beta": arrays_to_record({"beta": np.asarray(beta, float)}),
                              "config": ConfigRecord({"covariates": ["cosine", "age"]})})
        return handle_cox_terms(Message(content, dst_node_id=1, message_type="query.cox_terms"), context)

    for k in range(3):
        query([0.1 * k, 0.0])
    with pytest.raises(PolicyViolation, match="max-cox-queries = 3"):
        query([1.0, 0.0])
    deviations(share_rows=False)  # a hostile server re-runs the phase to reset the count
    with pytest.raises(PolicyViolation, match="max-cox-queries = 3"):
        query([2.0, 0.0])
    cox = [e for e in read_ledger(tmp_path / "ledger" / "site1.jsonl") if e["mechanism"] == "cox-terms"]
    assert [e["details"]["beta"] for e in cox] == [[0.0, 0.0], [0.1, 0.0], [0.2, 0.0]]


def test_consented_pooled_rows_carry_pseudonyms_whole_years_and_months_and_the_key_stays_private(cohort, tmp_path):
    from ndae.federation.records import record_to_frame

    _, deviations = _deviations_context(cohort, tmp_path, {"allow-pooled-scores": "true"}, survival_mode="pooled")
    rows = record_to_frame(deviations(share_rows=True).content["rows"])
    manifest = pd.read_csv(_manifest(cohort, "site1"))
    patients = manifest[manifest["group"] != "control"]
    assert len(rows) == len(patients) and not set(rows["subject"]) & set(patients["subject"].astype(str))
    assert np.array_equal(rows["age"].astype(float), np.floor(rows["age"].astype(float)))
    assert np.array_equal(rows["time"].astype(float), np.ceil(rows["time"].astype(float)))
    (key,) = (tmp_path / "ledger").glob("site1.*.pseudonyms.csv")
    assert os.stat(key).st_mode & 0o077 == 0
    linked = pd.read_csv(key, dtype=str).set_index("pseudonym")["subject"]
    assert sorted(linked[rows["subject"]]) == sorted(patients["subject"].astype(str))
    entries = read_ledger(tmp_path / "ledger" / "site1.jsonl")
    assert [e["mechanism"] for e in entries] == ["shared-scores"]
    assert entries[0]["details"]["content"]["subject"] == "a pseudonym drawn for this run"


def test_the_report_warns_when_a_sites_noise_swamps_its_moments(private_run):
    """5 controls a site at the default moments noise: the DP statistics are noise, and the
    report says so for each site whose release shows it (the benchmark's threshold: predicted
    mean correlation < 0.5). The noise comes from each site's secure generator, so whether a
    given release shows it is a draw: the run's warnings must be exactly those its releases imply,
    and at 5 controls nearly every release implies one (sized below with seeded draws)."""
    from pathlib import Path

    from ndae.privacy.moments_postprocessing import moments_noise_warnings

    summary, grid, run = private_run
    warned = summary["normative"]["warnings"]
    released = {Path(m).parent.name: {k: v.numpy() for k, v in c["stats"].items()}
                for kind, m, c in grid.received if kind == "query.normative_stats"}
    assert sorted(released) == list(SITES)
    assert warned == moments_noise_warnings(released) and len(warned) >= 2
    assert all(any(f"site '{s}'" in w for s in SITES) for w in warned)
    # the prior residuals' moments get the same check (how many it flags depends on their noise draw)
    prior = summary["prior_residuals"]["warnings"]
    assert all(any(f"site '{s}'" in w for s in SITES) for w in prior)
    assert (run / "report.md").read_text().count("**warning**") == 3 + len(prior)


def test_at_five_controls_nearly_every_moments_release_is_flagged_as_noise():
    """The warning's power, with seeded draws of the same mechanism and the run's defaults: a
    site of 5 controls is flagged in at least 90 % of its releases (a warning that tested the
    wrong quantity, or a threshold off by far, flags few); 500 controls are flagged in none."""
    from ndae.privacy.dp_moments import private_moments
    from ndae.privacy.moments_postprocessing import moments_noise_warnings

    defaults = FederationConfig()
    data = np.random.default_rng(0)

    def flagged(n: int) -> float:
        hits = 0
        for draw in range(200):
            X = np.column_stack([np.ones(n), data.uniform(-1, 1, n), data.integers(0, 2, n)])
            Y = data.normal(0.0, 0.3, (n, 64)) + data.normal(0.0, 0.5, 64)
            stats = private_moments(X, Y, covariate_clip=defaults.moments_covariate_clip,
                                    latent_clip=defaults.moments_latent_clip,
                                    noise_multiplier=defaults.moments_noise_multiplier,
                                    rng=np.random.default_rng(draw), public={}).stats
            hits += len(moments_noise_warnings({"site": stats}))
        return hits / 200

    assert flagged(5) >= 0.9
    assert flagged(500) == 0.0


# ---- 4. what a hostile server may not ask in a survival query ----------------------------------
@pytest.mark.parametrize("covariates, beta, why", [
    (["cosine", "time"], [0.0, 1.0], "covariates must be distinct names among"),  # time: an oracle of follow-up
    (["cosine", "event"], [0.0, 1.0], "covariates must be distinct names among"),
    (["subject"], [1.0], "covariates must be distinct names among"),
    (["cosine", "age"], [float("nan"), 0.0], "finite numbers"),
    (["cosine", "age"], [0.0], "finite numbers"),
    (["cosine", "age"], [0.0, 1e4], r"\|beta x sd\|"),  # a huge beta singles out the oldest patient
])
def test_survival_queries_name_only_the_runs_covariates_with_a_bounded_beta(cohort, tmp_path, covariates, beta, why):
    from ndae.federation.site.context import QUERIES_KEY
    from ndae.federation.site.survival_queries import handle_cox_terms, handle_risk_summary
    from ndae.federation.records import arrays_to_record

    context, deviations = _deviations_context(cohort, tmp_path, {}, survival_mode="federated")
    deviations(share_rows=False)
    content = RecordDict({"beta": arrays_to_record({"beta": np.asarray(beta, float)}),
                          "config": ConfigRecord({"covariates": covariates})})
    for handler, kind in ((handle_cox_terms, "query.cox_terms"), (handle_risk_summary, "query.risk_summary")):
        with pytest.raises(NdaeError, match=why):
            handler(Message(content, dst_node_id=1, message_type=kind), context)
    if why != r"\|beta x sd\|":
        assert QUERIES_KEY not in context.state  # refused on the message alone: not answered, and not counted
        assert not (tmp_path / "ledger" / "site1.jsonl").exists()
    else:  # the bound depends on the patients' spread: the refusal is an answer, counted and recorded
        assert int(context.state[QUERIES_KEY]["cox"]) == 2
        entries = read_ledger(tmp_path / "ledger" / "site1.jsonl")
        assert [(e["mechanism"], e["details"]["refused"]) for e in entries] == [("cox-terms", "beta-bound"),
                                                                                 ("risk-summary", "beta-bound")]


def test_the_batch_a_server_asks_for_cannot_go_below_the_sites_floor(cohort, tmp_path):
    """A server asking for batch 1 would read n off the ledger's sample rate 1/ceil(n/B)."""
    config = _config(cohort, "batch-one", batch_size=1, survival_mode="federated", prior_residuals=False)
    grid = InProcessGrid([_manifest(cohort, "site1"), _manifest(cohort, "site2")], config.to_run_config(),
                         node_config={**POLICY, "privacy-dir": str(tmp_path / "ledgers"), "min-dp-batch-size": 4})
    run_federation(grid, config, log=lambda _: None)
    (entry,) = [e for e in read_ledger(tmp_path / "ledgers" / "site1.jsonl") if e["mechanism"] == "dp-sgd"]
    assert entry["sample_rate"] == pytest.approx(1 / 2)  # 5 controls, B = 4: ceil(5/4) = 2 batches, not 5


# ---- the non-private extras (age probe yardstick, voxel-wise baseline) stay out of private runs ------
def test_a_private_run_sends_no_initial_encoder_statistics_and_no_voxelwise_moments(private_run):
    summary, grid, run = private_run
    assert all(set(c.keys()) == {"stats", "privacy"} for c in _replies(grid, "query.normative_stats"))
    assert not _replies(grid, "query.voxelwise_stats")
    assert "private run" in summary["voxelwise"]["not_computed"]
    assert "private run" in summary["latent_probe"]["trained"]["not_computed"]
    assert "private run" in summary["latent_probe"]["init"]["not_computed"]
    report = (run / "report.md").read_text()
    assert "## Beside the voxel-wise normative baseline" in report and "Not computed: a private run" in report


def test_a_hostile_server_gets_no_extra_statistics_from_a_private_site(cohort, tmp_path):
    """It sends the initial-weights request anyway (the site answers only the noised release of the
    trained weights), asks for voxel-wise moments, and sends a voxel-wise model with the deviations
    query: each extra is refused or ignored, and the ledger holds only the one moments release."""
    from ndae.federation.records import INITIAL_STATS_KEY, INITIAL_WEIGHTS_KEY, VOXELWISE_KEY, dae_to_record
    from ndae.federation.server.phases import dae_config_for
    from ndae.federation.site.handlers import handle_normative_stats, handle_voxelwise_stats
    from ndae.federation.site.data import load_site
    from ndae.model import EMA, build_model
    from ndae.normative import DesignSpec

    context, deviations = _deviations_context(cohort, tmp_path, {}, survival_mode="federated")
    config = _config(cohort, "hostile")
    site = load_site(_manifest(cohort, "site1"), config.cache_dir)
    cfg = dae_config_for(config, site.data.images.shape[1])
    ema = EMA(build_model(cfg, seed=1), cfg.train.ema_decay, cfg.train.ema_warmup)
    content = RecordDict({"dae": dae_to_record(ema.model, ema), INITIAL_WEIGHTS_KEY: dae_to_record(ema.model, ema),
                          "config": ConfigRecord({"dae-config": json.dumps(cfg.to_dict()),
                                                  "design": json.dumps(DesignSpec().to_dict())})})
    reply = handle_normative_stats(Message(content, dst_node_id=1, message_type="query.normative_stats"), context)
    assert INITIAL_STATS_KEY not in reply.content and "stats" in reply.content
    with pytest.raises(PolicyViolation, match="voxel-wise baseline in a private run"):
        handle_voxelwise_stats(Message(RecordDict({"config": ConfigRecord({"stride": 2})}), dst_node_id=1,
                                       message_type="query.voxelwise_stats"), context)
    entries = read_ledger(tmp_path / "ledger" / "site1.jsonl")
    assert [e["mechanism"] for e in entries].count("gaussian-moments") == 1, [e["mechanism"] for e in entries]
    with pytest.raises(PolicyViolation, match="voxel-wise baseline in a private run"):
        deviations(share_rows=False, **{VOXELWISE_KEY: ConfigRecord({"stride": 2})})
    assert read_ledger(tmp_path / "ledger" / "site1.jsonl") == entries  # nothing released by the refusals
