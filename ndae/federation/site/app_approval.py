"""A site's list of approved Flower apps, by the sha256 of the app bundle (.fab).

Flower has no allow-list by bundle hash (trusted entities check signatures, which local
`flwr run .` bundles lack), so a site keeps its own: the hash here is what Flower itself uses
(`hashlib.sha256(fab.content).hexdigest()`), and a site-side wrapper around `flwr-clientapp`
calls `check_fab` before the bundle is installed. Stored as `approved_apps.json` in the site
folder, written atomically.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from pathlib import Path

from ndae.errors import NdaeError
from ndae.io import atomic_write_json

POLICY_FILE = "approved_apps.json"
_HASH = re.compile(r"^[0-9a-f]{64}$")


class AppNotApprovedError(NdaeError):
    """A Flower app bundle whose hash is not on the site's approved list."""


def fab_hash(fab_bytes: bytes) -> str:
    return hashlib.sha256(fab_bytes).hexdigest()


def _normalise(app_hash: str) -> str:
    value = app_hash.strip().lower()
    if not _HASH.match(value):
        raise NdaeError(f"app hash {app_hash!r} is not a sha256 hex digest (64 hex characters)")
    return value


class ApprovedApps:
    def __init__(self, site_dir: str | os.PathLike) -> None:
        self.site_dir = Path(site_dir)
        self.path = self.site_dir / POLICY_FILE

    def _read(self) -> dict:
        if not self.path.exists():
            return {"approved": []}
        try:
            data = json.loads(self.path.read_text())
            for item in data["approved"]:
                _normalise(item["hash"])
            return data
        except (ValueError, KeyError, TypeError) as error:
            raise NdaeError(f"{self.path}: not a valid approved-app list ({error})") from None

    def approved(self) -> list[dict]:
        return list(self._read()["approved"])

    def approve(self, app_hash: str, note: str = "") -> dict:
        value = _normalise(app_hash)
        data = self._read()
        for item in data["approved"]:
            if item["hash"] == value:
                return item
        item = {"hash": value, "approved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "note": note}
        data["approved"].append(item)
        atomic_write_json(self.path, data)
        return item

    def revoke(self, app_hash: str) -> bool:
        value = _normalise(app_hash)
        data = self._read()
        kept = [item for item in data["approved"] if item["hash"] != value]
        if len(kept) == len(data["approved"]):
            return False
        data["approved"] = kept
        atomic_write_json(self.path, data)
        return True

    def is_approved(self, app_hash: str) -> bool:
        value = _normalise(app_hash)
        return any(item["hash"] == value for item in self._read()["approved"])

    def check_fab(self, fab_bytes: bytes) -> str:
        """Return the bundle's hash if approved; raise AppNotApprovedError otherwise."""
        value = fab_hash(fab_bytes)
        if not self.is_approved(value):
            raise AppNotApprovedError(
                f"app bundle sha256 {value} is not approved for this site (approved list: {self.path}; "
                f"approve with `ndae site approve {value} --site-dir {self.site_dir}`)"
            )
        return value


def approve(site_dir, app_hash: str, note: str = "") -> dict:
    return ApprovedApps(site_dir).approve(app_hash, note)


def is_approved(site_dir, app_hash: str) -> bool:
    return ApprovedApps(site_dir).is_approved(app_hash)


def check_fab(site_dir, fab_bytes: bytes) -> str:
    return ApprovedApps(site_dir).check_fab(fab_bytes)
