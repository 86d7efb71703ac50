"""The signature on a site's ledger head, and the public key it is checked against.

A key comes from the consortium registry (`--keys DIR`, one `<site>.pub` each) or, failing that,
from what the run folder itself reports (heads.json, `privacy/<site>.signing.pub`): the latter
proves integrity only against someone who cannot write the run folder. `check_head` records in an
audit report whether the head is present, as long as the ledger, and signed by the site's key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from ndae.errors import NdaeError
from ndae.privacy.signing import fingerprint, verify_head, verify_signed_head


class SigningKeys:
    """Where the public keys that check head signatures come from: the consortium registry
    (`--keys DIR`, one `<site>.pub` each) or, failing that, what the run folder itself says."""

    def __init__(self, registry: str | os.PathLike | None, privacy_dir: Path):
        self.registry = Path(registry) if registry is not None else None
        self.privacy_dir = privacy_dir
        if self.registry is not None and not self.registry.is_dir():
            raise NdaeError(f"{self.registry}: the key registry (--keys) is not a folder")

    def registered_sites(self) -> list[str]:
        """The sites of the registry (`<site>.pub`): each must have signed a head in the run."""
        if self.registry is None:
            return []
        return sorted(path.name[: -len(".pub")] for path in self.registry.glob("*.pub")
                      if path.is_file() and not path.name.startswith("."))

    def describe(self) -> str:
        return f"registry {self.registry}" if self.registry is not None else "self-reported"

    def key_for(self, site: str, head: Mapping[str, Any]) -> tuple[str, str]:
        """(PEM, where it came from), or NdaeError saying why there is no usable key."""
        if self.registry is not None:
            path = self.registry / f"{site}.pub"
            if not path.is_file():
                raise NdaeError(f"{path}: no registered public key for site {site!r}")
            try:
                pem = path.read_text()
            except (OSError, UnicodeDecodeError) as error:
                raise NdaeError(f"{path}: unreadable registered key ({error})") from None
            fingerprint(pem, str(path))  # a clear error for a key file that is not a key
            return pem, f"the registered key {path}"
        candidates = []
        if head.get("public_key"):
            candidates.append((head["public_key"], f"the public key in {self.privacy_dir / 'heads.json'}"))
        pub = self.privacy_dir / f"{site}.signing.pub"
        if pub.is_file():
            try:
                candidates.append((pub.read_text(), f"the public key {pub}"))
            except (OSError, UnicodeDecodeError) as error:
                raise NdaeError(f"{pub}: unreadable ({error})") from None
        if not candidates:
            raise NdaeError(f"site {site!r}: no public key to check its head signature against "
                            f"(none in heads.json or {pub}; pass --keys REGISTRY)")
        prints = {fingerprint(pem, where) for pem, where in candidates}
        if len(prints) > 1:
            raise NdaeError(f"site {site!r}: {candidates[0][1]} and {candidates[1][1]} are different keys")
        pem, where = candidates[0]
        return pem, f"{where} (self-reported)"


def check_head(report: dict, site: str, head: Mapping[str, Any] | None, heads_file: Path, keys: SigningKeys) -> None:
    """The recorded head: present, as long as the ledger, and signed by the site's key."""
    problems = report["problems"]
    if head is None:
        report["signature"] = "no head"
        problems.append(f"{heads_file}: no head recorded for site {site!r} (a truncated or forged "
                        f"ledger would go unnoticed)")
        return
    if "entries" in report and head["entries"] != report["entries"]:
        problems.append(f"{heads_file}: site {site!r} head says {head['entries']} entries, the ledger has "
                        f"{report['entries']}")
    signature = head.get("signature")
    if not signature:
        report["signature"] = "missing"
        problems.append(f"{heads_file}: site {site!r} has no signature on its ledger head")
        return
    try:
        pem, source = keys.key_for(site, head)
    except NdaeError as error:
        report["signature"] = "unverifiable"
        problems.append(str(error))
        return
    report.update(signature_key=source, signature_key_fingerprint=fingerprint(pem))
    # A v2 head (it names its run) is verified over every field it binds, budget and ε included;
    # stripping those fields to pass as v1 leaves a v2 signature that no v1 message matches.
    valid = verify_signed_head(pem, dict(head, site=site), signature) if "run" in head else \
        verify_head(pem, site, head["final_hash"], head["entries"], signature)
    if valid:
        report["signature"] = "valid"
    else:
        report["signature"] = "invalid"
        problems.append(f"site {site!r}: the signature on its ledger head in {heads_file} does not verify "
                        f"against {source}: the ledger or its head was altered, or signed by another key")
