"""The federated report's patients-vs-controls score distributions and held-out controls' z
calibration, from counts only (`ndae.federation.site.score_histograms`,
`ndae.federation.server.score_distributions`, `ndae.reporting.score_distributions`).

The run's numbers and report are the shared pooled non-private federation's (tests/federation_runs.py:
1 round through the real ClientApp/ServerApp code in process); the site's checks and the private
run's withholding run against the real handler with an untrained DAE and a random normative model
(no training).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from ndae.federation.config import FederationConfig
from ndae.federation.inprocess import InProcessGrid
from ndae.testing.synthetic_cohort import make_synthetic_cohort

SITES = ("site1", "site2", "site3")
SEED = 3
SUBJECT_ID = re.compile(r"S\d{4}")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def federated_run(pooled_federation):
    """The shared pooled run (tests/federation_runs.py: the same 3-site cohort, seed 3, 1 round):
    its score distributions and held-out calibration do not depend on the voxel-wise baseline or
    the prior feature it also fits. (summary, cohort root, run folder); read only."""
    from tests.federation_runs import FEDERATIONS

    summary, run = pooled_federation
    assert FEDERATIONS["pooled"].config.seed == SEED  # the controls' folds are drawn from the run's seed
    return summary, run.parent, run


def _binned(values, edges):
    values = np.clip(np.asarray(values, float), edges[0], edges[-1])
    return np.histogram(values, bins=edges)[0]


def test_the_summed_site_histograms_equal_the_histograms_of_the_pooled_scores(federated_run):
    """Patients: the pooled rows (deviations.csv) binned at the server's edges. Controls: every
    site's controls scored under the model fitted without their fold (the sites' fold statistics,
    summed over the other folds), pooled and binned; the calibration bands of the same z."""
    from ndae.deviation.scores import deviation_table
    from ndae.federation.records import ema_weights_record
    from ndae.federation.site.data import load_site, site_cache_dir
    from ndae.federation.site.score_histograms import control_folds
    from ndae.federation.site.statistics import covariates, encode_z_sem
    from ndae.model import load_checkpoint
    from ndae.normative import NormativeModel, SufficientStats

    summary, root, run = federated_run
    result = summary["survival"]["score_distributions"]
    assert result["sites"] == list(SITES) and result["controls_held_out"] and result["folds"] >= 2
    edges = {s: np.asarray(e) for s, e in result["edges"].items()}
    assert set(edges) >= {"mahalanobis", "cosine"}

    rows = pd.read_csv(run / "deviations.csv")
    assert len(rows) == 18
    for score in edges:
        np.testing.assert_array_equal(result["counts"]["patient"][score], _binned(rows[score], edges[score]))

    checkpoint = load_checkpoint(run / "dae" / "checkpoint.pt")
    weights, dae = ema_weights_record(checkpoint.ema), checkpoint.config.to_dict()
    folds = result["folds"]
    per_site = {}
    for name in SITES:
        manifest = root / "cohort" / "sites" / name / "manifest.csv"
        site = load_site(manifest, prepared_dir=site_cache_dir({"manifest": str(manifest)}, manifest,
                                                               str(root / "cache")))
        table = covariates(site, site.controls)
        per_site[name] = (table, encode_z_sem(site, weights, dae, site.controls, "cpu"),
                          control_folds(len(table), folds, SEED))
    names = [f"z_sem_{k}" for k in range(dae["model"]["z_sem_dim"])]
    pooled = {s: [] for s in edges}
    z_all = []
    for k in range(folds):
        stats = sum(SufficientStats.from_data(t[f == j].reset_index(drop=True), z[f == j], site_column="site")
                    for name in sorted(per_site) for j in range(folds)
                    for t, z, f in [per_site[name]] if j != k)
        model = NormativeModel.from_stats(stats, names)
        for table, z, fold in per_site.values():
            part = table[fold == k].reset_index(drop=True)
            if len(part):
                scores = deviation_table(part["subject"], part, z[fold == k], model)
                for s in edges:
                    pooled[s] += scores[s].tolist()
                z_all.append(model.z_scores(part, z[fold == k]).reshape(-1))
    assert len(pooled["mahalanobis"]) == 21
    for score in edges:
        np.testing.assert_array_equal(result["counts"]["control"][score], _binned(pooled[score], edges[score]))
    z_all = np.concatenate(z_all)
    calibration = result["calibration"]
    assert calibration["values"] == z_all.size
    for band in (1, 2, 3):
        assert calibration[f"within_{band}"] == pytest.approx(np.mean(np.abs(z_all) <= band), abs=1e-12)


def test_the_report_draws_the_distributions_and_the_calibration_from_the_numbers(federated_run):
    from ndae.reporting.score_distributions import FIGURE, score_distribution_figure, tail_share

    summary, _, run = federated_run
    report = (run / "report.md").read_text()
    assert f"]({FIGURE})" in report and (run / FIGURE).stat().st_size > 0
    assert "no control's score leaves a site" not in report
    result = summary["survival"]["score_distributions"]
    share, index = tail_share(result["counts"]["control"]["mahalanobis"], result["counts"]["patient"]["mahalanobis"],
                              True)
    assert f"mahalanobis: about {100 * share:.0f} % of patients" in report
    assert "| abs z ≤ 2 | " + f"{100 * result['calibration']['within_2']:.1f} %" in report
    figure = score_distribution_figure(result["counts"], {s: np.asarray(e) for s, e in result["edges"].items()})
    for axis in figure.axes:
        assert axis.get_xlabel() and axis.get_ylabel() and axis.get_title()
        assert {t.get_text().split(" (")[0] for t in axis.get_legend().get_texts()} == {"controls", "patients"}


def test_the_tail_share_reads_the_atypical_side_of_each_score():
    from ndae.reporting.score_distributions import tail_share

    control = np.array([10, 50, 35, 4, 1, 0], float)  # 95 % reached in bin 2
    patient = np.array([0, 1, 1, 3, 3, 2], float)
    assert tail_share(control, patient, True) == (0.8, 2)
    # the low end is atypical: 95 % of the controls from the top reached in bin 1
    assert tail_share(control[::-1], patient[::-1], False) == (0.8, 3)


# ---- the site's checks and its privacy, against the real handler ----------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from ndae.federation.records import ema_weights_record
    from ndae.federation.server.strategy import dae_config_for
    from ndae.federation.site.data import load_site, site_cache_dir
    from ndae.federation.site.statistics import covariates
    from ndae.federation.site.training import build_dae
    from ndae.normative import NormativeModel

    root = tmp_path_factory.mktemp("score-histograms-site")
    make_synthetic_cohort(root / "cohort", sites=1, controls_per_site=7, patients_per_site=6, seed=5)
    manifest = root / "cohort" / "sites" / "site1" / "manifest.csv"
    config = _config(root, privacy=False)
    site = load_site(manifest, prepared_dir=site_cache_dir({"manifest": str(manifest)}, manifest, config.cache_dir))
    dae = dae_config_for(config, int(site.data.images.shape[1]))
    torch.manual_seed(0)
    _, ema = build_dae(dae.to_dict(), "cpu")
    frame = covariates(site, np.ones(len(site.data.subjects), bool))
    normative = NormativeModel().fit(frame, np.random.default_rng(0).normal(size=(len(frame), dae.model.z_sem_dim)))
    return {"root": root, "manifest": manifest, "dae": dae, "weights": ema_weights_record(ema), "normative": normative}


def _config(root, **overrides):
    settings = dict(run_dir=str(root / "run"), rounds=1, batch_size=4, seed=SEED, cache_dir=str(root / "cache"),
                    survival_mode="federated", voxelwise_baseline=False, prior_residuals=False)
    return FederationConfig(**{**settings, **overrides})


def _deviations(world, tmp_path, *, privacy: bool, node_config=None, edges=None):
    from ndae.federation.records import normative_to_config
    from ndae.federation.server.score_distributions import deviations_request

    config = _config(world["root"], privacy=privacy)
    # example-maps off: the site's own maps (tests/test_site_example_maps.py) are not what is checked here
    node = {"budget-epsilon": 50.0, "max-epsilon-per-run": 50.0, "privacy-dir": str(tmp_path / "ledger")} if privacy else {}
    node = {**node, "example-maps": "false", **(node_config or {})}
    grid = InProcessGrid([world["manifest"]], config.to_run_config(), node_config=node)
    content = RecordDict({"dae": world["weights"], "normative": normative_to_config(world["normative"]),
                          "config": ConfigRecord({"dae-config": json.dumps(world["dae"].to_dict()),
                                                  "features": ["cosine"], "share-rows": False})})
    for key, record in deviations_request(world["dae"].model.z_sem_dim, []).items():
        content[key] = record
    if edges is not None:
        content["score-histograms"] = ConfigRecord(edges)
    (reply,) = grid.send_and_receive([Message(content, dst_node_id=next(iter(grid.contexts)),
                                              message_type="query.deviations")])
    return reply


@pytest.mark.parametrize("request_", [
    {"scores": ["mahalanobis"], "edges-mahalanobis": [0.0, float("nan"), 2.0]},
    {"scores": ["mahalanobis"], "edges-mahalanobis": [0.0, 2.0, 1.0]},
    {"scores": ["mahalanobis"], "edges-mahalanobis": [0.0, float("inf")]},
    {"scores": ["mahalanobis"], "edges-mahalanobis": [float(v) for v in range(200)]},
    {"scores": ["mahalanobis"], "edges-mahalanobis": [1.0]},
    {"scores": ["subject"], "edges-subject": [0.0, 1.0]},
    {"scores": ["cosine"]},
], ids=["nan", "decreasing", "infinite", "too-many-bins", "one-edge", "not-a-score", "no-edges"])
def test_a_site_refuses_hostile_bin_edges_in_one_line_without_data(world, tmp_path, request_):
    reply = _deviations(world, tmp_path, privacy=False, edges=request_)
    assert reply.has_error()
    reason = reply.error.reason.splitlines()[0]
    assert "score-histograms" in reason and ("edges-" in reason or "'scores'" in reason)
    assert not SUBJECT_ID.search(reason) and str(world["root"]) not in reason


@pytest.mark.parametrize("narrow", [False, True], ids=["other-edges", "bisecting-edges"])
def test_a_private_site_counts_on_the_canonical_edges_only(world, tmp_path, narrow):
    """Edges a hostile server chose (here 64 bins around one value, asked again with the window
    moved: a bisection of one patient's score) are refused by a private site before any data is
    read, even where its counts are declared public; the canonical edges are answered."""
    from ndae.federation.site.score_histograms import histogram_edges

    canonical = histogram_edges(world["dae"].model.z_sem_dim)["mahalanobis"]
    asked = (np.linspace(10.0, 10.001, 65) if narrow else canonical * 1.01).tolist()
    node = {"public-counts": "true"}
    reply = _deviations(world, tmp_path / "hostile", privacy=True, node_config=node,
                        edges={"scores": ["mahalanobis"], "edges-mahalanobis": asked})
    assert reply.has_error() and "canonical edges" in reply.error.reason
    assert not SUBJECT_ID.search(reply.error.reason) and str(world["root"]) not in reply.error.reason
    fair = _deviations(world, tmp_path / "fair", privacy=True, node_config=node,
                       edges={"scores": ["mahalanobis"], "edges-mahalanobis": canonical.tolist()})
    assert not fair.has_error(), fair.error.reason if fair.has_error() else ""
    assert "score-histograms" in fair.content
    # a non-private run's server is trusted with the rows anyway: any valid edges are answered
    assert not _deviations(world, tmp_path / "open", privacy=False,
                           edges={"scores": ["mahalanobis"], "edges-mahalanobis": asked}).has_error()


def test_a_site_counts_every_subject_once_in_the_open_ended_bins(world, tmp_path):
    from ndae.federation.records import record_to_arrays

    reply = _deviations(world, tmp_path, privacy=False)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    counts = record_to_arrays(reply.content["score-histograms"])
    for score in ("mahalanobis", "cosine"):
        assert counts[f"control-{score}"].sum() == 7 and counts[f"patient-{score}"].sum() == 6
    assert "calibration" not in counts  # no fold models were sent: nothing is held out


def test_a_private_site_withholds_its_counts_unless_declared_public_and_the_report_says_why(world, tmp_path):
    from ndae.federation.records import record_to_arrays
    from ndae.federation.server.score_distributions import collect
    from ndae.privacy.ledger import read_ledger
    from ndae.reporting.score_distributions import score_distribution_lines

    withheld = _deviations(world, tmp_path / "private", privacy=True)
    assert not withheld.has_error(), withheld.error.reason if withheld.has_error() else ""
    assert "score-histograms" not in withheld.content
    d = world["dae"].model.z_sem_dim
    result = collect({"site1": withheld.content}, d, [], "a private run", private=True)
    text = "\n".join(score_distribution_lines(tmp_path, result))
    assert result["withheld"] == ["site1"] and "public-counts" in text and "private run" in text
    assert not (tmp_path / "figures").exists()

    public = _deviations(world, tmp_path / "public", privacy=True, node_config={"public-counts": "true"})
    assert not public.has_error(), public.error.reason if public.has_error() else ""
    counts = record_to_arrays(public.content["score-histograms"])
    assert counts["patient-mahalanobis"].sum() == 6
    (entry,) = [e for e in read_ledger(tmp_path / "public" / "ledger" / "site1.jsonl")
                if e["mechanism"] == "score-histograms"]
    assert entry["details"]["counts"]["patient-mahalanobis"] == counts["patient-mahalanobis"].tolist()
