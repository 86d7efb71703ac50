"""Run audit: chains, independent recomputation, budgets, CLI; empirical epsilon lower bound."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ndae.cli import main
from ndae.privacy.accountant import PrivacyEvent, SiteAccountant, epsilon_of
from ndae.privacy.audit import audit_run, empirical_epsilon_lower_bound
from ndae.privacy.ledger import write_heads

DELTA = 1e-5


@pytest.fixture()
def run_dir(tmp_path):
    for site, noise in (("site-a", 1.0), ("site-b", 1.5)):
        account = SiteAccountant.open(tmp_path, site)
        for round_number in range(3):
            account.spend_if_within(20.0, DELTA, PrivacyEvent.dp_sgd(
                noise_multiplier=noise, sample_rate=0.1, steps=30, max_grad_norm=1.0,
                records_touched=60, round=round_number))
        account.spend_if_within(20.0, DELTA, PrivacyEvent.gaussian(sigma=10.0, sensitivity=2.0, records_touched=60))
    return tmp_path


def test_clean_run_passes_and_independent_epsilon_agrees(run_dir):
    report = audit_run(run_dir, (20.0, DELTA))
    assert report["ok"], report
    for site in ("site-a", "site-b"):
        r = report["sites"][site]
        assert r["independent_accountant"] == "prv"
        # PRV is tighter than RDP, within a few tens of percent, never above RDP + its error
        assert 0.6 * r["epsilon_reported"] < r["epsilon_independent"] <= r["epsilon_reported"] + 0.01
    assert json.loads((run_dir / "privacy" / "audit.json").read_text())["ok"]


def test_tampered_ledger_is_reported_by_name(run_dir):
    path = run_dir / "privacy" / "site-b.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[2] + lines[3])
    report = audit_run(run_dir, (20.0, DELTA))
    assert not report["ok"]
    assert report["tampered"] == ["site-b"]
    assert "site-b.jsonl, line 2" in report["sites"]["site-b"]["problems"][0]
    assert report["sites"]["site-a"]["ok"]


def test_truncation_caught_through_recorded_heads(run_dir):
    heads = {}
    for site in ("site-a", "site-b"):
        account = SiteAccountant.open(run_dir, site)
        heads[site] = {"final_hash": account.entries[-1]["hash"], "entries": len(account.entries)}
    write_heads(run_dir, heads)
    assert audit_run(run_dir)["ok"]
    path = run_dir / "privacy" / "site-a.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    report = audit_run(run_dir)
    assert report["tampered"] == ["site-a"]
    assert "cut off" in report["sites"]["site-a"]["problems"][0]


def test_misreported_epsilon_is_caught(tmp_path):
    from ndae.privacy.ledger import append_entry, ledger_path

    # a well-chained ledger whose writer claimed too little epsilon
    true_eps = epsilon_of([(1.0, 0.1, 30)], DELTA)
    append_entry(ledger_path(tmp_path, "site-c"), site="site-c", mechanism="dp-sgd",
                 noise_multiplier=1.0, clip=1.0, sample_rate=0.1, steps=30, records_touched=60,
                 delta=DELTA, epsilon_spent_so_far=true_eps / 2, accountant="rdp")
    report = audit_run(tmp_path, (100.0, DELTA))
    problems = " ".join(report["sites"]["site-c"]["problems"])
    assert not report["ok"] and "line 1: reported epsilon" in problems


def test_over_budget_and_cli_exit_codes(run_dir, capsys):
    eps = audit_run(run_dir)["sites"]["site-a"]["epsilon_reported"]
    report = audit_run(run_dir, {"site-a": (eps * 0.9, DELTA), "*": (20.0, DELTA)})
    assert report["over_budget"] == ["site-a"] and not report["ok"]
    # a stricter delta than the ledger's is recomputed, not trusted
    strict = audit_run(run_dir, (20.0, 1e-9))
    assert strict["sites"]["site-a"]["epsilon_at_budget_delta"] > eps
    assert main(["audit", str(run_dir), "--budget-epsilon", "20", "--budget-delta", "1e-5"]) == 0
    assert "site site-a: ok" in capsys.readouterr().out
    assert main(["audit", str(run_dir), "--budget-epsilon", str(eps * 0.9), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["over_budget"] == ["site-a"]


def test_empirical_bound_near_zero_for_identical_distributions():
    rng = np.random.default_rng(0)
    result = empirical_epsilon_lower_bound(rng.normal(size=1000), rng.normal(size=1000), DELTA)
    assert result["epsilon_lower_bound"] <= 0.05


def test_empirical_bound_large_for_separated_scores():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(10, 1, size=1000), rng.normal(0, 1, size=1000)
    result = empirical_epsilon_lower_bound(members, nonmembers, DELTA)
    assert result["epsilon_lower_bound"] > 4.0, result
    # the lower bound must not exceed what the sample size can show: log(n) at most
    assert result["epsilon_lower_bound"] < np.log(1000)
    flipped = empirical_epsilon_lower_bound(-members, -nonmembers, DELTA)
    assert flipped["epsilon_lower_bound"] == pytest.approx(result["epsilon_lower_bound"], rel=0.05)


def test_empirical_bound_grows_with_the_true_gap():
    rng = np.random.default_rng(1)
    nonmembers = rng.normal(size=2000)
    bounds = [empirical_epsilon_lower_bound(rng.normal(shift, 1, size=2000), nonmembers, DELTA)["epsilon_lower_bound"]
              for shift in (0.5, 1.5, 3.0)]
    assert bounds[0] < bounds[1] < bounds[2]
