"""Adversarial review of the privacy ledger reply, the run-folder lock and the demo's cohort:
cases an attacker or a careless user can reach, each one that the code let through once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ndae.errors import NdaeError
from ndae.run_folder import LOCK_NAME, RunFolderError, claim_output


def _dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


# ---- the run folder's lock --------------------------------------------------------------------
def test_a_live_holder_whose_lock_file_still_names_a_dead_run_is_not_broken(tmp_path):
    """Between taking the flock and writing its own record, a new holder's lock file still names the
    previous, dead holder (a run killed with -9 leaves its record). A second process that reads the
    stale record then must not break the live holder's lock: both would run in one folder."""
    run = tmp_path / "run"
    run.mkdir()
    lock = run / LOCK_NAME
    lock.write_text(f"pid {_dead_pid()} (ndae demo)\nstarted 1\n")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(lock)!r}, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)  # the lock is taken; its record is not written yet
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match="in use by"):
            claim_output(run, command="demo", settings={}, outputs=["status.json"])
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_file_that_is_a_symlink_never_truncates_what_it_points_to(tmp_path):
    """A `.ndae.lock` planted as a symlink (a shared folder, a copied tree) must not make the claim
    truncate and overwrite the file it points to: it is refused with a one-line error naming it."""
    precious = tmp_path / "precious.txt"
    precious.write_text("a file the user keeps\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).symlink_to(precious)
    with pytest.raises(RunFolderError, match=r"run.*\.ndae\.lock"):
        claim_output(run, command="demo", settings={}, outputs=["status.json"])
    assert precious.read_text() == "a file the user keeps\n"


# ---- the site's ledger reply --------------------------------------------------------------------
def test_a_ledger_line_holding_a_unicode_line_separator_does_not_shift_the_excerpt(tmp_path):
    """`ledger_reply` split the ledger's text with str.splitlines (which also splits at U+2028,
    U+2029, U+0085) but parsed it by bytes lines: one such character in an earlier run's line shifted
    every later line against its entry, so a fragment of the earlier run's declared release was sent
    in full as if it were this run's, and the excerpt no longer verified."""
    from tests.test_attack_audit_ledger import SITES, dp_round, server_run, site_privacy

    from ndae.federation.site.privacy import ledger_reply, record_declared
    from ndae.privacy.audit import audit_run

    secret = "-629.123456"
    for site in SITES:
        earlier = site_privacy(tmp_path, site, "run-old")
        record_declared(earlier, "cox-terms", beta=[0.5], covariates=["z_sem_norm\u2028"], gradient=[float(secret)])
    replies = {}
    for site in SITES:
        privacy = site_privacy(tmp_path, site, "run-new")
        dp_round(privacy, 1)
        record_declared(privacy, "cox-terms", beta=[0.5], covariates=["age"], gradient=[0.25])
        replies[site] = {"privacy": ledger_reply(privacy)}
    for reply in replies.values():
        assert secret not in reply["privacy"]["ledger-text"]
    run_dir = server_run(tmp_path, replies)  # each excerpt verifies against its signed head
    assert audit_run(run_dir)["ok"]


# ---- the demo's cohort ------------------------------------------------------------------------
def test_demo_force_never_deletes_the_cohort_it_was_given(tmp_path, monkeypatch):
    """`ndae demo --cohort OUT/cohort --out OUT --force`: the given cohort is one of the outputs
    --force deletes. It must be refused before anything is deleted, not lost."""
    from tests.test_demo_cohort_cache import _fake_generate

    from ndae.cohort import CohortConfig
    from ndae.federation.demo import run_demo

    out = tmp_path / "run"
    healthy = tmp_path / "healthy.csv"
    healthy.write_text("subject,site,image,age,sex,group\n")
    _fake_generate([])(healthy, out / "cohort", CohortConfig(sites=2))
    marker = out / "cohort" / "cohort.json"
    with pytest.raises(NdaeError, match=r"--cohort"):
        run_demo(out, rounds=1, cohort=out / "cohort", force=True, log=lambda line: None)
    assert marker.exists()


def test_demo_refuses_a_seed_no_generator_takes_before_it_simulates(tmp_path, monkeypatch):
    """`ndae demo --seed 2**70` passed the checks, simulated the cohort for minutes, then failed in
    training (torch's seed is 64-bit: "Overflow when unpacking long long")."""
    import ndae.cohort
    from ndae.federation.demo import run_demo

    def simulated(*args, **kwargs):
        raise AssertionError("the cohort was simulated before the seed was checked")

    monkeypatch.setattr(ndae.cohort, "generate_cohort", simulated)
    with pytest.raises(NdaeError, match=r"^--seed \d+: must be from 0 to \d+"):
        run_demo(tmp_path / "run", rounds=1, seed=2**70, log=lambda line: None)
    assert not (tmp_path / "run").exists()


def test_a_cohort_simulation_killed_midway_leaves_no_scratch_folder_in_the_cache(tmp_path, monkeypatch):
    """A demo killed (kill -9) while it simulates leaves `<cohort>.partial-<pid>`; the next request
    for that cohort, holding the cache's lock for it, must remove it rather than keep it forever."""
    import ndae.cohort
    from tests.test_demo_cohort_cache import _fake_generate

    from ndae.cohort import CohortConfig
    from ndae.cohort.cache import cached_cohort, cohort_cache_dir

    healthy = tmp_path / "healthy.csv"
    healthy.write_text("subject,site,image,age,sex,group\n")
    config = CohortConfig(sites=2)
    folder = cohort_cache_dir(config, healthy, tmp_path / "cache")
    left = folder.with_name(f"{folder.name}.partial-{_dead_pid()}")
    (left / "images").mkdir(parents=True)
    (left / "images" / "a.nii.gz").write_bytes(b"half an image")
    monkeypatch.setattr(ndae.cohort, "generate_cohort", _fake_generate([]))
    cached_cohort(healthy, config, root=tmp_path / "cache", log=lambda line: None)
    assert not left.exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name, f"{folder.name}.lock"]


def test_a_site_ledger_in_the_run_folder_that_grew_after_its_reply_is_not_cut_back(tmp_path):
    """When a site's privacy-dir is the run's privacy/ folder (one person runs the server and the
    sites), the server must not replace the site's own ledger with the excerpt of an older reply
    because another run appended to it meanwhile: the site would lose those lines (its spent budget)
    and its earlier runs' declared releases (stubs in the excerpt)."""
    from tests.test_attack_audit_ledger import dp_round, site_privacy

    from ndae.federation.server.privacy import record_replies
    from ndae.federation.site.privacy import ledger_reply, record_declared
    from ndae.privacy.ledger import read_ledger

    run_dir = tmp_path / "run"
    earlier = site_privacy(tmp_path, "site-a", "run-old")
    earlier.privacy_dir = run_dir / "privacy"
    record_declared(earlier, "cox-terms", beta=[0.5], gradient=[1.0])
    privacy = site_privacy(tmp_path, "site-a", "run-new")
    privacy.privacy_dir = run_dir / "privacy"
    dp_round(privacy, 1)
    reply = ledger_reply(privacy)
    other = site_privacy(tmp_path, "site-a", "run-concurrent")
    other.privacy_dir = run_dir / "privacy"
    dp_round(other, 1)  # another run of the site spends before the server records the reply
    before = privacy.ledger.read_text()
    record_replies(run_dir, {}, {"site-a": {"privacy": reply}}, [], log=lambda _: None)
    assert privacy.ledger.read_text() == before
    assert len(read_ledger(privacy.ledger)) == 3
