"""Runs AT THE SERVER: what the run directory keeps about each site's privacy ledger.

The server cannot check a site's noise (it never sees the data); it keeps what an auditor needs:
each site's ledger excerpt for this run (`privacy/<site>.jsonl`, verified to end in the head the
site signed)
and the signed heads (`privacy/heads.json`), which `ndae audit RUN --keys REGISTRY` checks against
the consortium's registered public keys.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from ndae.errors import LedgerError

__all__ = ["insecure_seed_lines", "load_heads", "record_replies", "record_site_ledger"]


def load_heads(run_dir: str | os.PathLike) -> dict[str, dict]:
    """The heads a resumed run had recorded ({} for a new run); a corrupt file is an error."""
    from ndae.privacy.ledger import read_heads

    path = Path(run_dir) / "privacy" / "heads.json"
    return read_heads(path) if path.exists() else {}


def record_site_ledger(run_dir: str | os.PathLike, heads: dict[str, dict], reply: Mapping[str, Any]) -> None:
    """Keep a site's signed ledger head in `heads` and `privacy/heads.json`, and its ledger excerpt
    for this run, verified to end in that head, as `privacy/<site>.jsonl` (0600) — unless that file
    already is the site's own full ledger ending in the head (a simulated site writing its ledger
    into the run folder): an excerpt must never replace a site's ledger. LedgerError for a reply
    whose head or excerpt does not hold together."""
    from ndae.io import atomic_write_text
    from ndae.privacy.ledger import (ledger_path, read_excerpt, read_ledger, strict_json_loads,
                                     write_heads)
    from ndae.privacy.signing import signed_head_problem

    site = str(reply["privacy-site"])
    target = ledger_path(run_dir, site)
    try:
        head = strict_json_loads(str(reply.get("signed-head", "")))
    except ValueError:
        head = None
    problem = signed_head_problem(head)
    if problem or head["site"] != site:
        raise LedgerError(f"site {site!r} sent a ledger head that is not a signed head of its own ({problem or 'another site'})")
    text = str(reply.get("ledger-text", ""))
    with tempfile.TemporaryDirectory() as scratch:  # verify the excerpt before it replaces ours
        probe = Path(scratch) / "ledger.jsonl"
        probe.write_text(text, encoding="utf-8")
        if len(read_excerpt(probe, head["final_hash"])) != head["entries"]:
            raise LedgerError(f"site {site!r} sent a ledger excerpt whose length differs from its signed head")
    if not _is_full_ledger(target, head, read_ledger):
        atomic_write_text(target, text, private=True)
    heads[site] = {**head, "signature": str(reply.get("ledger-signature", "")),
                   "public_key": str(reply.get("signing-public-key", ""))}
    write_heads(run_dir, heads)


def _is_full_ledger(path: Path, head: Mapping[str, Any], read_ledger) -> bool:
    """Whether `path` is the site's own ledger up to `head` or beyond: it may have grown since
    the site replied (another run of the site), and must then not be cut back to the reply."""
    from ndae.privacy.ledger import GENESIS_HASH

    if not path.is_file():
        return False
    try:
        entries = read_ledger(path)
    except LedgerError:
        return False
    count = head["entries"]
    return len(entries) >= count and (entries[count - 1]["hash"] if count else GENESIS_HASH) == head["final_hash"]


def insecure_seed_lines(privacy: Mapping[str, Mapping] | None) -> list[str]:
    """The line a report opens with when a site drew its privacy noise from the test-only seed."""
    sites = sorted(site for site, head in (privacy or {}).items() if head.get("insecure_seed"))
    if not sites:
        return []
    return [f"**NOT PRIVATE: site(s) {', '.join(sites)} drew their privacy noise from the test-only "
            "`insecure-reproducible-seed` (node config): anyone who knows the seed can remove it. "
            "`ndae audit` fails this run.**", ""]


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
        try:
            record_site_ledger(run_dir, heads, content["privacy"])
        except LedgerError as error:  # one site's bad reply must not end the run for every site
            log(f"site {site!r}: {error}; its ledger is not recorded (the audit will fail this site)")
            missing.append({"phase": "privacy", "round": 0, "site": site,
                            "reason": "sent a ledger reply that does not verify: not recorded"})
