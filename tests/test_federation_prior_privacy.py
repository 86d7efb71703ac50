"""The prior residual step against a hostile server and a careless researcher (docs/privacy.md).

The controls' residual statistics are a new release of a private site: noised with the site's own
randomness, accounted in its ledger like the z_sem moments, refused when the run config asks for
less noise than its budget allows (the run then goes on without the prior features), and never
a per-subject residual.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from ndae.federation.config import FederationConfig
from ndae.federation.inprocess import InProcessGrid
from ndae.federation.server.phases import run_federation
from ndae.federation.site.privacy import PRIOR_RESIDUAL_STATISTIC
from ndae.privacy.accountant import epsilon_of
from ndae.privacy.ledger import ACCOUNTED_MECHANISMS, read_ledger
from ndae.testing.synthetic_cohort import make_synthetic_cohort

SITES = ("site1", "site2", "site3")
# example-maps: the sites' own deviation maps (drawn on their disks, never sent) are checked in
# tests/test_site_example_maps.py and drawn in test_federation_privacy.py's private run, not here
POLICY = {"budget-epsilon": 50.0, "max-epsilon-per-run": 50.0, "example-maps": "false"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior-privacy")
    make_synthetic_cohort(root / "cohort", sites=3, controls_per_site=7, patients_per_site=6, seed=5)
    return root


def _manifest(cohort, site):
    return cohort / "cohort" / "sites" / site / "manifest.csv"


def _config(cohort, name, **overrides):
    settings = dict(run_dir=str(cohort / name), rounds=1, batch_size=4, seed=3, privacy=True,
                    cache_dir=str(cohort / "cache"), **overrides)
    return FederationConfig(**settings)


class RecordingGrid(InProcessGrid):
    """The server's view: every good reply, as (message type, site manifest, content)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received: list[tuple[str, str, RecordDict]] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        kinds = {m.metadata.dst_node_id: m.metadata.message_type for m in messages}
        replies = list(super().send_and_receive(messages, timeout=timeout))
        for reply in replies:
            node = reply.metadata.src_node_id
            if not reply.has_error():
                self.received.append((kinds[node], str(self.contexts[node].node_config["manifest"]), reply.content))
        return replies


def _run(cohort, name, sites=SITES, **overrides):
    config = _config(cohort, name, **overrides)
    grid = RecordingGrid([_manifest(cohort, s) for s in sites], config.to_run_config(),
                         node_config={**POLICY, "privacy-dir": str(cohort / name / "ledgers")})
    return run_federation(grid, config, log=lambda _: None), grid, cohort / name


@pytest.fixture(scope="module")
def private_run(cohort):
    return _run(cohort, "private")


def _accounted(run, site):
    return [e for e in read_ledger(run / "ledgers" / f"{site}.jsonl") if e["mechanism"] in ACCOUNTED_MECHANISMS]


def test_the_residual_statistics_are_a_noised_release_accounted_in_each_sites_ledger(private_run):
    from ndae.privacy.dp_moments import moments_sensitivity

    summary, grid, run = private_run
    config = _config(run.parent, "private")
    for site in SITES:
        entries = _accounted(run, site)
        assert [e["mechanism"] for e in entries] == ["dp-sgd", "gaussian-moments", "gaussian-moments"]
        prior = entries[-1]
        assert prior["details"]["statistic"] == PRIOR_RESIDUAL_STATISTIC  # told apart from the z_sem moments
        assert "statistic" not in entries[1]["details"]
        assert prior["noise_multiplier"] == config.prior_residual_noise_multiplier and prior["sample_rate"] == 1.0
        assert prior["clip"] == pytest.approx(moments_sensitivity(config.moments_covariate_clip,
                                                                  config.prior_residual_clip))
        assert prior["records_touched"] == 0  # counts are not public
        history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries]
        assert summary["privacy"][site]["epsilon"] == pytest.approx(epsilon_of(history, prior["delta"]), rel=1e-9)
        assert summary["privacy"][site]["epsilon"] > epsilon_of(history[:2], prior["delta"])  # it cost something
    from ndae.privacy.audit import audit_run

    assert audit_run(run)["ok"]  # the independent recomputation of epsilon counts the release too
    replies = [c for kind, _, c in grid.received if kind == "query.prior_residual_stats"]
    assert len(replies) == 3 and all(set(c.keys()) == {"stats", "columns", "privacy"} for c in replies)
    for content in replies:  # the minimal statistics: no exact count, no per-site sums, no cross products
        keys = set(content["stats"].keys())
        assert {"xtx", "xty", "sum_y2", "dp_noise_variance"} <= keys
        assert not keys & {"n", "sum_y", "site_n", "site_sum_x", "site_sum_y", "yty"}, keys
        assert (content["stats"]["dp_noise_variance"].numpy() > 0).all()
    assert "regions" in summary["prior_residuals"] and summary["survival"]["prior_swap"]["not_computed"]
    report = (run / "report.md").read_text()
    assert "## Regional deviations from the diffusion prior" in report
    assert "Swap test not reported: a private run" in report


def test_the_released_statistics_differ_from_the_exact_ones_by_the_declared_noise(private_run, cohort):
    """The site's exact statistics, recomputed from the same global DAE and normative model: the
    release minus them is noise of the sd the run config declares (not 0, not a fraction of it)."""
    from ndae.federation.records import ema_weights_record
    from ndae.federation.site.prior_residuals import prior_region_means
    from ndae.federation.site.data import load_site, site_cache_dir
    from ndae.federation.site.statistics import covariates
    from ndae.model import load_checkpoint
    from ndae.normative import DesignSpec, NormativeModel
    from ndae.normative.design import clip_design_rows
    from ndae.privacy.dp_moments import moments_noise_sd
    from ndae.privacy.gaussian_mechanism import clip_rows

    _, grid, run = private_run
    config = _config(cohort, "private")
    manifest = _manifest(cohort, "site1")
    site = load_site(manifest, prepared_dir=site_cache_dir({"manifest": str(manifest)}, manifest, config.cache_dir))
    dae = json.loads((run / "config.json").read_text())["dae"]
    means = prior_region_means(site, ema_weights_record(load_checkpoint(run / "dae" / "checkpoint.pt").ema), dae,
                               NormativeModel.load(run / "normative"), site.controls)
    design = clip_design_rows(DesignSpec().build(covariates(site, site.controls)), config.moments_covariate_clip)
    exact = design.T @ clip_rows(means.values, config.prior_residual_clip)[0]
    released = next(c for kind, m, c in grid.received
                    if kind == "query.prior_residual_stats" and m == str(manifest))["stats"]["xty"].numpy()
    sd = moments_noise_sd(config.moments_covariate_clip, config.prior_residual_clip,
                          config.prior_residual_noise_multiplier)["xty"]
    noise = (released - exact) / sd
    assert noise.size >= 50 and 0.7 < noise.std() < 1.4 and abs(noise.mean()) < 0.5


def test_a_run_asking_for_no_noise_is_refused_by_every_site_and_goes_on_without_the_prior_features(private_run,
                                                                                                   cohort):
    _, _, source = private_run
    shutil.copytree(source / "dae", cohort / "noise-free" / "dae")  # the trained model: no training this run
    summary, grid, run = _run(cohort, "noise-free", prior_residual_noise_multiplier=0.0,
                              survival_features="cosine,prior")
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    refused = [m for m in summary["missing"] if m["phase"] == "prior_residual_stats"]
    assert sorted(m["site"] for m in refused) == list(SITES)
    for entry in refused:  # the site's own reason, one line: its budget (a noise-free release has epsilon inf)
        assert entry["reason"].startswith(f"error: PrivacyBudgetExceeded: site '{entry['site']}' refuses this "
                                          "gaussian-moments release: it would exceed the site's privacy budget")
        assert "\n" not in entry["reason"]
    assert not [c for kind, _, c in grid.received if kind == "query.prior_residual_stats"]
    for site in SITES:  # nothing accounted for the refused release: only this run's z_sem moments
        assert [e.get("details", {}).get("statistic") for e in _accounted(run, site)] == [None]
    assert "not_computed" in summary["prior_residuals"]
    # the Cox model's covariates (`coef` is absent where the DP noise left no finite model)
    assert summary["survival"]["features"] == ["cosine"] and not any("prior" in c for c in summary["survival"]["covariates"])
    report = (run / "report.md").read_text()
    assert "## Regional deviations from the diffusion prior" in report and "Not computed: phase prior_residual_stats" \
        in report
    assert "prior residual features ['prior'] left out of the survival model" in report


def _site_grid(cohort, tmp_path, **overrides):
    config = _config(cohort, "hostile", **overrides)
    grid = InProcessGrid([_manifest(cohort, "site1")], config.to_run_config(),
                         node_config={**POLICY, "privacy-dir": str(tmp_path / "ledger")})
    return grid, next(iter(grid.contexts))


def _ask(grid, node, message_type, content):
    (reply,) = grid.send_and_receive([Message(content, dst_node_id=node, message_type=message_type)])
    return reply


def _prior_query(run, **extra_settings):
    from ndae.federation.records import ema_weights_record, normative_to_config
    from ndae.model import load_checkpoint
    from ndae.normative import DesignSpec, NormativeModel

    return RecordDict({"dae": ema_weights_record(load_checkpoint(run / "dae" / "checkpoint.pt").ema),
                       "normative": normative_to_config(NormativeModel.load(run / "normative")),
                       "config": ConfigRecord({"dae-config": json.dumps(json.loads((run / "config.json").read_text())["dae"]),
                                               "design": json.dumps(DesignSpec().to_dict()), **extra_settings})})


@pytest.mark.parametrize("request_keys, message_type, extra, refusal", [
    ({}, "query.prior_residual_stats", {"share-rows": True}, "PolicyViolation: site 'site1' refuses a prior residual "
                                                              "query asking for ['share-rows']: only the controls' summed"),
    ({}, "query.prior_residual_stats", {"subjects": ["S1000"]}, "asking for ['subjects']"),
    ({}, "query.prior_residuals", {}, ""),  # the raw residuals: no such query at a site
    ({"prior_residual_noise_multiplier": 0.05}, "query.prior_residual_stats", {},
     "PrivacyBudgetExceeded: site 'site1' refuses this gaussian-moments release"),  # less noise than its budget buys
    ({"prior_residuals": False}, "query.prior_residual_stats", {},
     "PolicyViolation: site 'site1' refuses prior residual queries: run config 'prior-residuals' = false"),
], ids=["rows", "subjects", "raw-query", "little-noise", "not-requested"])
def test_a_hostile_server_gets_no_per_subject_residual_and_no_under_noised_statistic(private_run, cohort, tmp_path,
                                                                                    request_keys, message_type,
                                                                                    extra, refusal):
    _, _, run = private_run
    grid, node = _site_grid(cohort, tmp_path, **request_keys)
    reply = _ask(grid, node, message_type, _prior_query(run, **extra))
    assert reply.has_error() and refusal in reply.error.reason
    assert not (tmp_path / "ledger" / "site1.jsonl").exists()  # nothing released, nothing accounted
    # the same site answers the plain request with one accounted release (the refusal was the request's)
    if refusal:
        grid, node = _site_grid(cohort, tmp_path)
        answer = _ask(grid, node, "query.prior_residual_stats", _prior_query(run))
        assert not answer.has_error() and set(answer.content["stats"].keys()) >= {"xtx", "xty", "sum_y2"}
        assert [e["details"].get("statistic") for e in read_ledger(tmp_path / "ledger" / "site1.jsonl")] == [
            PRIOR_RESIDUAL_STATISTIC]
