"""A hostile server and a careless operator against the ledger replies and the audit: what a ledger
reply carries (this run only), heads bound to the run and signed with the site's budget, the audit's
scope taken from what the sites signed and the registry, ledgers written 0600.

The sites here are the real site code (`SitePrivacy`, `record_declared`, `ledger_reply`) on a
ledger outside the run folder, as in a deployment; the server is `record_replies`."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from ndae.federation.server.privacy import record_replies
from ndae.federation.site.policy import SitePolicy
from ndae.federation.site.privacy import SitePrivacy, ledger_reply, record_declared
from ndae.io import atomic_write_json
from ndae.privacy.accountant import PrivacyEvent
from ndae.privacy.audit import audit_run
from ndae.privacy.ledger import canonical_json, write_heads

SITES = ("site-a", "site-b")
EARLIER_GRADIENT = -629.123456  # an earlier run's Cox gradient: no later server may see it
RUN, EARLIER_RUN = "run-new", "run-old"


def site_privacy(root: Path, site: str, run: str, insecure_seed: int | None = None) -> SitePrivacy:
    folder = root / "sites" / site / "privacy"
    policy = SitePolicy(budget_epsilon=20.0, max_epsilon_per_run=20.0, privacy_dir=str(folder),
                        insecure_seed=insecure_seed)
    return SitePrivacy(site=site, records=40, policy=policy, privacy_dir=folder, noise_multiplier=1.0,
                       max_grad_norm=1.0, target_epsilon=0.0, mode="flat", moments_noise_multiplier=10.0,
                       moments_covariate_clip=1.0, moments_latent_clip=1.0, run=run)


def dp_round(privacy: SitePrivacy, round_number: int) -> None:
    event = PrivacyEvent.dp_sgd(noise_multiplier=1.0, sample_rate=0.1, steps=20, max_grad_norm=1.0,
                                records_touched=0, **privacy.details(round=round_number))
    privacy.spend(privacy.accountant(), event)


def one_run(root: Path, run: str, gradient: float, insecure_seed: int | None = None) -> dict:
    """Every site trains one DP round and answers one Cox query; returns each site's last reply."""
    replies = {}
    for site in SITES:
        privacy = site_privacy(root, site, run, insecure_seed)
        dp_round(privacy, 1)
        record_declared(privacy, "cox-terms", beta=[0.5], gradient=[gradient], hessian=[[1.5]], loglik=-12.25)
        replies[site] = {"privacy": ledger_reply(privacy)}
    return replies


def server_run(root: Path, replies: dict, name: str = "run") -> Path:
    run_dir = root / name
    atomic_write_json(run_dir / "config.json", {"federation": {"privacy": True}, "sites": {s: {} for s in SITES}})
    heads: dict = {}
    record_replies(run_dir, heads, replies, [], log=lambda _: None)
    return run_dir


@pytest.fixture()
def consortium(tmp_path):
    """Two sites that served an earlier run, then this one; their registered keys in registry/."""
    one_run(tmp_path, EARLIER_RUN, EARLIER_GRADIENT)
    replies = one_run(tmp_path, RUN, 0.25)
    registry = tmp_path / "registry"
    registry.mkdir()
    for site in SITES:
        shutil.copy(tmp_path / "sites" / site / "privacy" / f"{site}.signing.pub", registry / f"{site}.pub")
    return {"root": tmp_path, "replies": replies, "run": server_run(tmp_path, replies), "registry": registry}


def _heads(run_dir: Path) -> dict:
    return json.loads((run_dir / "privacy" / "heads.json").read_text())


# --- what a ledger reply carries -----------------------------------------------------------------
def test_a_ledger_reply_carries_no_earlier_runs_release_and_no_path(consortium):
    root = consortium["root"]
    for site, reply in consortium["replies"].items():
        text = json.dumps(reply["privacy"])
        assert str(EARLIER_GRADIENT) not in text  # the earlier run's Cox terms stay at the site
        assert str(root) not in text  # nor the site's absolute ledger path
        assert "0.25" in reply["privacy"]["ledger-text"]  # this run's own Cox query is there
        # the earlier run's DP round is kept in full: the lifetime epsilon is composed from it
        assert reply["privacy"]["ledger-text"].count('"mechanism":"dp-sgd"') == 2
        copy = (consortium["run"] / "privacy" / f"{site}.jsonl").read_text()
        assert str(EARLIER_GRADIENT) not in copy and '"redacted":true' in copy


def test_the_excerpt_passes_the_audit_against_the_registry(consortium):
    report = audit_run(consortium["run"], keys_dir=consortium["registry"])
    assert report["ok"] and report["verdict"] == "OK", report
    for site in SITES:
        r = report["sites"][site]
        assert r["signature"] == "valid" and r["redacted"] == 1 and r["head_version"] == 2
        assert r["run"] == RUN and r["run_entries"] == 2


def test_a_dp_release_hidden_behind_a_redacted_stub_fails(consortium):
    path = consortium["run"] / "privacy" / "site-a.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    first = json.loads(lines[0])  # the earlier run's DP round
    lines[0] = canonical_json({"index": 0, "prev_hash": first["prev_hash"], "hash": first["hash"], "redacted": True}) + "\n"
    path.write_text("".join(lines))
    report = audit_run(consortium["run"], keys_dir=consortium["registry"])
    assert not report["ok"] and report["verdict"] == "FAILED"
    assert "the site signed" in " ".join(report["sites"]["site-a"]["problems"])


def test_a_redacted_line_is_refused_in_a_sites_own_ledger(consortium):
    from ndae.errors import LedgerError
    from ndae.privacy.ledger import read_ledger

    with pytest.raises(LedgerError, match="line 2: a redacted line"):
        read_ledger(consortium["run"] / "privacy" / "site-a.jsonl")


def test_a_simulated_site_writing_into_the_run_folder_keeps_its_whole_ledger(tmp_path):
    """When a site's privacy-dir is the run's privacy/ folder, its reply's excerpt must not
    replace its own ledger (the site would lose its earlier runs' lines)."""
    run_dir = tmp_path / "run"
    for run in (EARLIER_RUN, RUN):
        privacy = site_privacy(tmp_path, "site-a", run)
        privacy.privacy_dir = run_dir / "privacy"
        dp_round(privacy, 1)
        record_declared(privacy, "cox-terms", beta=[0.5], gradient=[EARLIER_GRADIENT], hessian=[[1.0]], loglik=-1.0)
        before = privacy.ledger.read_text()
        record_replies(run_dir, {}, {"site-a": {"privacy": ledger_reply(privacy)}}, [], log=lambda _: None)
        assert privacy.ledger.read_text() == before


# --- heads bound to the run, budgets signed ------------------------------------------------------
@pytest.mark.parametrize("field,value", [("budget_epsilon", 1e9), ("delta", 0.5), ("epsilon", 0.0),
                                         ("insecure_seed", False), ("run_entries", 1)])
def test_an_edited_signed_field_of_a_head_fails_against_the_registry(consortium, field, value):
    run = consortium["run"]
    if field == "insecure_seed":  # a run with the test-only seed, its flag then removed
        shutil.rmtree(run)
        run = server_run(consortium["root"], one_run(consortium["root"], "run-seeded", 0.5, insecure_seed=7), "seeded")
    heads = _heads(run)
    heads["site-b"][field] = value
    write_heads(run, heads)
    report = audit_run(run, keys_dir=consortium["registry"])
    assert not report["ok"] and "site-b" in report["tampered"], report
    assert "does not verify" in " ".join(report["sites"]["site-b"]["problems"])


def test_a_copy_cut_to_fewer_lines_of_the_run_than_signed_fails(consortium):
    """The head's sequence: run_entries counts this run's lines; a copy missing one fails even with
    a head whose chain fields were made to match (the signature then fails too)."""
    run = consortium["run"]
    path = run / "privacy" / "site-a.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    heads = _heads(run)
    heads["site-a"].update(final_hash=json.loads(lines[-2])["hash"], entries=len(lines) - 1)
    write_heads(run, heads)
    problems = " ".join(audit_run(run, keys_dir=consortium["registry"])["sites"]["site-a"]["problems"])
    assert "lines of run run-new, the site's signed head 2" in problems and "does not verify" in problems


# --- the audit's scope from what the sites signed and the registry -------------------------------
def test_flipping_privacy_off_and_deleting_the_ledgers_fails_against_the_registry(consortium, capsys):
    from ndae.cli import main

    run = consortium["run"]
    atomic_write_json(run / "config.json", {"federation": {"privacy": False}, "sites": {s: {} for s in SITES}})
    shutil.rmtree(run / "privacy")
    report = audit_run(run, keys_dir=consortium["registry"])
    assert not report["ok"] and sorted(report["unsigned"]) == list(SITES)
    assert main(["audit", str(run), "--keys", str(consortium["registry"])]) == 1
    assert capsys.readouterr().out.startswith("FAILED")


def test_dropping_a_site_from_the_run_fails_against_the_registry(consortium):
    run = consortium["run"]
    atomic_write_json(run / "config.json", {"federation": {"privacy": True}, "sites": {"site-a": {}}})
    (run / "privacy" / "site-b.jsonl").unlink()
    heads = _heads(run)
    del heads["site-b"]
    write_heads(run, heads)
    report = audit_run(run, keys_dir=consortium["registry"])
    assert not report["ok"] and report["sites"]["site-b"]["signature"] == "no head"


def test_privacy_from_the_signed_heads_not_the_config(consortium):
    run = consortium["run"]
    atomic_write_json(run / "config.json", {"federation": {"privacy": False}, "sites": {}})
    report = audit_run(run, keys_dir=consortium["registry"])
    assert report["private"] is True and report["ok"] and sorted(report["sites"]) == list(SITES)


# --- files ---------------------------------------------------------------------------------------
def test_ledgers_and_their_copies_are_written_0600(consortium):
    root, run = consortium["root"], consortium["run"]
    for site in SITES:
        for path in (root / "sites" / site / "privacy" / f"{site}.jsonl", run / "privacy" / f"{site}.jsonl",
                     root / "sites" / site / "privacy" / f".{site}.jsonl.lock"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_head_and_copy_of_another_run_are_named_in_a_warning(consortium):
    """The limit of a run folder alone (docs/privacy.md): site-b's copy and head replaced by the
    ones it signed in an earlier run verify, but the sites' signed heads then name two runs."""
    root, run = consortium["root"], consortium["run"]
    other = server_run(root, one_run(root, "run-other", 0.5), "other")
    (run / "privacy" / "site-b.jsonl").write_text((other / "privacy" / "site-b.jsonl").read_text())
    heads = _heads(run)
    heads["site-b"] = _heads(other)["site-b"]
    write_heads(run, heads)
    report = audit_run(run, keys_dir=consortium["registry"])
    assert report["runs"] == {"site-a": RUN, "site-b": "run-other"}
    assert any("name different runs (site-a: run-new, site-b: run-other)" in w for w in report["warnings"])


def test_one_sites_ledger_reply_that_does_not_verify_is_recorded_missing_and_the_others_are_kept(tmp_path):
    """A malformed reply from one site (a hostile or broken node) must not end the run for every
    site: that site's ledger is not recorded (so the audit fails it) and the others' are."""
    replies = one_run(tmp_path, RUN, 0.25)
    bad = dict(replies[SITES[0]]["privacy"])
    bad["ledger-text"] = bad["ledger-text"].replace("0.25", "0.26")  # an excerpt that no longer hashes to the head
    replies[SITES[0]] = {"privacy": bad}
    run_dir, heads, missing = tmp_path / "run", {}, []
    record_replies(run_dir, heads, replies, missing, log=lambda _: None)
    assert set(heads) == {SITES[1]}
    assert [m["site"] for m in missing] == [SITES[0]] and "does not verify" in missing[0]["reason"]
    assert not (run_dir / "privacy" / f"{SITES[0]}.jsonl").exists()
