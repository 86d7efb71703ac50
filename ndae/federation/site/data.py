"""Runs AT THE SITE: the site's own data: which manifest (node config), which cache (node config,
never the run config), the loaded prepared slices, and what the site says about itself.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ndae.errors import NdaeError

__all__ = ['SiteData', 'site_manifest_path', 'site_cache_dir', 'load_site', 'site_info', 'check_fault']

_SITE_CACHE: dict[tuple[str, float, str], "SiteData"] = {}
_IGNORED_REQUESTS: set[str] = set()  # run-config cache-dirs already warned about (once per process)


class SiteData:
    """The site: its name and manifest now; its prepared slices (`data`) on first use.

    Flower starts a new ClientApp process for every message, and a federated Cox query (one per
    Newton step) needs the site's name, its counts and the survival table kept in the node state,
    not its images: preparing and stacking every subject's slices is done only for the messages
    that read them (site_info, training, statistics, deviations)."""

    def __init__(self, name: str, manifest_path: Path, manifest, prepared_dir: Path):
        self.name = name
        self.manifest_path = manifest_path
        self.manifest = manifest  # validated (ndae.data.manifest.read_manifest)
        self.prepared_dir = prepared_dir  # the site's cache of prepared subjects (the 3-D volumes)
        self._data = None

    @property
    def data(self):
        """ndae.data.dataset.SliceDataset (images, masks, ages, sexes, subjects, ...), in the
        manifest's row order; prepared subjects are checked against their sources as they load."""
        if self._data is None:
            from ndae.data.dataset import load_slice_dataset

            self._data = load_slice_dataset(self.manifest_path, self.prepared_dir, manifest=self.manifest,
                                            progress=False)
        return self._data

    @property
    def controls(self) -> np.ndarray:
        return self.manifest["group"].to_numpy(str) == "control"

    @property
    def patients(self) -> np.ndarray:
        return self.manifest["group"].to_numpy(str) == "als"


# ---- data -------------------------------------------------------------------------------------
def site_manifest_path(node_config: Mapping[str, Any], cohort_dir: str = "") -> Path:
    """The site's manifest: node config `manifest` (deployment), else in simulation the
    `partition-id`-th site folder of `cohort_dir/sites/` (sorted by name)."""
    if node_config.get("manifest"):
        return Path(str(node_config["manifest"])).expanduser()
    if "partition-id" in node_config and cohort_dir:
        if not (Path(cohort_dir) / "sites").is_dir():
            raise NdaeError(f"run config cohort-dir {cohort_dir!r} has no sites/ folder (a cohort from `ndae cohort`)")
        sites = sorted(p.name for p in (Path(cohort_dir) / "sites").iterdir() if (p / "manifest.csv").exists())
        try:
            index = int(node_config["partition-id"])
        except (TypeError, ValueError):
            raise NdaeError(f"node config partition-id {node_config['partition-id']!r} is not a whole number") from None
        if index >= len(sites):
            raise NdaeError(f"simulated node {index} has no site: {cohort_dir}/sites holds {len(sites)} sites {sites}; "
                            "run with num-supernodes equal to the number of sites")
        return Path(cohort_dir) / "sites" / sites[index] / "manifest.csv"
    raise NdaeError("this SuperNode has no 'manifest' in its node config (flower-supernode --node-config "
                    "\"manifest='/path/to/site/manifest.csv'\"), and no simulation cohort-dir was given")


def site_cache_dir(node_config: Mapping[str, Any], manifest_path: str | Path, requested: str = "") -> Path:
    """Where this site keeps its prepared subjects. The site decides, never the server:

    - node config `cache-dir`: that folder (what `ndae prepare --manifest M --out DIR` wrote);
    - else a SuperNode whose node config names its `manifest` (a real site): the manifest's own
      cache, where `ndae prepare --manifest M` wrote (`ndae.data.cache.default_cache_dir`). The
      run config's `cache-dir` (`requested`) is ignored there: the server may not choose where a
      hospital writes;
    - else (a simulated node: Flower's node config holds only `partition-id`, and whoever writes
      the run config owns every node) `<requested, else ndae.data.cache.simulation_cache_root()>/
      <key of the cohort site>` (`simulated_site_key`): one folder shared by every run of the
      same cohort, whichever copy of it the run reads.
    """
    from ndae.data.cache import default_cache_dir, simulation_cache_root

    manifest_path = Path(manifest_path).resolve()
    own = str(node_config.get("cache-dir", "") or "").strip()
    if own:
        return Path(own).expanduser()
    if node_config.get("manifest"):
        if requested and requested not in _IGNORED_REQUESTS:
            _IGNORED_REQUESTS.add(requested)
            logging.getLogger("ndae.site").warning(
                "run config cache-dir=%r ignored: a site's cache is its node config's cache-dir, else its "
                "manifest's default (%s)", requested, default_cache_dir(manifest_path))
        return default_cache_dir(manifest_path)
    root = Path(requested).expanduser() if requested else simulation_cache_root()
    return root / simulated_site_key(manifest_path)


def simulated_site_key(manifest_path: Path) -> str:
    """A simulated site's cache folder name, from what its cohort holds rather than where it lies:
    the site manifest's bytes (its image paths are relative to it) and the `cohort.json` of the
    cohort it belongs to (`<cohort>/sites/<site>/manifest.csv`: its parameters, disease model and
    measured site effects). Every copy of a cohort (the cohort cache's, each demo run's hard-linked
    one) thus shares one folder, and two cohorts whose site manifests happen to match do not.
    Sharing is safe: a subject in the folder is reused only while its scan's SHA-256 and the
    preprocessing settings match its record (`ndae.data.cache.is_cached`)."""
    digest = hashlib.sha256()
    cohort = manifest_path.parent.parent.parent
    for path in (manifest_path, cohort / "cohort.json"):
        # Not a regular file (absent, a folder, a FIFO): never read; `load_site` names the problem.
        digest.update(path.read_bytes() if path.is_file() else str(path).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def load_site(manifest_path: str | Path, cache_dir: str = "", *, prepared_dir: str | Path | None = None) -> SiteData:
    """The site (memoised per process: every phase reads the same data), whose prepared slices
    load on first use of `.data` from `prepared_dir` (what `site_cache_dir` chose), else from the
    folder a simulated node would use (`cache_dir` as the run config's cache root)."""
    from ndae.data.manifest import read_manifest

    path = Path(manifest_path).resolve()
    if not path.is_file():
        raise NdaeError(f"site manifest {path} does not exist" if not path.exists()
                        else f"site manifest {path} is not a regular file")
    if prepared_dir is None:
        prepared_dir = site_cache_dir({}, path, cache_dir)
    key = (str(path), path.stat().st_mtime, str(prepared_dir))
    if key not in _SITE_CACHE:
        manifest = read_manifest(path).reset_index(drop=True)
        names = sorted({str(s) for s in manifest["site"].to_numpy(str)})
        if len(names) != 1:
            raise NdaeError(f"{path}: a site's manifest must name exactly one site, found {names}")
        _SITE_CACHE[key] = SiteData(names[0], path, manifest, Path(prepared_dir))
    return _SITE_CACHE[key]


def site_info(site: SiteData) -> dict[str, Any]:
    images = site.data.images
    return {"site": site.name, "controls": int(site.controls.sum()), "patients": int(site.patients.sum()),
            "channels": int(images.shape[1]), "height": int(images.shape[2]), "width": int(images.shape[3])}


def check_fault(config, site_name: str, phase: str, round_number: int = 0) -> None:
    """Test hook: the configured site raises in the configured phase (and training round)."""
    if config.fault_site == site_name and config.fault_phase == phase and (
            phase != "train" or config.fault_round in (0, round_number)):
        raise RuntimeError(f"injected fault at site {site_name!r} in phase {phase!r}"
                           + (f" round {round_number}" if phase == "train" else ""))


