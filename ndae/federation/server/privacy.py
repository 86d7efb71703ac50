"""Runs AT THE SERVER: what the run directory keeps about each site's privacy ledger.

The server cannot check a site's noise (it never sees the data); it keeps what an auditor needs:
each site's ledger copy (`privacy/<site>.jsonl`, verified to end in the head the site reported)
and the signed heads (`privacy/heads.json`), which `ndae audit RUN --keys REGISTRY` checks against
the consortium's registered public keys.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from ndae.errors import LedgerError

__all__ = ["load_heads", "record_replies", "record_site_ledger"]


def load_heads(run_dir: str | os.PathLike) -> dict[str, dict]:
    """The heads a resumed run had recorded ({} for a new run); a corrupt file is an error."""
    from ndae.privacy.ledger import read_heads

    path = Path(run_dir) / "privacy" / "heads.json"
    return read_heads(path) if path.exists() else {}


def record_site_ledger(run_dir: str | os.PathLike, heads: dict[str, dict], reply: Mapping[str, Any]) -> None:
    """Keep a site's reported, signed ledger head in `heads` and `privacy/heads.json`, and a
    verified copy of its ledger as `privacy/<site>.jsonl` (unless the site writes that very file)."""
    from ndae.io import atomic_write_text
    from ndae.privacy.ledger import ledger_path, verify_ledger, write_heads

    site = str(reply["privacy-site"])
    target = ledger_path(run_dir, site)
    text = str(reply.get("ledger-text", ""))
    if Path(str(reply["ledger-path"])).resolve() != target.resolve():
        with tempfile.TemporaryDirectory() as scratch:  # verify the copy before it replaces ours
            probe = Path(scratch) / "ledger.jsonl"
            probe.write_text(text, encoding="utf-8")
            if verify_ledger(probe, str(reply["ledger-head"])) != str(reply["ledger-head"]):
                raise LedgerError(f"site {site!r} sent a ledger that does not end in its reported head")
        atomic_write_text(target, text)
    epsilon = float(reply["epsilon"])
    budget = float(reply["budget-epsilon"])
    heads[site] = {"final_hash": str(reply["ledger-head"]), "entries": int(reply["ledger-entries"]),
                   "epsilon": epsilon if epsilon >= 0 else "inf", "delta": float(reply["delta"]),
                   "budget_epsilon": budget if budget >= 0 else "inf",
                   "signature": str(reply.get("ledger-signature", "")),
                   "public_key": str(reply.get("signing-public-key", ""))}
    write_heads(run_dir, heads)


def record_replies(run_dir: str | os.PathLike, heads: dict[str, dict], replies: Mapping[str, Mapping],
                   missing: list[dict], log: Callable[[str], None] = print) -> None:
    """Every answering site's ledger head and epsilon (the replies' `privacy` record) -> `heads`
    and `privacy/heads.json`. A node may report only its own site's ledger: a head claimed for
    another site is ignored and recorded in `missing`."""
    for site, content in replies.items():
        if "privacy" not in content:
            continue
        claimed = str(content["privacy"].get("privacy-site", ""))
        if claimed != site:  # never let one node overwrite another site's ledger
            log(f"node of site {site!r} sent the ledger head of {claimed!r}: ignored")
            missing.append({"phase": "privacy", "round": 0, "site": site,
                            "reason": f"sent the ledger head of site {claimed!r}: ignored"})
            continue
        record_site_ledger(run_dir, heads, content["privacy"])
