"""Deployment rehearsal on 127.0.0.1 with real processes: TLS, SuperNode authentication, site control.

One SuperLink (TLS, --enable-supernode-auth) and two SuperNodes started with the deploy/
scripts on a synthetic 2-site cohort, plus one SuperNode whose key was never registered. The
repository's own Flower app is submitted with `flwr run`, and the same app with one byte changed.
Every process is stopped by its PID in the fixture's teardown; every wait is bounded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

from flwr.cli.build import build_fab_from_disk  # noqa: E402
from flwr.supercore.exit import ExitCode  # noqa: E402

from ndae.deploy.loopback import LoopbackConsortium  # noqa: E402
from ndae.federation.simulation import stage_app  # noqa: E402
from ndae.federation.site.app_approval import ApprovedApps, fab_hash  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Two sites: every message round starts one Flower ClientApp process per site (~3 CPU-seconds
# each); a third site would exercise no code path the second does not (the sums over sites are
# specified in process on three, tests/test_federation.py).
SITES = ("site1", "site2")
# A tiny job: the `tiny` DAE's weights go to every site (rounds=0: no training round, which
# would add ~2-4 min on 2 CPU cores), then normative model, deviations, survival, report.
# The voxel-wise baseline is off here (its plumbing is tested in process: tests/test_federation.py and
# through Flower's simulation engine: tests/test_federation_flwr.py); on it would add a message round. So are
# the prior residuals (tests/test_federation_prior_*.py, and through Flower: tests/test_federation_flwr.py).
RUN_CONFIG = ("rounds=0 local-epochs=1 batch-size=4 seed=3 min-sites=2 round-timeout=240.0 voxelwise-baseline=false "
              "prior-residuals=false")


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    from ndae.testing.synthetic_cohort import make_synthetic_cohort

    root = tmp_path_factory.mktemp("consortium")
    # 16 controls and 18 patients, as many as on three sites of 5 and 6
    make_synthetic_cohort(root / "cohort", sites=len(SITES), controls_per_site=8, patients_per_site=9, seed=1)
    app_hash = fab_hash(build_fab_from_disk(REPO))
    # The same app with one byte changed in the ClientApp (the folder name must be a valid
    # Flower app name). Its unchanged copy has the repository's hash: the byte is the only change.
    changed = stage_app(root / "changed")
    assert fab_hash(build_fab_from_disk(changed)) == app_hash
    client = changed / "client" / "client_app.py"
    client.write_text(client.read_text() + " ")
    changed_hash = fab_hash(build_fab_from_disk(changed))

    with LoopbackConsortium(root / "deployment", database=":flwr-in-memory:") as loopback:
        loopback.create_credentials()
        loopback.start_superlink(timeout=90)
        node_ids = {}
        for site in SITES:
            _, public = loopback.create_site(site, manifest=root / "cohort" / "sites" / site / "manifest.csv")
            node_ids[site] = loopback.register(public, site)
            ApprovedApps(loopback.site_dir(site)).approve(app_hash, "ndae-fed, reviewed")
        loopback.create_site("rogue")  # a key pair, never registered
        # Deployed SuperNodes are private by default: these also take the non-private jobs below,
        # so their administrators opt out.
        supernodes = [loopback.start_supernode(site, node_config="require-privacy=false") for site in SITES]
        rogue = loopback.start_supernode("rogue", extra_args=("--max-retries", "1", "--max-wait-time", "20"))
        for node in supernodes:
            loopback.wait_for_log(node, "SuperNode ID:", 120)
        # The jobs run side by side: the approved app, the changed one, and the approved app with
        # privacy on (each site keeps its ledger beside its manifest, the server a copy).
        runs = {}
        approved = stage_app(root / "approved")  # any checkout folder name works for flwr
        for name, folder, extra in (("approved", approved, ""), ("changed", changed, ""),
                                    ("private", approved, " privacy=true budget-epsilon=10.0")):
            run_dir = root / f"run-{name}"
            run_config = f'{RUN_CONFIG}{extra} run-dir="{run_dir}" cache-dir="{root / "cache"}"'
            runs[name] = (loopback.run(folder, run_config), run_dir)
        yield {"loopback": loopback, "app_hash": app_hash, "changed_hash": changed_hash,
               "node_ids": node_ids, "supernodes": supernodes, "rogue": rogue, "runs": runs}
    for process in loopback.processes:  # teardown really stopped everything it started
        assert process.popen.poll() is not None, f"{process.name} still running"


def test_registered_sites_run_the_job_over_tls(consortium):
    loopback = consortium["loopback"]
    run_id, run_dir = consortium["runs"]["approved"]
    assert loopback.wait_run(run_id, timeout=420, done_file=run_dir / "report.md") == "finished:completed"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "completed" and status["missing"] == []
    assert "None: every site answered" in (run_dir / "report.md").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sorted(summary["sites"]) == list(SITES)  # each SuperNode read its own manifest
    for path in ("dae/checkpoint.pt", "normative/model.npz", "deviations.csv", "survival/cox.json"):
        assert (run_dir / path).exists(), path
    for node in consortium["supernodes"]:
        assert f"app {consortium['app_hash']} is approved" in node.text()


def test_private_job_keeps_ledgers_at_the_sites_and_the_audit_verifies_them(consortium):
    from ndae.cli import main

    loopback = consortium["loopback"]
    run_id, run_dir = consortium["runs"]["private"]
    assert loopback.wait_run(run_id, timeout=420, done_file=run_dir / "report.md") == "finished:completed"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["survival"]["mode"] == "federated"  # the private default: no patient row left a site
    assert not (run_dir / "deviations.csv").exists()
    heads = json.loads((run_dir / "privacy" / "heads.json").read_text())
    for site in SITES:
        # The site's own ledger (what it can prove) sits beside its manifest, not in the server's run dir.
        site_ledger = Path((loopback.site_dir(site) / "manifest-path").read_text()).parent / "privacy" / f"{site}.jsonl"
        assert site_ledger.exists(), site_ledger
        assert site_ledger.read_text() == (run_dir / "privacy" / f"{site}.jsonl").read_text()
        assert heads[site]["epsilon"] > 0 and heads[site]["entries"] >= 1
    assert main(["audit", str(run_dir)]) == 0
    assert "every site answered" in (run_dir / "report.md").read_text()


def test_unregistered_supernode_is_refused(consortium):
    rogue = consortium["rogue"]
    assert rogue.popen.wait(timeout=120) != 0
    # flower-supernode exits with status 1 and logs Flower's own exit code.
    assert f"Exit Code: {int(ExitCode.SUPERNODE_CONNECTION_ERROR)}" in rogue.text()
    assert "Failed to activate SuperNode" in rogue.text()
    superlink = consortium["loopback"].processes[0]
    assert "No SuperNode found with the given public key" in superlink.text()
    assert "SuperNode ID:" not in rogue.text()


def test_changed_app_is_refused_and_the_server_sees_why(consortium):
    loopback = consortium["loopback"]
    changed_hash = consortium["changed_hash"]
    assert changed_hash != consortium["app_hash"]
    run_id, run_dir = consortium["runs"]["changed"]
    assert loopback.wait_run(run_id, timeout=240, done_file=run_dir / "status.json").startswith("finished")
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed"
    reasons = " ".join(entry["reason"] for entry in status["missing"])
    for site in SITES:
        # What the ServerApp received from each SuperNode: the refusal, and how to approve.
        assert f"site {site} has not approved app {changed_hash}" in reasons
        assert f"ndae site approve {changed_hash} --site-dir {loopback.site_dir(site)}" in reasons
        # The refused bundle was never unpacked at the site; the approved one was.
        installed = [path.name for path in (loopback.site_dir(site) / "flwr-home" / "apps").iterdir()]
        assert not any(changed_hash[:8] in name for name in installed)
        assert any(consortium["app_hash"][:8] in name for name in installed)
    assert "AppNotApprovedError" in reasons  # raised in flwr-clientapp: CLIENT_APP_RAISED_EXCEPTION


def test_revoked_site_is_disconnected_and_cannot_rejoin(consortium):
    """Revocation: `flwr supernode unregister` drops a live site; its key no longer works."""
    loopback = consortium["loopback"]
    for name in ("approved", "changed", "private"):  # let the jobs end first (no-op if already finished)
        loopback.wait_run(consortium["runs"][name][0], timeout=420)
    revoked, *others = consortium["supernodes"][::-1]  # the last site is revoked
    result = loopback.flwr("supernode", "unregister", consortium["node_ids"][SITES[-1]], "consortium",
                           "--format", "json")
    assert '"success": true' in result.stdout, result.stdout + result.stderr
    revoked.popen.wait(timeout=60)  # the SuperLink refuses its next request; it shuts down
    again = loopback.start_supernode(SITES[-1], extra_args=("--max-retries", "1", "--max-wait-time", "20"))
    assert again.popen.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in again.text()
    assert others and all(node.popen.poll() is None for node in others)  # the other sites are unaffected


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
