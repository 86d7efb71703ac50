"""Privacy audit of a run's ledgers: chains, head signatures, independently recomputed epsilon,
budgets; `format_report` prints it. (The signing keys a head is checked against:
`ndae.privacy.head_signatures`; the empirical lower bounds on epsilon from attacking the trained
model: `ndae.privacy.empirical` and `ndae.privacy.canary_audit`.)

Consistency tolerance. Each ledger line states `epsilon_spent_so_far`, computed by the site's
accountant (`accountant`, RDP by default). The audit
  1. recomputes it from the ledger's own (noise_multiplier, sample_rate, steps) with a fresh
     accountant of the same kind: this is deterministic, so it must agree to 1e-6 (relative);
     a mismatch means the writer mis-accounted or the chain was forged end to end;
  2. recomputes it with an INDEPENDENT accountant (PRV if the site used RDP, otherwise RDP).
     Both are upper bounds on the true epsilon; PRV is the tighter one, and Opacus' PRV returns
     its upper estimate, at most `eps_error` above the true value. Hence
        RDP-trained:  epsilon_PRV ≤ epsilon_reported + eps_error (+0.1 % for float noise),
        PRV-trained:  epsilon_reported ≤ epsilon_RDP + eps_error (+0.1 %).
     A violation means one accountant is wrong about the composed mechanism. RDP is usually the
     looser bound (docs/privacy.md); the ratio is reported.
  3. checks the budget with the same-kind accountant recomputed at the BUDGET's delta (not the
     delta the site wrote), so a site cannot pass by accounting at a looser delta.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from pathlib import Path
from typing import Any, Mapping

from ndae.errors import LedgerError, NdaeError
from ndae.io import atomic_write_json
from ndae.privacy.accountant import epsilon_of
from ndae.privacy.delta import DEFAULT_DELTA
from ndae.privacy.ledger import (GENESIS_HASH, decode_epsilon, heads_path, is_stub, read_excerpt, read_heads,
                                 read_strict_json_file)
from ndae.privacy.head_signatures import SigningKeys, check_head

RELATIVE_TOLERANCE = 1e-3
SAME_ACCOUNTANT_TOLERANCE = 1e-6


def _budget_for(budgets: Any, site: str) -> tuple[float, float] | None:
    if budgets is None:
        return None
    if isinstance(budgets, Mapping):
        if "epsilon" in budgets:
            return float(budgets["epsilon"]), float(budgets["delta"])
        if site in budgets:
            return _budget_for(budgets[site], site)
        if "*" in budgets:
            return _budget_for(budgets["*"], site)
        return None
    epsilon, delta = budgets
    return float(epsilon), float(delta)


def audit_site(path: Path, budget: tuple[float, float] | None, expected_final_hash: str | None,
               eps_error: float = 0.01) -> dict:
    site = path.name[: -len(".jsonl")]
    report: dict[str, Any] = {"site": site, "ledger": str(path), "problems": []}
    problems = report["problems"]
    try:
        chain = read_excerpt(path, expected_final_hash)
    except LedgerError as error:
        report.update(chain="broken", ok=False)
        problems.append(str(error))
        return report
    report["chain"] = "verified" if expected_final_hash else "verified (no head recorded: truncation undetectable)"
    report["entries"] = len(chain)
    report["final_hash"] = chain[-1]["hash"] if chain else None
    report["redacted"] = sum(1 for entry in chain if is_stub(entry))
    report["_full"] = entries = [entry for entry in chain if not is_stub(entry)]  # dropped before returning
    report["accounted_history"] = []
    if not entries:
        report["ok"] = True
        return report
    if any(entry["site"] != site for entry in entries):
        problems.append(f"{path}: entries name site {entries[0]['site']!r}, file is for {site!r}")

    accountants = sorted({entry["accountant"] for entry in entries})
    accountant = entries[-1]["accountant"]
    if len(accountants) > 1:
        problems.append(f"{path}: entries mix accountants {accountants}")
    # Declared (non-DP) releases — Cox terms, concordance counts, consented scores — carry no ε.
    from ndae.privacy.ledger import ACCOUNTED_MECHANISMS

    accounted = [e["mechanism"] in ACCOUNTED_MECHANISMS for e in entries]
    history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e, a in zip(entries, accounted) if a]
    report["accounted_history"] = history
    mechanisms: dict[str, int] = {}
    for entry in entries:
        mechanisms[entry["mechanism"]] = mechanisms.get(entry["mechanism"], 0) + 1
    report.update(accountant=accountant, mechanisms=mechanisms,
                  records_touched_max=max(e["records_touched"] for e in entries),
                  steps_total=sum(steps for _, _, steps in history))

    # 1. every line's reported epsilon against the same accountant (PRV: last line only, it is slow)
    lines = range(len(entries)) if accountant != "prv" else [len(entries) - 1]
    for i in lines:
        reported = decode_epsilon(entries[i]["epsilon_spent_so_far"])
        recomputed = epsilon_of(history[: sum(accounted[: i + 1])], entries[i]["delta"], accountant)
        if not _close(reported, recomputed, SAME_ACCOUNTANT_TOLERANCE):
            problems.append(
                f"{path}, line {i + 1}: reported epsilon {reported:.6g} but {accountant} gives "
                f"{recomputed:.6g} for the ledger's own history"
            )
    last = entries[-1]
    reported = decode_epsilon(last["epsilon_spent_so_far"])
    delta = last["delta"]
    report.update(epsilon_reported=reported, delta_reported=delta)

    # 2. an independent accountant
    independent = "prv" if accountant != "prv" else "rdp"
    eps_independent = epsilon_of(history, delta, independent)
    report.update(independent_accountant=independent, epsilon_independent=eps_independent,
                  epsilon_ratio_reported_to_independent=(
                      reported / eps_independent if eps_independent and math.isfinite(reported) else None))
    tight, loose = (eps_independent, reported) if independent == "prv" else (reported, eps_independent)
    if math.isfinite(loose) and tight > loose + eps_error + RELATIVE_TOLERANCE * loose:
        problems.append(
            f"{path}: PRV epsilon {tight:.4f} exceeds RDP epsilon {loose:.4f} by more than the "
            f"PRV error {eps_error} (+{RELATIVE_TOLERANCE:.1%}): the accounting is inconsistent"
        )

    # 3. budget, recomputed at the budget's delta
    if budget is not None:
        budget_epsilon, budget_delta = budget
        at_budget = epsilon_of(history, budget_delta, accountant)
        report.update(budget_epsilon=budget_epsilon, budget_delta=budget_delta,
                      epsilon_at_budget_delta=at_budget,
                      epsilon_independent_at_budget_delta=(
                          eps_independent if budget_delta == delta
                          else epsilon_of(history, budget_delta, independent)))
        if not at_budget <= budget_epsilon * (1 + 1e-9):
            problems.append(
                f"site {site!r}: epsilon {at_budget:.4f} ({accountant}, delta {budget_delta:g}) is over "
                f"the budget epsilon {budget_epsilon:g}"
            )
        if delta > budget_delta:
            problems.append(f"site {site!r}: ledger accounts at delta {delta:g}, looser than the budget's {budget_delta:g}")
    report["ok"] = not problems
    return report


def _close(a: float, b: float, rtol: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rtol * max(1.0, abs(b))


def _run_config(run_dir: Path) -> dict | None:
    """(private?, sites) from RUN/config.json, or None when there is none; NdaeError naming the
    file when it is unreadable or of the wrong shape (an auditor must not guess)."""
    path = run_dir / "config.json"
    if not path.exists():
        return None
    config = read_strict_json_file(path, "run configuration")
    if not isinstance(config, dict):
        raise NdaeError(f"{path}: expected a JSON object, got {type(config).__name__}")
    federation = config.get("federation", {})
    if not isinstance(federation, dict):
        raise NdaeError(f"{path}: field 'federation' must be an object")
    private = federation.get("privacy", False)
    if not isinstance(private, bool):
        raise NdaeError(f"{path}: field 'federation.privacy' must be true or false, not {private!r}")
    sites = config.get("sites", {})
    if not isinstance(sites, (dict, list)) or not all(isinstance(site, str) for site in sites):
        raise NdaeError(f"{path}: field 'sites' must be an object (or list) keyed by site name")
    for site in sites:
        if not site or "/" in site or "\\" in site or site.startswith("."):
            raise NdaeError(f"{path}: site name {site!r} in 'sites' cannot name a ledger file")
    return {"path": str(path), "private": private, "sites": sorted(sites)}


def reported_budgets(run_dir: str | os.PathLike, budget_epsilon: float | None = None,
                     budget_delta: float | None = None) -> dict | None:
    """Budgets for `audit_run` from the sites' recorded policy in privacy/heads.json.

    Without `budget_epsilon`: each site's own (budget_epsilon, delta), for sites with a finite
    budget. With it: that epsilon for every site, at `budget_delta` if given, else at the delta
    the site recorded (its policy), else `DEFAULT_DELTA`. A v2 head signs these fields (an edited
    budget fails its signature); a v1 head does not: pass both flags to hold such a run to an
    agreed policy.
    """
    heads = read_heads(heads_path(run_dir))

    def site_delta(head: Mapping[str, Any]) -> float:
        return float(budget_delta if budget_delta is not None else head.get("delta", DEFAULT_DELTA))

    if budget_epsilon is None:
        budgets = {site: (float(head["budget_epsilon"]), site_delta(head)) for site, head in heads.items()
                   if head.get("budget_epsilon", "inf") != "inf"}
        return budgets or None
    budgets = {site: (float(budget_epsilon), site_delta(head)) for site, head in heads.items()}
    budgets["*"] = (float(budget_epsilon), float(budget_delta if budget_delta is not None else DEFAULT_DELTA))
    return budgets


def audit_run(run_dir: str | os.PathLike, budgets: Any = None,
              expected_final_hashes: Mapping[str, str] | None = None, eps_error: float = 0.01,
              write: bool = True, keys_dir: str | os.PathLike | None = None) -> dict:
    """Audit a run's privacy releases; write `privacy/audit.json`; return the report.

    Every site with a ledger or a head, every site of the registry (`keys_dir/<site>.pub`), and
    in a private run (config.json federation.privacy) every site of config.json's "sites", must
    have its ledger copy `privacy/<site>.jsonl` (an excerpt: another run's declared releases as
    redacted stubs), a head in `privacy/heads.json` whose final hash and length the chain matches,
    and a valid signature on that head; a v2 head also binds the run, this run's line count, the
    site's ε and budget, and whether the noise came from the test-only seed (`check_signed_fields`).
    The run is private when config.json or any signed head says so. Signatures are checked
    against `keys_dir/<site>.pub` (the consortium registry), else against the keys the run folder
    reports (a warning: integrity only). `report["verdict"]`: OK, FAILED or NOT PRIVATE (the
    test-only seed: also not ok; config.json non-private with nothing signed: ok), with `reason`.
    A run folder where `audit.json` cannot be written is still audited (a warning says so).
    budgets: None, (epsilon, delta) for every site, {"epsilon": e, "delta": d}, or
    {site: (epsilon, delta), "*": default}. `expected_final_hashes`: heads the caller vouches
    for, checked in addition to heads.json.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NdaeError(f"{run_dir}: run directory does not exist")
    privacy_dir = run_dir / "privacy"
    heads_file = heads_path(run_dir)
    config = _run_config(run_dir)
    keys = SigningKeys(keys_dir, privacy_dir)
    heads = read_heads(heads_file)
    ledgers = sorted(p.name[: -len(".jsonl")] for p in privacy_dir.glob("*.jsonl")) if privacy_dir.is_dir() else []
    problems: list[str] = []
    notes: list[str] = []
    expected_sites = config["sites"] if config and config["private"] else []
    if config and config["private"] and not privacy_dir.is_dir():
        problems.append(f"{privacy_dir}: missing, but {config['path']} says the run is private")
    if config is None and not ledgers and not heads:
        problems.append(f"{run_dir}: no config.json and no privacy ledgers: nothing shows whether, or what, "
                        f"this run released")
    if config and not config["private"] and not ledgers and not heads:
        notes.append("not a private run (config.json federation.privacy = false): no privacy releases to audit")
    registered = keys.registered_sites()
    sites = {}
    for site in sorted(set(ledgers) | set(heads) | set(expected_sites) | set(registered)):
        sites[site] = _audit_one(site, privacy_dir, heads.get(site), heads_file, keys,
                                 (expected_final_hashes or {}).get(site), _budget_for(budgets, site), eps_error)
    warnings = []
    if keys.registry is None and any(r.get("signature") == "valid" for r in sites.values()):
        warnings.append("head signatures were checked against SELF-REPORTED keys (heads.json, "
                     "privacy/<site>.signing.pub): this proves integrity only against someone who cannot "
                     "write the run folder; pass --keys REGISTRY (the consortium's registered <site>.pub) "
                     "to check them against keys the sites registered")
    report = {
        "run_dir": str(run_dir),
        "audited_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "ok": not problems and all(site["ok"] for site in sites.values()),
        "private": config["private"] if config else None,
        "key_source": keys.describe(),
        "problems": problems,
        "sites": sites,
        "tampered": sorted(s for s, r in sites.items()
                           if r.get("chain") in ("broken", "missing") or r.get("signature") == "invalid"),
        "unsigned": sorted(s for s, r in sites.items() if r.get("signature") in ("missing", "no head", "unverifiable")),
        "over_budget": sorted(s for s, r in sites.items()
                              if "budget_epsilon" in r and r["epsilon_at_budget_delta"] > r["budget_epsilon"] * (1 + 1e-9)),
        "tolerance": (
            f"same accountant: relative {SAME_ACCOUNTANT_TOLERANCE:g}; independent accountant: PRV "
            f"≤ RDP + {eps_error} (PRV error) + {RELATIVE_TOLERANCE:.1%}"
        ),
        "warnings": warnings,
        "notes": notes + ([] if ledgers else ["no privacy ledgers in this run"]),
    }
    signed_private = any(head.get("private") is True for head in heads.values())
    report["private"] = True if (signed_private or ledgers) else report["private"]
    report["insecure_seed"] = sorted(s for s, r in sites.items() if r.get("insecure_seed"))
    report["verdict"], report["reason"] = _verdict(report, config, registered)
    runs = {site: head["run"] for site, head in heads.items() if "run" in head}
    report["runs"] = runs
    if len(set(runs.values())) > 1:
        # Not a failure: a site that answered nothing after a resume keeps the head it signed
        # under the first Flower run. But it is also what a head of another run looks like.
        warnings.append("the sites' signed heads name different runs (" + ", ".join(
            f"{site}: {run}" for site, run in sorted(runs.items())) + "): a site that answered nothing "
            "after a resume, sites that resolved a relative run-dir differently, or a head of another run "
            "put in this run's folder; ask each site which run ids its ledger holds")
    if any("run" not in head for head in heads.values()):
        warnings.append("some heads are v1 (written before heads were bound to a run): their budget_epsilon, "
                        "delta and run are not signed")
    if write and privacy_dir.is_dir():
        try:
            atomic_write_json(privacy_dir / "audit.json", report)
        except OSError as error:  # a read-only run folder: the audit itself is complete
            warnings.append(f"{privacy_dir / 'audit.json'}: not written ({error.strerror or error}); "
                            f"the audit printed here is complete")
    return report


def _verdict(report: Mapping[str, Any], config: Mapping[str, Any] | None, registered: list[str]) -> tuple[str, str]:
    """The first word of the audit: OK, FAILED or NOT PRIVATE, and why."""
    if report["insecure_seed"]:
        return "NOT PRIVATE", (f"site(s) {', '.join(report['insecure_seed'])} drew their noise from the test-only "
                               f"insecure-reproducible-seed")
    if not report["ok"]:
        failing = sorted(s for s, r in report["sites"].items() if not r["ok"])
        return "FAILED", (f"site(s) {', '.join(failing)}: see below" if failing else report["problems"][0])
    if not report["sites"] and config is not None and not config["private"]:
        return "NOT PRIVATE", ("config.json says federation.privacy = false and no site signed a ledger head: "
                               "nothing of this run is differentially private"
                               + ("" if registered else " (pass --keys REGISTRY to require every registered site's head)"))
    return "OK", f"{len(report['sites'])} site(s): chains, signed heads, epsilon and budgets check out"


def _audit_one(site: str, privacy_dir: Path, head: Mapping[str, Any] | None, heads_file: Path, keys: SigningKeys,
               vouched_hash: str | None, budget: tuple[float, float] | None, eps_error: float) -> dict:
    path = privacy_dir / f"{site}.jsonl"
    if not path.is_file():
        report = {"site": site, "ledger": str(path), "chain": "missing", "ok": False,
                  "problems": [f"{path}: ledger missing" + (" but a head was recorded" if head else
                                                             " for a site of the run")]}
        check_head(report, site, head, heads_file, keys)
        return report
    report = audit_site(path, budget, head["final_hash"] if head else None, eps_error)
    if report["chain"] != "broken":
        check_head(report, site, head, heads_file, keys)
        final = report.get("final_hash") or GENESIS_HASH
        if vouched_hash is not None and final != vouched_hash:
            report["problems"].append(f"{path}: final hash {final} is not the expected {vouched_hash}")
        check_signed_fields(report, site, head, path)
    report.pop("_full", None)
    report.pop("accounted_history", None)
    report["ok"] = not report["problems"]
    return report


def check_signed_fields(report: dict, site: str, head: Mapping[str, Any] | None, path: Path) -> None:
    """What a v2 head binds, against the ledger copy: this run's line count (its sequence), the
    site's lifetime ε (a DP release hidden behind a redacted stub shows here), and whether the
    noise came from the test-only seed. A v1 head binds none of it: no redacted line is then
    acceptable, and the report warns that budget and run are unsigned."""
    problems = report["problems"]
    if head is None:
        return
    if "run" not in head:
        report["head_version"] = 1
        if report.get("redacted"):
            problems.append(f"{path}: has redacted lines but its head (v1) does not sign the site's epsilon, "
                            f"so a DP release could hide behind them")
        return
    full = report.get("_full", [])
    mine = [e for e in full if isinstance(e.get("details"), dict) and e["details"].get("run") == head["run"]]
    report.update(head_version=2, run=head["run"], run_entries=len(mine))
    if len(mine) != head["run_entries"]:
        problems.append(f"{path}: holds {len(mine)} lines of run {head['run']}, the site's signed head "
                        f"{head['run_entries']} (lines of the run were redacted, removed or added, or the head "
                        f"is another run's)")
    history = report.get("accounted_history", [])
    signed = decode_epsilon(head["epsilon"])
    kinds = {report.get("accountant", "rdp"), "rdp"}
    if not any(_close(epsilon_of(history, head["delta"], kind), signed, SAME_ACCOUNTANT_TOLERANCE) for kind in kinds):
        problems.append(f"{path}: the DP releases in the copy give epsilon {epsilon_of(history, head['delta']):.6g} "
                        f"at delta {head['delta']:g}, the site signed {signed:.6g} (a DP release is missing or "
                        f"was altered)")
    if head.get("insecure_seed") or any(e["details"].get("insecure_reproducible_seed") for e in mine):
        report["insecure_seed"] = True
        problems.append(f"site {site!r} drew its privacy noise from the test-only insecure-reproducible-seed "
                        f"(node config): whoever knows the seed can remove the noise; these releases are NOT private")


def format_report(report: Mapping[str, Any]) -> str:
    """A few readable lines per site."""
    verdict = report.get("verdict", "OK" if report["ok"] else "FAILED")
    lines = [f"{verdict}: {report.get('reason', '')}".rstrip(": "),
             f"privacy audit of {report['run_dir']}: {'OK' if report['ok'] else 'FAILED'}"
             f" (signing keys: {report.get('key_source', 'self-reported')})"]
    runs = set(report.get("runs", {}).values())
    if len(runs) == 1:
        lines.append(f"  run: {runs.pop()} (the run id every site's signed head names)")
    for problem in report.get("problems", []):
        lines.append(f"  problem: {problem}")
    for warning in report.get("warnings", []):
        lines.append(f"  WARNING: {warning}")
    for note in report.get("notes", []):
        lines.append(f"  note: {note}")
    for site, r in report["sites"].items():
        lines.append(f"  site {site}: {'ok' if r['ok'] else 'FAILED'} — chain {r['chain']}, "
                     f"head signature {r.get('signature', 'not checked')}")
        if "epsilon_reported" in r:
            lines.append(
                f"    {r['entries']} releases {r['mechanisms']}"
                + (f" and {r['redacted']} redacted (another run's declared release)" if r.get("redacted") else "")
                + f", {r['steps_total']} steps; epsilon "
                f"{r['epsilon_reported']:.4f} ({r['accountant']}) / {r['epsilon_independent']:.4f} "
                f"({r['independent_accountant']}) at delta {r['delta_reported']:g}"
            )
        if "budget_epsilon" in r:
            lines.append(
                f"    budget epsilon {r['budget_epsilon']:g} at delta {r['budget_delta']:g}: spent "
                f"{r['epsilon_at_budget_delta']:.4f}"
            )
        if "signature_key" in r:
            lines.append(f"    head signature checked against {r['signature_key']} ({r['signature_key_fingerprint']})")
        for problem in r["problems"]:
            lines.append(f"    problem: {problem}")
    return "\n".join(lines)
