"""A site's approved Flower app list and its CLI."""

from __future__ import annotations

import hashlib

import pytest

from ndae.cli import main
from ndae.errors import NdaeError
from ndae.federation.site.app_approval import AppNotApprovedError, ApprovedApps, fab_hash


def test_approve_check_and_revoke(tmp_path):
    fab = b"PK\x03\x04 pretend flower app bundle"
    other = b"PK\x03\x04 a different app"
    policy = ApprovedApps(tmp_path / "site-a")
    with pytest.raises(AppNotApprovedError, match=fab_hash(fab)):
        policy.check_fab(fab)
    policy.approve(fab_hash(fab).upper(), note="v1")
    assert policy.is_approved(fab_hash(fab))
    assert policy.check_fab(fab) == hashlib.sha256(fab).hexdigest()
    with pytest.raises(AppNotApprovedError):
        policy.check_fab(other)
    policy.approve(fab_hash(fab))  # idempotent
    assert len(ApprovedApps(tmp_path / "site-a").approved()) == 1
    assert policy.revoke(fab_hash(fab)) and not policy.is_approved(fab_hash(fab))
    with pytest.raises(NdaeError, match="not a sha256"):
        policy.approve("abc123")


def test_site_cli(tmp_path, capsys):
    fab_file = tmp_path / "app.fab"
    fab_file.write_bytes(b"bundle bytes")
    assert main(["site", "hash", str(fab_file)]) == 0
    digest = capsys.readouterr().out.strip()
    assert digest == hashlib.sha256(b"bundle bytes").hexdigest()
    site_dir = tmp_path / "site"
    assert main(["site", "approve", digest, "--site-dir", str(site_dir)]) == 0
    capsys.readouterr()
    assert main(["site", "list", "--site-dir", str(site_dir)]) == 0
    assert capsys.readouterr().out.startswith(digest)
    assert main(["site", "approve", "not-a-hash", "--site-dir", str(site_dir)]) == 1
