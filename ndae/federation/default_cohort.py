"""The cohort a bare `flwr run .` simulates: the small demo cohort, made once and cached.

A Flower user expects `flwr run .` to run something small and end with its result. With no
`cohort-dir` in the run config, a simulation uses the demo's cohort at a small size, one site per
simulated SuperNode, from the cohort cache (`ndae.cohort.cache`): the ServerApp makes it before
it asks any site anything, and each simulated ClientApp finds the same folder from its node config
(`num-partitions`) and the run's seed, so no path has to travel in a message; their prepared
subjects are kept in the simulation cache (`ndae.federation.site.data.site_cache_dir`) and reused
the same way. A deployment's sites name their manifests in their node configs and never use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

# Small enough to simulate in about a minute on 2 cores and train in a few; large enough that every
# site has controls and patients with events for the Cox model of the app's default features.
SMALL_COHORT_SUBJECTS = 60


def small_cohort_config(sites: int, seed: int, jobs: int = 2):
    from ndae.cohort import CohortConfig

    return CohortConfig(sites=max(int(sites), 1), seed=int(seed), max_subjects=SMALL_COHORT_SUBJECTS,
                        patients_per_anatomy=1, jobs=jobs)


def small_cohort_dir(sites: int, seed: int) -> Path:
    """Where the small demo cohort of `sites` sites lives in the cohort cache (made or not)."""
    from ndae.cohort.cache import cohort_cache_dir
    from ndae.data.demo import demo_manifest_path

    return cohort_cache_dir(small_cohort_config(sites, seed), demo_manifest_path())


def ensure_small_cohort(sites: int, seed: int, log: Callable[[str], None] = print) -> Path:
    """The small demo cohort, simulated now only when the cache has none of these parameters."""
    from ndae.cohort.cache import cached_cohort
    from ndae.data.demo import DEMO_ARCHIVE, demo_manifest_path
    from ndae.errors import NdaeError

    if not DEMO_ARCHIVE.exists():
        raise NdaeError(f"the demo data archive {DEMO_ARCHIVE} is missing from this installation")
    folder = small_cohort_dir(sites, seed)
    if not (folder / "cohort.json").exists():
        log(f"ndae-fed: no cohort-dir given: simulating the small demo cohort ({SMALL_COHORT_SUBJECTS} subjects, "
            f"{sites} sites, seed {seed}) into {folder} (once; later runs reuse it)")
    folder, _ = cached_cohort(demo_manifest_path(), small_cohort_config(sites, seed), log=log)
    return folder


def simulated_node_cohort(node_config: Mapping[str, Any], cohort_dir: str, seed: int) -> str:
    """A simulated node's cohort folder: the run config's, else (a bare `flwr run .`) the small
    demo cohort the ServerApp made for as many sites as there are simulated nodes."""
    if cohort_dir or "partition-id" not in node_config or node_config.get("manifest"):
        return cohort_dir
    try:
        sites = int(node_config.get("num-partitions", 0))
    except (TypeError, ValueError):
        return cohort_dir
    if sites < 1:
        return cohort_dir
    folder = small_cohort_dir(sites, seed)
    return str(folder) if (folder / "cohort.json").exists() else cohort_dir
