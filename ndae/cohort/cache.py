"""A simulated cohort made once: kept in a cache folder keyed by what makes it, reused after.

A cohort is a pure function of its parameters (`store.cohort_parameters`: sites, seed, sizes,
disease setting, the healthy manifest's content; not the number of worker processes) and of the
simulator's source, so the cache key is their hash. Cohorts live under `$NDAE_CACHE/cohorts/<key>/` (`NDAE_CACHE` defaults
to `~/.cache/ndae`, beside the demo data and the prepared-subject caches: one place to clear,
shared by every run folder of the user). A cohort is generated into a sibling temporary folder
and renamed into place only once complete, and one lock per key keeps two processes from
simulating the same cohort at once (the second waits, then reuses the first's).

A run uses its own copy (`link_cohort`: hard links, so no image is stored twice): a private
simulated site keeps its ledger beside its manifest, and one run's ledgers must not spend
another run's budget.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from ndae.cohort.plan import CohortConfig
from ndae.cohort.store import CohortFolderError, check_complete, cohort_parameters

__all__ = ["cached_cohort", "cohort_cache_dir", "cohort_key", "link_cohort"]


def cohort_cache_root() -> Path:
    from ndae.data.demo import cache_root

    return cache_root() / "cohorts"


def cohort_key(config: CohortConfig, healthy_manifest: str | Path) -> str:
    """The hash of everything that makes the cohort, the simulator's code included (never `jobs`,
    `figure`: same bytes either way)."""
    parameters = cohort_parameters(config, Path(healthy_manifest))
    parameters["disease_model"] = repr(config.disease)  # a custom model under a setting's name differs
    parameters["survival_model"] = repr(config.survival)
    parameters.pop("healthy_manifest")  # by content (its sha256), not where it was unpacked
    parameters["simulator"] = simulator_fingerprint()
    return hashlib.sha256(json.dumps(parameters, sort_keys=True, default=str).encode()).hexdigest()[:16]


def simulator_fingerprint(package: Path | None = None) -> str:
    """The hash of the simulator's own source (`ndae/cohort/*.py`): a cohort cached by another
    version of the simulator is never reused as if this one had made it. Any edit there, even a
    comment, costs one new simulation; a stale cohort would cost a wrong result."""
    folder = Path(package) if package is not None else Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cohort_cache_dir(config: CohortConfig, healthy_manifest: str | Path, root: Path | None = None) -> Path:
    name = f"{config.disease_name}-{config.sites}sites-seed{config.seed}-{cohort_key(config, healthy_manifest)}"
    return Path(root or cohort_cache_root()) / name


@contextmanager
def _locked(path: Path):
    from ndae.errors import NdaeError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except OSError as error:
        raise NdaeError(f"cohort cache {path.parent}: cannot write there ({error.strerror}); set NDAE_CACHE to a "
                        "writable folder, or give an existing cohort (ndae demo --cohort DIR)") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel however this process ends
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _complete(folder: Path) -> bool:
    try:
        check_complete(folder)
        return True
    except CohortFolderError:
        return False


def cached_cohort(healthy_manifest: str | Path, config: CohortConfig, *, root: Path | None = None,
                  log: Callable[[str], None] = print) -> tuple[Path, bool]:
    """(the cached cohort's folder, whether it was simulated now). Reused when complete."""
    import ndae.cohort  # looked up at call time, so tests can count the simulations

    folder = cohort_cache_dir(config, healthy_manifest, root)
    with _locked(folder.with_name(folder.name + ".lock")):
        # Whoever simulates this cohort holds this lock: a scratch folder of it is a killed run's.
        for stale in folder.parent.glob(f"{folder.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if _complete(folder):
            log(f"[cohort] reusing the cached cohort {folder} (same parameters; delete it to simulate again)")
            return folder, False
        if folder.exists():
            shutil.rmtree(folder)  # half-written by an older ndae or a crash: made again, it is the same cohort
        scratch = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            ndae.cohort.generate_cohort(healthy_manifest, scratch, config)
            os.replace(scratch, folder)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return folder, True


# Tables a user may open and edit; kilobytes each, so copying them costs nothing.
_COPIED_SUFFIXES = (".csv", ".tsv", ".json", ".md")


def link_cohort(source: Path, target: Path) -> None:
    """A run's own copy of a complete cohort: the images as hard links (a copy across file
    systems), the small tables (manifests, truth, cohort.json) as copies, so that editing a run's
    manifest in place cannot change the cached cohort every later run reuses; without what a site
    wrote there itself (its privacy folder, its example maps); cohort.json, the completion marker, last."""
    source, target = Path(source), Path(target)
    marker = source / "cohort.json"
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        site_privacy = (len(relative.parts) > 2 and relative.parts[0] == "sites"
                        and relative.parts[2] in ("privacy", "example_maps"))
        if path.is_dir() or path == marker or site_privacy or relative.name.startswith(".ndae"):
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() in _COPIED_SUFFIXES:
            shutil.copy2(path, destination)
            continue
        try:
            os.link(path, destination)
        except OSError:
            shutil.copy2(path, destination)
    shutil.copy2(marker, target / "cohort.json")
