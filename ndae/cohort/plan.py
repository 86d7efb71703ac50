"""The cohort's plan: how many sites, their scanners and case mix, who is a patient where.

Each usable healthy scan becomes either one control or the anatomy of patients, never both:
`--patients-per-anatomy K` draws K patients (independent severity, onset and survival) from each
patient anatomy, all in the anatomy's site. Counts of patients in the plan (`--patients`, a
site's `patients`) are counts of anatomies; the cohort has K times as many patients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ndae.cohort.disease import DiseaseModel
from ndae.cohort.seeds import CASE_MIX, stream
from ndae.cohort.sites import Site, draw_scanners
from ndae.cohort.survival import SurvivalModel
from ndae.errors import NdaeError


@dataclass
class CohortConfig:
    sites: int = 4
    seed: int = 0
    patients: int | None = None  # scans used as patients' anatomies; default: half of the subjects used
    patients_per_anatomy: int = 1  # patients drawn from each patient anatomy
    site_sizes: list[int] | None = None  # default: all subjects, site 1 largest (3:1 to the last)
    controls_only_site: str | None = None  # e.g. "site2"
    patients_only_site: str | None = None
    max_subjects: int | None = None  # use a seeded subset of the healthy scans
    jobs: int = 1
    figure: bool = True
    disease: DiseaseModel = field(default_factory=DiseaseModel)
    disease_name: str = "als"  # the named setting `disease` came from (`ndae cohort --disease`); recorded
    survival: SurvivalModel = field(default_factory=SurvivalModel)


def largest_remainder(total: int, weights: np.ndarray, caps: np.ndarray | None = None) -> np.ndarray:
    """Integer counts summing to `total`, proportional to `weights`, each at most its cap."""
    weights = np.asarray(weights, dtype=float)
    raw = total * weights / weights.sum()
    counts = np.floor(raw).astype(int)
    if caps is not None:
        counts = np.minimum(counts, caps)
    order = np.argsort(-(raw - counts), kind="stable")
    i = 0
    while counts.sum() < total:
        j = order[i % len(order)]
        if caps is None or counts[j] < caps[j]:
            counts[j] += 1
        i += 1
        if i > 10 * len(order) * max(total, 1):
            raise NdaeError("cannot allocate patients to sites within their sizes")
    return counts


def plan_sites(n_available: int, config: CohortConfig) -> list[Site]:
    """Site names, scanners, sizes and case mix (patients, onset mix, severity, age tilt)."""
    k = config.sites
    if k < 1:
        raise NdaeError(f"--sites must be at least 1, got {k}")
    if isinstance(config.patients_per_anatomy, bool) or not isinstance(config.patients_per_anatomy, int) \
            or config.patients_per_anatomy < 1:
        raise NdaeError(f"--patients-per-anatomy must be a whole number of at least 1, got {config.patients_per_anatomy!r}")
    names = [f"site{i + 1}" for i in range(k)]
    for option, value in (("--controls-only-site", config.controls_only_site), ("--patients-only-site", config.patients_only_site)):
        if value is not None and value not in names:
            raise NdaeError(f"{option} {value!r} is not one of the sites {', '.join(names)}")
    if config.controls_only_site is not None and config.controls_only_site == config.patients_only_site:
        raise NdaeError("one site cannot be both controls-only and patients-only")
    if config.site_sizes is not None:
        sizes = np.asarray(config.site_sizes, dtype=int)
        if len(sizes) != k or (sizes < 1).any():
            raise NdaeError(f"--site-sizes needs {k} positive sizes, got {list(config.site_sizes)}")
        if sizes.sum() > n_available:
            raise NdaeError(f"--site-sizes ask for {sizes.sum()} subjects but the healthy manifest has {n_available}")
    else:
        sizes = largest_remainder(n_available, np.linspace(1.5, 0.5, k) if k > 1 else np.ones(1))
    total = int(sizes.sum())
    patients = int(round(total / 2)) if config.patients is None else int(config.patients)

    rng = stream(config.seed, CASE_MIX)
    scanners = draw_scanners(names, rng)
    fixed = np.zeros(k, dtype=int)
    mixed = np.ones(k, dtype=bool)
    for i, name in enumerate(names):
        if name == config.controls_only_site:
            mixed[i] = False
        if name == config.patients_only_site:
            fixed[i], mixed[i] = sizes[i], False
    remaining = patients - fixed.sum()
    # Mixed sites keep at least one patient and one control each.
    low, caps = mixed.astype(int), np.where(mixed, sizes - 1, 0)
    if remaining < low.sum() or remaining > caps.sum():
        raise NdaeError(
            f"cannot place {patients} patients' anatomies: with these site sizes {sizes.tolist()} and options "
            f"the mixed sites can take {low.sum()}–{caps.sum()} patients besides {fixed.sum()} in the patients-only site"
        )
    ratio = rng.uniform(0.3, 0.7, size=k)  # patient:control ratio differs per site
    counts = fixed.copy()
    if mixed.any():
        extra = largest_remainder(int(remaining - low.sum()), (ratio * sizes * mixed) + 1e-9, caps - low)
        counts = counts + low + extra
    bulbar = rng.uniform(0.15, 0.45, size=k)
    severity_mean = rng.uniform(0.4, 0.6, size=k)
    tilt = rng.permutation(np.linspace(-0.8, 0.8, k)) if k > 1 else np.zeros(1)
    return [
        Site(
            **scanner,
            size=int(sizes[i]),
            patients=int(counts[i]),
            bulbar_fraction=float(bulbar[i]),
            severity_mean=float(severity_mean[i]),
            age_tilt=float(tilt[i]),
        )
        for i, scanner in enumerate(scanners)
    ]


def _weighted_sample(rng: np.random.Generator, candidates: np.ndarray, log_weights: np.ndarray, n: int) -> np.ndarray:
    """n candidates without replacement, P ∝ exp(log_weights) (Gumbel top-k)."""
    keys = log_weights + rng.gumbel(size=len(candidates))
    return candidates[np.argsort(-keys, kind="stable")[:n]]


def assign_subjects(healthy: pd.DataFrame, sites: list[Site], seed: int) -> pd.DataFrame:
    """Role (control / als) and site for each used healthy subject, each at most once.

    Patients are drawn with ALS's age profile (incidence peaks around 60–70), then each site
    takes its patients and controls with its own age tilt: non-IID case mix.
    """
    rng = stream(seed, CASE_MIX, 1)
    age = healthy["age"].to_numpy(dtype=float)
    z_age = (age - age.mean()) / max(age.std(), 1e-6)
    everyone = np.arange(len(healthy))
    n_patients = sum(site.patients for site in sites)
    n_controls = sum(site.size - site.patients for site in sites)
    als_age_profile = np.log(np.exp(-0.5 * ((age - 65) / 12) ** 2) + 0.05)
    patient_pool = _weighted_sample(rng, everyone, als_age_profile, n_patients)
    others = np.setdiff1d(everyone, patient_pool)
    control_pool = _weighted_sample(rng, others, np.zeros(len(others)), n_controls)
    rows = []
    for site_index in rng.permutation(len(sites)):
        site = sites[site_index]
        for group, count in (("als", site.patients), ("control", site.size - site.patients)):
            pool = patient_pool if group == "als" else control_pool
            chosen = _weighted_sample(rng, pool, site.age_tilt * z_age[pool], count)
            if group == "als":
                patient_pool = np.setdiff1d(patient_pool, chosen)
            else:
                control_pool = np.setdiff1d(control_pool, chosen)
            rows += [(int(i), site.name, group) for i in chosen]
    table = pd.DataFrame(rows, columns=["source_index", "site", "group"]).sort_values("source_index")
    return table.reset_index(drop=True)


def expand_patients(cohort: pd.DataFrame, per_anatomy: int) -> pd.DataFrame:
    """K rows per patient anatomy (`copy` 1..K, in the anatomy's site), one row per control.

    Rows stay in source order, then copy: with K = 1 the table is the one-patient cohort's."""
    copies = np.where(cohort["group"].to_numpy() == "als", per_anatomy, 1)
    table = cohort.loc[cohort.index.repeat(copies)].copy()
    table["copy"] = np.concatenate([np.arange(1, n + 1) for n in copies]) if len(copies) else []
    return table.reset_index(drop=True)


def subject_ids(n: int, seed: int) -> list[str]:
    """`sub-0001` ... as a seeded permutation: an id reveals neither group nor source scan."""
    order = stream(seed, CASE_MIX, 2).permutation(n)
    return [f"sub-{i + 1:04d}" for i in order]
