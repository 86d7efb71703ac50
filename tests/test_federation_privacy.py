"""Privacy wired into the federated run, in process (InProcessGrid runs the real ClientApp code).

Each site trains on 5 of its 7 controls; the other 2 are held out for the membership audit.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from ndae.federation.config import FederationConfig
from ndae.federation.inprocess import InProcessGrid
from ndae.federation.server.phases import FederationError, run_federation
from ndae.privacy.accountant import epsilon_of
from ndae.privacy.audit import audit_run
from ndae.privacy.delta import DEFAULT_DELTA
from ndae.privacy.ledger import ACCOUNTED_MECHANISMS, read_ledger
from ndae.testing.synthetic_cohort import make_synthetic_cohort

SITES = ("site1", "site2", "site3")
BUDGET = 50.0
# The sites' own example deviation maps (drawn on their disks, never sent; tests/test_site_example_maps.py)
# are drawn in the shared private run; the runs that check one thing beside it skip drawing them.
WITHOUT_MAPS = {"example-maps": "false"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("fedprivacy")
    make_synthetic_cohort(root / "cohort", sites=3, controls_per_site=7, patients_per_site=4, seed=2)
    for site in SITES:  # split/<site>/ sits as deep as sites/<site>/: relative image paths still resolve
        manifest = pd.read_csv(root / "cohort" / "sites" / site / "manifest.csv")
        controls = manifest[manifest["group"] == "control"]
        out = root / "cohort" / "split" / site
        out.mkdir(parents=True)
        pd.concat([controls.iloc[:5], manifest[manifest["group"] != "control"]]).to_csv(out / "train.csv", index=False)
        controls.iloc[:5].to_csv(out / "members.csv", index=False)
        controls.iloc[5:].to_csv(out / "heldout.csv", index=False)
    return root


def _grid(cohort, config, node_config, node_overrides=None):
    grid = InProcessGrid([cohort / "cohort" / "split" / s / "train.csv" for s in SITES], config.to_run_config(),
                         node_config=node_config)
    for context in grid.contexts.values():
        site = context.node_config["manifest"].split("/")[-2]
        context.node_config.update((node_overrides or {}).get(site, {}))
    return grid


def _run(cohort, name, node_overrides=None, node_config=None, **overrides):
    """A private run; every site's policy (node config) keeps its ledger in RUN/privacy and allows
    BUDGET (the tiny cohort's 5 controls a site cannot buy much for the default 10)."""
    run_dir = cohort / name
    settings = dict(rounds=1, batch_size=4, seed=3, privacy=True, cache_dir=str(cohort / "cache"))
    settings.update(overrides)
    config = FederationConfig(run_dir=str(run_dir), **settings)
    policy = {"privacy-dir": str(run_dir / "privacy"), "budget-epsilon": BUDGET, "max-epsilon-per-run": BUDGET,
              **(node_config or {})}
    return run_federation(_grid(cohort, config, policy, node_overrides), config, log=lambda _: None), run_dir


def _accounted(path, head=None):
    return [e for e in read_ledger(path, head) if e["mechanism"] in ACCOUNTED_MECHANISMS]


@pytest.fixture(scope="module")
def private_run(cohort):
    return _run(cohort, "private")


def _copy_run(source, target):
    shutil.copytree(source / "dae", target / "dae")
    shutil.copytree(source / "privacy", target / "privacy")


def test_private_run_writes_ledgers_and_the_audit_recomputes_the_reported_epsilon(private_run):
    summary, run = private_run
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert summary["survival"]["mode"] == "federated"  # the private default: no row leaves a site
    assert not (run / "deviations.csv").exists()
    heads = json.loads((run / "privacy" / "heads.json").read_text())
    assert sorted(heads) == list(SITES) == sorted(summary["privacy"])
    report = audit_run(run, {s: (BUDGET, heads[s]["delta"]) for s in SITES})
    assert report["ok"], report
    for site in SITES:
        entries = read_ledger(run / "privacy" / f"{site}.jsonl", heads[site]["final_hash"])
        mechanisms = [e["mechanism"] for e in entries]
        # DP releases first (training, the z_sem moments, the prior residuals' moments), then what
        # federated Cox asked (declared, no epsilon), then the concordance counts
        assert mechanisms[:3] == ["dp-sgd", "gaussian-moments", "gaussian-moments"]
        if "cox_refused" in summary["survival"]:
            # the DP noise can leave 12 patients' events perfectly ordered: no finite Cox model, the run
            # still completes; the queries the fit asked before it stopped are all in the ledger
            assert len(mechanisms) > 3 and set(mechanisms[3:]) == {"cox-terms"}
        else:
            assert mechanisms[-1] == "risk-summary"
            cox_rounds = (summary["survival"]["newton_message_rounds"]
                          + summary["survival"]["covariates_only"]["newton_message_rounds"])
            assert set(mechanisms[3:-1]) == {"cox-terms"} and len(mechanisms) - 4 == cox_rounds  # full + covariates-only
        assert entries[0]["records_touched"] == 0 and entries[0]["details"]["round"] == 1  # counts are not public
        history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries[:3]]
        recomputed = epsilon_of(history, heads[site]["delta"], "rdp")
        assert heads[site]["delta"] == DEFAULT_DELTA  # the site's policy, not a function of its size
        assert summary["privacy"][site]["epsilon"] == pytest.approx(recomputed, rel=1e-9)
        assert report["sites"][site]["epsilon_reported"] == pytest.approx(recomputed, rel=1e-9)
        assert 0 < recomputed < BUDGET
    text = (run / "report.md").read_text()
    assert "## Privacy" in text and all(heads[s]["final_hash"] in text for s in SITES)


def test_ndae_audit_reads_the_reported_budgets_and_detects_a_truncated_ledger(private_run, cohort, capsys):
    from ndae.cli import main

    _, run = private_run
    assert main(["audit", str(run)]) == 0
    assert "budget epsilon 50" in capsys.readouterr().out
    copy = cohort / "truncated"
    _copy_run(run, copy)
    ledger = copy / "privacy" / "site2.jsonl"
    ledger.write_text(ledger.read_text().splitlines(keepends=True)[0])  # drop the last line
    assert main(["audit", str(copy)]) == 1
    assert "cut off the end" in capsys.readouterr().out


@pytest.mark.slow
def test_a_site_over_budget_is_refused_and_the_run_goes_on_without_it(private_run, cohort):
    summary, source = private_run
    run = cohort / "over-budget"
    _copy_run(source, run)
    before = {s: (run / "privacy" / f"{s}.jsonl").read_bytes() for s in SITES}
    # site2's own budget (node config) leaves room for nothing more
    tight = summary["privacy"]["site2"]["epsilon"] + 0.01
    summary, run = _run(cohort, "over-budget", {"site2": {"budget-epsilon": tight}}, node_config=WITHOUT_MAPS,
                        rounds=2, min_sites=2)
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    refused = [m for m in summary["missing"] if m["site"] == "site2"]
    assert {m["phase"] for m in refused} == {"train", "normative_stats"}  # not asked for prior residuals: no z_sem model from it
    reason = refused[0]["reason"]
    assert "PrivacyBudgetExceeded: site 'site2' refuses" in reason and f"lifetime epsilon {tight:g}" in reason
    # what the server reads names the site's limits, not the epsilon it would reach (that follows from n)
    assert "would bring epsilon to" not in reason and "sample_rate" not in reason
    # nothing accounted on refusal (site2 still answered the survival queries: declared lines follow)
    site2 = run / "privacy" / "site2.jsonl"
    assert site2.read_bytes().startswith(before["site2"]) and len(_accounted(site2)) == 3
    for site in ("site1", "site3"):  # append-only: the old lines are byte-identical
        after = (run / "privacy" / f"{site}.jsonl").read_bytes()
        assert after.startswith(before[site]) and len(_accounted(run / "privacy" / f"{site}.jsonl")) == 6
    assert summary["participation"] == {"site1": 2, "site2": 1, "site3": 2}
    assert summary["normative"]["sites"] == ["site1", "site3"]
    assert audit_run(run)["ok"]


def test_too_few_sites_within_budget_stops_cleanly_and_keeps_every_file(private_run, cohort):
    summary, source = private_run
    run = cohort / "stopped"
    _copy_run(source, run)
    files = [run / "dae" / "checkpoint.pt", *(run / "privacy" / f"{s}.jsonl" for s in SITES),
             run / "privacy" / "heads.json"]
    before = {path: path.read_bytes() for path in files}
    tight = summary["privacy"]["site2"]["epsilon"] + 0.01
    with pytest.raises(FederationError, match="fewer than min-sites = 3"):
        _run(cohort, "stopped", {"site2": {"budget-epsilon": tight}}, rounds=2, min_sites=3)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "PrivacyBudgetExceeded" in json.dumps(status["missing"])
    assert (run / "dae" / "checkpoint.pt").read_bytes() == before[run / "dae" / "checkpoint.pt"]
    assert (run / "privacy" / "site2.jsonl").read_bytes() == before[run / "privacy" / "site2.jsonl"]
    for site in ("site1", "site3"):  # they trained round 2 before the server stopped: appended, not rewritten
        assert (run / "privacy" / f"{site}.jsonl").read_bytes().startswith(before[run / "privacy" / f"{site}.jsonl"])
    assert audit_run(run)["ok"]  # heads.json moved on with the appended lines; every chain verifies


@pytest.mark.slow
def test_dp_moments_with_zero_noise_give_the_exact_federated_normative_fit(private_run, cohort):
    """Same global DAE (resumed, no training): private moments with noise 0 and clips that bind
    nothing == the plain federated moments, so the normative model is unchanged."""
    from ndae.normative import NormativeModel

    _, source = private_run
    for name in ("exact", "zero-noise"):
        shutil.copytree(source / "dae", cohort / name / "dae")
    # What is compared is the normative model: the steps after it are the cheapest the run allows.
    after = {"survival_mode": "federated", "prior_residuals": False, "voxelwise_baseline": False}
    _run(cohort, "exact", privacy=False, node_config={"require-privacy": "false", **WITHOUT_MAPS}, **after)  # the comparison: no DP
    _run(cohort, "zero-noise", moments_noise_multiplier=0.0, moments_covariate_clip=1e6, moments_latent_clip=1e6,
         node_config={"budget-epsilon": "inf", "max-epsilon-per-run": "inf", **WITHOUT_MAPS}, **after)  # a noise-free release has epsilon inf
    with np.load(cohort / "exact" / "normative" / "sufficient_stats.npz") as a, \
            np.load(cohort / "zero-noise" / "normative" / "sufficient_stats.npz") as b:
        for key in ("n", "xtx", "xty", "sum_y", "sum_y2", "yty", "site_n", "site_sum_x", "site_sum_y"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-10, atol=1e-10, err_msg=key)
    exact, private = (NormativeModel.load(cohort / n / "normative") for n in ("exact", "zero-noise"))
    np.testing.assert_allclose(private.beta, exact.beta, rtol=1e-9, atol=1e-10)
    entries = _accounted(cohort / "zero-noise" / "privacy" / "site1.jsonl")
    assert entries[-1]["mechanism"] == "gaussian-moments" and entries[-1]["epsilon_spent_so_far"] == "inf"


@pytest.mark.slow
def test_pooled_scores_in_a_private_run_need_the_sites_consent(private_run, cohort):
    _, source = private_run
    run = cohort / "pooled"
    _copy_run(source, run)
    own = cohort / "site1-own-ledger"  # site1 keeps its ledger in its own folder: the run gets a verified copy
    consent = {"allow-pooled-scores": "true", "public-counts": "true"}
    summary, _ = _run(cohort, "pooled", {"site1": {**consent, "privacy-dir": str(own)}, "site3": consent},
                      node_config=WITHOUT_MAPS, survival_mode="pooled", min_sites=2)
    # site2 refuses before it reads anything (even its manifest: the server sees a node, not a site), and says why
    refused = summary["missing"]
    assert len(refused) == 1 and sorted(summary["sites"]) == ["site1", "site3"]
    assert refused[0]["phase"] == "site_info" and "PolicyViolation" in refused[0]["reason"]
    assert "'survival-mode' = 'pooled'" in refused[0]["reason"] and "allow-pooled-scores=true" in refused[0]["reason"]
    assert summary["survival"]["counts"].keys() == {"site1", "site3"}  # the two sites declare counts public
    assert (run / "privacy" / "site1.jsonl").read_bytes() == (own / "site1.jsonl").read_bytes()
    entries = read_ledger(own / "site1.jsonl", summary["privacy"]["site1"]["final_hash"])
    # counts declared public: the score histograms are a declared release too
    assert [e["mechanism"] for e in entries] == ["gaussian-moments", "gaussian-moments", "score-histograms",
                                                 "shared-scores", "risk-summary"]
    rows = pd.read_csv(run / "deviations.csv")
    subjects = set(pd.read_csv(cohort / "cohort" / "split" / "site1" / "train.csv")["subject"].astype(str))
    assert len(rows) == 8 and not set(rows["subject"].astype(str)) & subjects  # pseudonyms, never the ids
    assert "pseudonym drawn for this run" in (run / "report.md").read_text()


def test_ndae_audit_empirical_reads_members_and_the_accounted_epsilon(private_run, cohort, capsys):
    from ndae.cli import main

    _, run = private_run
    split = cohort / "cohort" / "split" / "site1"
    code = main(["audit", str(run), "--empirical", "--members", str(split / "members.csv"),
                 "--nonmembers", str(split / "heldout.csv"), "--cache-dir", str(cohort / "cache"), "--draws", "4"])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads((run / "privacy" / "empirical.json").read_text())
    assert result["site"] == "site1" and result["n_members"] == 5 and result["n_nonmembers"] == 2
    # 5 members vs 2 non-members cannot give a bound above 0: this checks the command's plumbing;
    # whether the audit can detect memorisation is tests/test_privacy_empirical_power.py.
    assert result["epsilon_accounted"] == pytest.approx(json.loads(
        (run / "privacy" / "heads.json").read_text())["site1"]["epsilon"], rel=1e-9)
    assert "empirical audit (site site1" in out


def test_denoising_scores_are_seeded_and_shared_by_every_image():
    from ndae.model import build_model, preset
    from ndae.privacy.attack import denoising_scores

    cfg = preset("tiny").with_data_shape(1)
    images = torch.rand(3, 1, *cfg.model.image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = build_model(cfg, seed=0)
    a = denoising_scores(model, images, seed=1, draws=2)
    np.testing.assert_array_equal(a, denoising_scores(model, images, seed=1, draws=2))
    assert not np.array_equal(a, denoising_scores(model, images, seed=2, draws=2))
    # an image's score does not depend on which other images are scored with it
    np.testing.assert_allclose(denoising_scores(model, images[1:], seed=1, draws=2), a[1:], rtol=1e-5)


def test_canaries_are_trained_accounted_and_audited_at_each_site(cohort, capsys):
    from ndae.cli import main
    from ndae.privacy.canaries import canary_record_path, read_canary_record

    # One bounded score in the Cox model: with 12 patients, the noised normative model's Mahalanobis
    # distances can order the events perfectly (a monotone likelihood: the run then fails naming the
    # score, test_survival_federated_cox.py); measured once in CI. Survival is not what this test is
    # about, nor are the prior residuals (their release is test_federation_prior_privacy.py's).
    summary, run = _run(cohort, "canaries", audit_canaries=12, node_config={"public-counts": "true", **WITHOUT_MAPS},
                        survival_features="cosine", prior_residuals=False)
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    for site in SITES:
        canaries = read_canary_record(canary_record_path(run / "privacy", site))
        assert canaries.count == 12 and canaries.shape[1:] == (96, 80)
        # the canaries the site trained on are records like its 5 controls: DP-SGD touched and accounted them
        entry = next(e for e in read_ledger(run / "privacy" / f"{site}.jsonl") if e["mechanism"] == "dp-sgd")
        assert entry["records_touched"] == 5 + int(canaries.included().sum())
    code = main(["audit", str(run), "--canaries"])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((run / "privacy" / "canaries_audit.json").read_text())
    assert sorted(report["sites"]) == list(SITES) and report["ok"]
    for result in report["sites"].values():
        # 12 canaries cap the bound at 0.82: plumbing only (the power test is test_privacy_empirical_power.py)
        assert result["canaries"] == 12 and result["epsilon_accounted"] > 0 and "epsilon_lower_bound" in result
    assert "one-run canary audit" in out and "site2:" in out
