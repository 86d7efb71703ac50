"""`ndae demo` in library form: demo data → cohort → simulated federation → report."""

from __future__ import annotations

import time
from pathlib import Path

from ndae.errors import NdaeError
from ndae.federation.config import FederationConfig


def run_demo(out: str | Path, *, sites: int = 3, rounds: int = 3, local_epochs: int = 2, strategy: str = "fedavg",
             survival_mode: str = "pooled", preset: str = "tiny", seed: int = 0, max_subjects: int | None = None,
             jobs: int = 2, in_process: bool = False, healthy: str | Path | None = None,
             log=print) -> Path:
    from ndae.cohort import CohortConfig, generate_cohort

    out = Path(out).expanduser().resolve()
    cohort_dir = out / "cohort"
    started = time.time()
    if not (cohort_dir / "manifest.csv").exists():
        if healthy is None:
            from ndae.data.demo import DEMO_ARCHIVE, demo_manifest_path

            if not DEMO_ARCHIVE.exists():
                raise NdaeError(f"the demo data archive {DEMO_ARCHIVE} is missing from this installation")
            healthy = demo_manifest_path()
        log(f"[demo] simulating a {sites}-site ALS cohort from {healthy} ...")
        generate_cohort(healthy, cohort_dir, CohortConfig(sites=sites, seed=seed, max_subjects=max_subjects,
                                                          jobs=jobs))
    log(f"[demo] cohort ready ({time.time() - started:.0f} s): {cohort_dir}")
    n_sites = sum(1 for p in (cohort_dir / "sites").iterdir() if (p / "manifest.csv").exists())
    config = FederationConfig(run_dir=str(out), cohort_dir=str(cohort_dir), cache_dir=str(out / "cache"),
                              dae_preset=preset, rounds=rounds, local_epochs=local_epochs, strategy=strategy,
                              survival_mode=survival_mode, seed=seed, min_sites=min(2, n_sites))
    if in_process:
        from ndae.federation.inprocess import InProcessGrid
        from ndae.federation.server import run_federation

        manifests = sorted((cohort_dir / "sites").glob("*/manifest.csv"))
        run_federation(InProcessGrid(manifests, config.to_run_config()), config, log=log)
    else:
        from ndae.federation.simulation import run_simulation

        log(f"[demo] flwr run: {n_sites} simulated hospitals, {rounds} round(s) × {local_epochs} epoch(s) "
            f"(logs in {out / 'logs'}) ...")
        run_simulation(config.to_run_config(), n_sites)
    log(f"[demo] done in {time.time() - started:.0f} s")
    return out / "report.md"
