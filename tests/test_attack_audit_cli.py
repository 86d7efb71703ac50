"""`ndae audit` as a careless user meets it: its first line is the verdict (OK, FAILED, NOT
PRIVATE and why), a run whose noise came from the test-only seed is not passed, bad budget flags
and a read-only run folder end in a clear message, never a traceback."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ndae.cli import main
from ndae.io import atomic_write_json
from tests import test_attack_audit_ledger as ledger_attacks
from tests.test_attack_audit_ledger import SITES, one_run, server_run

consortium = ledger_attacks.consortium  # the same two-site run and registry, as a fixture here too


def _out(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return captured.out + captured.err


def test_a_run_whose_sites_used_the_insecure_seed_is_not_private(tmp_path, capsys):
    run = server_run(tmp_path, one_run(tmp_path, "seeded", 0.5, insecure_seed=7))
    assert main(["audit", str(run)]) == 1
    out = _out(capsys)
    assert out.startswith("NOT PRIVATE: site(s) site-a, site-b drew their noise from the test-only "
                          "insecure-reproducible-seed"), out


def test_the_report_opens_with_the_insecure_seed(consortium):
    from ndae.federation.server.privacy import insecure_seed_lines

    heads = json.loads((consortium["run"] / "privacy" / "heads.json").read_text())
    assert insecure_seed_lines(heads) == []
    heads["site-b"]["insecure_seed"] = True
    assert insecure_seed_lines(heads)[0].startswith("**NOT PRIVATE: site(s) site-b drew")


def test_a_non_private_run_says_so_in_its_first_line(tmp_path, capsys):
    atomic_write_json(tmp_path / "config.json", {"federation": {"privacy": False}, "sites": {s: {} for s in SITES}})
    main(["audit", str(tmp_path)])
    first = _out(capsys).splitlines()[0]
    assert first.startswith("NOT PRIVATE: config.json says federation.privacy = false"), first


def test_a_clean_run_says_ok_first(consortium, capsys):
    assert main(["audit", str(consortium["run"]), "--keys", str(consortium["registry"])]) == 0
    assert _out(capsys).startswith("OK: 2 site(s)")


@pytest.mark.parametrize("flags,message", [
    (["--budget-delta", "5"], "--budget-delta 5: must be a number in (0, 1)"),
    (["--budget-delta", "0"], "--budget-delta 0: must be a number in (0, 1)"),
    (["--budget-delta", "-1"], "--budget-delta -1: must be a number in (0, 1)"),
    (["--budget-delta", "nan"], "--budget-delta nan"),
    (["--budget-epsilon", "0"], "--budget-epsilon 0: must be a finite number > 0"),
    (["--budget-epsilon", "inf"], "--budget-epsilon inf: must be a finite number > 0"),
])
def test_a_bad_budget_flag_is_a_clear_error(consortium, capsys, flags, message):
    before = sorted(os.listdir(consortium["run"] / "privacy"))
    assert main(["audit", str(consortium["run"]), *flags]) == 1
    assert message in _out(capsys)
    assert sorted(os.listdir(consortium["run"] / "privacy")) == before  # refused before writing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_folder_is_audited_and_says_audit_json_was_not_written(consortium, capsys):
    privacy = consortium["run"] / "privacy"
    mode = stat.S_IMODE(privacy.stat().st_mode)
    os.chmod(privacy, 0o555)
    try:
        assert main(["audit", str(consortium["run"]), "--keys", str(consortium["registry"])]) == 0
    finally:
        os.chmod(privacy, mode)
    out = _out(capsys)
    assert out.startswith("OK") and "audit.json: not written" in out
    assert not (privacy / "audit.json").exists()


def test_an_unwritable_audit_record_never_loses_the_audit(consortium, capsys, monkeypatch):
    """The same as a read-only folder, for a user (root) whom permissions do not stop."""
    import ndae.privacy.audit as audit

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(audit, "atomic_write_json", refuse)
    assert main(["audit", str(consortium["run"]), "--keys", str(consortium["registry"])]) == 0
    out = _out(capsys)
    assert out.startswith("OK") and "audit.json: not written (Permission denied)" in out
