"""Run audit: chains, independent recomputation, budgets, CLI; empirical epsilon lower bound."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ndae.cli import main
from ndae.privacy.accountant import PrivacyEvent, SiteAccountant, epsilon_of
from ndae.privacy.audit import audit_run
from ndae.privacy.empirical import empirical_epsilon_lower_bound
from ndae.io import atomic_write_json
from ndae.privacy.ledger import GENESIS_HASH, ledger_path, make_entry, read_ledger, write_heads
from ndae.privacy.signing import load_or_create_signing_key, public_key_text, sign_head, signing_key_path

DELTA = 1e-5
SITES = ("site-a", "site-b")


def _sign_heads(run_dir, keys: dict, budget_epsilon=20.0):
    """What the server records from the sites' replies: each head signed by the site's key."""
    heads = {}
    for site in SITES:
        entries = read_ledger(ledger_path(run_dir, site))
        final = entries[-1]["hash"] if entries else GENESIS_HASH
        heads[site] = {"final_hash": final, "entries": len(entries), "epsilon": 1.0, "delta": DELTA,
                       "budget_epsilon": budget_epsilon, "public_key": public_key_text(keys[site]),
                       "signature": sign_head(keys[site], site, final, len(entries))}
    write_heads(run_dir, heads)
    return heads


@pytest.fixture()
def consortium(tmp_path):
    """A private run of two sites; each site's key lives at the site, its .pub in the registry."""
    run_dir, registry = tmp_path / "run", tmp_path / "registry"
    keys = {}
    for site, noise in (("site-a", 1.0), ("site-b", 1.5)):
        account = SiteAccountant.open(run_dir, site)
        for round_number in range(3):
            account.spend_if_within(20.0, DELTA, PrivacyEvent.dp_sgd(
                noise_multiplier=noise, sample_rate=0.1, steps=30, max_grad_norm=1.0,
                records_touched=60, round=round_number))
        account.spend_if_within(20.0, DELTA, PrivacyEvent.gaussian(sigma=10.0, sensitivity=2.0, records_touched=60))
        keys[site] = load_or_create_signing_key(signing_key_path(tmp_path / "sites" / site, site))
        registry.mkdir(exist_ok=True)
        (registry / f"{site}.pub").write_text(public_key_text(keys[site]))
    atomic_write_json(run_dir / "config.json", {"federation": {"privacy": True, "rounds": 3},
                                                "sites": {site: {"n": 60} for site in SITES}})
    _sign_heads(run_dir, keys)
    return {"run": run_dir, "registry": registry, "keys": keys}


@pytest.fixture()
def run_dir(consortium):
    return consortium["run"]


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


# --- signed heads, completeness, malformed files -------------------------------------------------
def _forge(run_dir, site="site-b", noise=5.0):
    """What a forger who can write the run folder does: claim more noise on line 1, recompute every
    epsilon and hash with the ledger's own helpers, rewrite heads.json, sign with a key of their own."""
    path = ledger_path(run_dir, site)
    entries = read_ledger(path)
    entries[0]["noise_multiplier"] = noise
    history, previous, forged = [], GENESIS_HASH, []
    for index, entry in enumerate(entries):
        history.append((entry["noise_multiplier"], entry["sample_rate"], entry["steps"]))
        fields = {k: v for k, v in entry.items() if k not in ("index", "prev_hash", "hash")}
        fields["epsilon_spent_so_far"] = epsilon_of(history, entry["delta"], entry["accountant"])
        forged.append(make_entry(index=index, prev_hash=previous, **fields))
        previous = forged[-1]["hash"]
    path.write_text("".join(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in forged))
    heads = json.loads((run_dir / "privacy" / "heads.json").read_text())
    forger = load_or_create_signing_key(run_dir.parent / "forger" / "forger.signing.key")
    heads[site].update(final_hash=previous, entries=len(forged), public_key=public_key_text(forger),
                       signature=sign_head(forger, site, previous, len(forged)))
    write_heads(run_dir, heads)
    return forged


def test_untouched_run_passes_against_the_registry(consortium, capsys):
    report = audit_run(consortium["run"], keys_dir=consortium["registry"])
    assert report["ok"] and report["key_source"] == f"registry {consortium['registry']}", report
    assert all(r["signature"] == "valid" for r in report["sites"].values())
    assert main(["audit", str(consortium["run"]), "--keys", str(consortium["registry"])]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "SELF-REPORTED" not in out and "head signature valid" in out


def test_a_forged_ledger_fails_against_the_registry_naming_the_site(consortium, capsys):
    run, registry = consortium["run"], consortium["registry"]
    _forge(run)
    assert read_ledger(ledger_path(run, "site-b"))  # the forged chain is a valid chain ...
    loose = audit_run(run)  # ... its epsilons agree with the accountant, and heads.json matches it
    assert loose["ok"], loose
    assert any("SELF-REPORTED" in warning for warning in loose["warnings"])  # ... which is why that is a warning
    report = audit_run(run, keys_dir=registry)
    assert not report["ok"] and report["tampered"] == ["site-b"]
    assert report["sites"]["site-a"]["ok"]
    problem = " ".join(report["sites"]["site-b"]["problems"])
    assert "site 'site-b'" in problem and "does not verify" in problem and "site-b.pub" in problem
    assert main(["audit", str(run), "--keys", str(registry)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "site site-b: FAILED" in out


def test_a_site_without_a_registered_key_fails(consortium):
    (consortium["registry"] / "site-a.pub").unlink()
    report = audit_run(consortium["run"], keys_dir=consortium["registry"])
    assert not report["ok"] and report["unsigned"] == ["site-a"]
    assert "no registered public key for site 'site-a'" in report["sites"]["site-a"]["problems"][0]
    (consortium["registry"] / "site-a.pub").write_text("not a key")
    report = audit_run(consortium["run"], keys_dir=consortium["registry"])
    assert "site-a.pub: not a PEM public key" in report["sites"]["site-a"]["problems"][0]


def test_deleting_a_sites_ledger_and_head_fails_a_private_run(run_dir, capsys):
    (run_dir / "privacy" / "site-b.jsonl").unlink()
    heads = json.loads((run_dir / "privacy" / "heads.json").read_text())
    del heads["site-b"]
    write_heads(run_dir, heads)
    report = audit_run(run_dir)
    assert not report["ok"] and "site-b" in report["tampered"]
    problems = " ".join(report["sites"]["site-b"]["problems"])
    assert "site-b.jsonl: ledger missing" in problems and "no head recorded for site 'site-b'" in problems
    assert main(["audit", str(run_dir)]) == 1
    assert "site site-b: FAILED" in capsys.readouterr().out


def test_deleting_the_privacy_folder_of_a_private_run_fails(run_dir, capsys):
    import shutil

    shutil.rmtree(run_dir / "privacy")
    report = audit_run(run_dir)
    assert not report["ok"] and sorted(report["tampered"]) == list(SITES)
    assert "privacy: missing, but" in report["problems"][0]
    assert main(["audit", str(run_dir)]) == 1
    assert "FAILED" in capsys.readouterr().out
    # and with config.json gone too, nothing says the run released nothing: still no "OK"
    (run_dir / "config.json").unlink()
    assert not audit_run(run_dir)["ok"]


def test_a_head_without_signature_fails(run_dir):
    heads = json.loads((run_dir / "privacy" / "heads.json").read_text())
    del heads["site-a"]["signature"]
    write_heads(run_dir, heads)
    report = audit_run(run_dir)
    assert not report["ok"] and report["unsigned"] == ["site-a"]
    assert "site 'site-a' has no signature" in report["sites"]["site-a"]["problems"][0]


def test_a_head_whose_length_differs_from_the_ledger_fails(run_dir):
    heads = json.loads((run_dir / "privacy" / "heads.json").read_text())
    heads["site-a"]["entries"] += 1
    write_heads(run_dir, heads)
    assert "head says 5 entries, the ledger has 4" in " ".join(audit_run(run_dir)["sites"]["site-a"]["problems"])


def test_self_reported_keys_must_agree(consortium):
    run = consortium["run"]
    other = load_or_create_signing_key(run.parent / "other" / "x.signing.key")
    (run / "privacy" / "site-a.signing.pub").write_text(public_key_text(other))
    report = audit_run(run)
    assert not report["ok"] and "are different keys" in report["sites"]["site-a"]["problems"][0]


def _no_traceback(capsys, *fragments):
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    for fragment in fragments:
        assert fragment in text, text


@pytest.mark.parametrize("content,message", [
    (b"{not json", "not valid JSON"), (b"[1, 2, 3]", "got a JSON list"),
    (b'{"site-a": "abc"}', "expected an object"), (b'{"site-a": {"final_hash": 3, "entries": 1}}', "final_hash"),
    (b'{"site-a": {"final_hash": "' + b"a" * 64 + b'", "entries": 1, "epsilon": NaN}}', "NaN"),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_a_corrupt_heads_file_is_a_clear_error(run_dir, capsys, content, message):
    (run_dir / "privacy" / "heads.json").write_bytes(content)
    assert main(["audit", str(run_dir)]) == 1
    _no_traceback(capsys, "heads.json", message)


def test_a_corrupt_config_is_a_clear_error(run_dir, capsys):
    (run_dir / "config.json").write_text('{"federation": {"privacy": "yes"}}')
    assert main(["audit", str(run_dir)]) == 1
    _no_traceback(capsys, "config.json", "federation.privacy")


def test_a_non_utf8_ledger_line_is_a_clear_failure(run_dir, capsys):
    path = run_dir / "privacy" / "site-a.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"rdp"', b'"r\xe9p"')
    path.write_bytes(b"".join(lines))
    assert main(["audit", str(run_dir)]) == 1
    _no_traceback(capsys, "site-a.jsonl, line 2: not UTF-8")


@pytest.mark.parametrize("literal", ["NaN", "Infinity"])
def test_a_nan_ledger_line_is_a_clear_failure(run_dir, capsys, literal):
    path = run_dir / "privacy" / "site-b.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    entry = json.loads(lines[2])
    entry["epsilon_spent_so_far"] = float("nan")
    lines[2] = json.dumps(entry, sort_keys=True, separators=(",", ":")).replace("NaN", literal) + "\n"
    path.write_text("".join(lines))
    assert main(["audit", str(run_dir)]) == 1
    _no_traceback(capsys, "site-b.jsonl, line 3", literal)


def test_budget_delta_defaults_to_each_sites_recorded_delta(consortium):
    from ndae.privacy.audit import reported_budgets
    from ndae.privacy.delta import DEFAULT_DELTA

    run = consortium["run"]
    heads = json.loads((run / "privacy" / "heads.json").read_text())
    heads["site-a"]["delta"] = 1e-7  # site-a's policy is stricter than the default
    del heads["site-b"]["delta"]
    write_heads(run, heads)
    assert reported_budgets(run) == {"site-a": (20.0, 1e-7), "site-b": (20.0, DEFAULT_DELTA)}
    budgets = reported_budgets(run, budget_epsilon=30.0)
    assert budgets["site-a"] == (30.0, 1e-7) and budgets["*"] == (30.0, DEFAULT_DELTA)
    assert reported_budgets(run, 30.0, 1e-6)["site-a"] == (30.0, 1e-6)
    report = audit_run(run, budgets)
    assert report["sites"]["site-a"]["budget_delta"] == 1e-7
    assert report["sites"]["site-a"]["epsilon_at_budget_delta"] > report["sites"]["site-a"]["epsilon_reported"]


def test_a_missing_registry_is_a_clear_error(run_dir, tmp_path, capsys):
    assert main(["audit", str(run_dir), "--keys", str(tmp_path / "no-registry")]) == 1
    _no_traceback(capsys, "no-registry: the key registry (--keys) is not a folder")
