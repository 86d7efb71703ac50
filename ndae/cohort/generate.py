"""`generate_cohort`: a multi-site ALS cohort simulated from healthy scans, with known truth.

Each healthy subject becomes either one control or the anatomy of one patient, never both.
Every random draw comes from a generator seeded by (seed, purpose[, subject index]), so the
output does not depend on the order or the number of worker processes: same seed → the same
bytes in manifest.csv, truth.csv and every image.
"""

from __future__ import annotations

import gzip
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ndae.cohort import anatomy as landmarks
from ndae.cohort.anatomy import Anatomy, load_anatomy
from ndae.cohort.deformation import jacobian_determinant, resample, sampling_coordinates
from ndae.cohort.disease import DiseaseModel, PatientPhenotype, apply_disease, draw_phenotype
from ndae.cohort.sites import Site, apply_scanner, draw_scanners
from ndae.cohort.survival import SurvivalModel, survival_summary
from ndae.data.manifest import read_manifest
from ndae.data.nifti import load_nifti
from ndae.errors import ManifestError, NdaeError
from ndae.io import atomic_write_bytes, atomic_write_json, atomic_write_text

# Purposes of the random streams (the second entry of each seed sequence).
_CASE_MIX, _PATIENTS, _SURVIVAL, _SUBJECT = 1, 2, 3, 4
MANIFEST_COLUMNS = ["subject", "site", "image", "age", "sex", "group", "mask", "time", "event"]


@dataclass
class CohortConfig:
    sites: int = 4
    seed: int = 0
    patients: int | None = None  # default: half of the subjects used
    site_sizes: list[int] | None = None  # default: all subjects, site 1 largest (3:1 to the last)
    controls_only_site: str | None = None  # e.g. "site2"
    patients_only_site: str | None = None
    max_subjects: int | None = None  # use a seeded subset of the healthy scans
    jobs: int = 1
    figure: bool = True
    disease: DiseaseModel = field(default_factory=DiseaseModel)
    survival: SurvivalModel = field(default_factory=SurvivalModel)


def _rng(seed: int, *purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *purpose]))


def read_healthy(healthy: str | Path) -> pd.DataFrame:
    """The healthy manifest (or a folder holding manifest.csv), every row with a label map."""
    path = Path(healthy)
    if path.is_dir():
        path = path / "manifest.csv"
    frame = read_manifest(path)
    if "mask" not in frame.columns:
        raise ManifestError(
            f"{path}: the cohort generator needs a 'mask' column with each scan's MUSE label map "
            "(precentral gyri, ventricles, internal capsule and brainstem are located from it)"
        )
    missing = frame.index[frame["mask"].isna()].tolist()
    if missing:
        rows = ", ".join(f"row {i + 2} ({frame.at[i, 'subject']})" for i in missing)
        raise ManifestError(f"{path}: empty 'mask' (label map) in {rows}")
    if (frame["group"] != "control").any():
        bad = frame.loc[frame["group"] != "control", "subject"].tolist()
        raise ManifestError(f"{path}: the healthy manifest must hold controls only; not controls: {bad}")
    return frame.sort_values("subject").reset_index(drop=True)


def usable_subjects(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Drop scans whose label map cannot carry the disease model (reason per subject).

    Real segmentations fail now and then (two IXI label maps lack most of one precentral gyrus);
    such a scan is left out of the cohort and listed in cohort.json, not silently used.
    """
    excluded = {}
    for row in frame.itertuples():
        labels = np.asarray(load_nifti(row.mask, is_label=True).dataobj)
        problem = landmarks.label_problem(labels)
        if problem:
            excluded[row.subject] = f"{row.mask}: {problem}"
    if excluded and len(excluded) == len(frame):
        raise NdaeError(f"no usable label map in the healthy manifest; first problem: {next(iter(excluded.values()))}")
    return frame[~frame["subject"].isin(excluded)].reset_index(drop=True), excluded


def _largest_remainder(total: int, weights: np.ndarray, caps: np.ndarray | None = None) -> np.ndarray:
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
        sizes = _largest_remainder(n_available, np.linspace(1.5, 0.5, k) if k > 1 else np.ones(1))
    total = int(sizes.sum())
    patients = int(round(total / 2)) if config.patients is None else int(config.patients)

    rng = _rng(config.seed, _CASE_MIX)
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
            f"cannot place {patients} patients: with these site sizes {sizes.tolist()} and options "
            f"the mixed sites can take {low.sum()}–{caps.sum()} patients besides {fixed.sum()} in the patients-only site"
        )
    ratio = rng.uniform(0.3, 0.7, size=k)  # patient:control ratio differs per site
    counts = fixed.copy()
    if mixed.any():
        extra = _largest_remainder(int(remaining - low.sum()), (ratio * sizes * mixed) + 1e-9, caps - low)
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
    rng = _rng(seed, _CASE_MIX, 1)
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


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def draw_patients(cohort: pd.DataFrame, sites: list[Site], config: CohortConfig) -> pd.DataFrame:
    """Severity, onset and phenotype per patient; true risk and times from the survival model."""
    rng = _rng(config.seed, _PATIENTS)
    by_name = {site.name: site for site in sites}
    columns = {key: [] for key in ("severity", "onset", "onset_region", "onset_side", "asymmetry")}
    for _, row in cohort.iterrows():
        if row["group"] != "als":
            for key in columns:
                columns[key].append(np.nan if key in ("severity", "asymmetry") else "")
            continue
        site = by_name[row["site"]]
        concentration = 5.0  # Beta(m·5, (1 − m)·5): sd ≈ 0.2
        severity = rng.beta(site.severity_mean * concentration, (1 - site.severity_mean) * concentration)
        # Bulbar onset is more frequent in women and with older age (see docs/cohort.md).
        logit = _logit(site.bulbar_fraction) + 0.5 * (row["sex"] == "F") + 0.03 * (row["age"] - 60)
        bulbar = rng.uniform() < 1 / (1 + np.exp(-logit))
        phenotype = draw_phenotype(rng, severity, bulbar, config.disease)
        for key in columns:
            columns[key].append(getattr(phenotype, key))
    for key, values in columns.items():
        cohort[key] = values
    patients = cohort["group"] == "als"
    model = config.survival
    risk = model.linear_predictor(
        cohort.loc[patients, "severity"], cohort.loc[patients, "age"], cohort.loc[patients, "onset"] == "bulbar"
    )
    times = model.simulate(risk, _rng(config.seed, _SURVIVAL))
    for column in times.columns:
        cohort[column] = np.nan
        cohort.loc[patients, column] = times[column].to_numpy()
    return cohort


def to_magnitude(anatomy: Anatomy) -> tuple[Anatomy, bool]:
    """Rescale to a magnitude image: background 0, 99th percentile of the brain 1.

    Inputs may be normalised to any range (the demo data: [-1, 1], background -1 or 0);
    scanner effects need non-negative intensities. Returns the rescaled anatomy and whether it
    is skull-stripped (most of the non-brain field of view holds one constant value, which
    becomes 0 and stays 0).
    """
    image = anatomy.image
    outside = anatomy.labels == 0
    brain = image[~outside]
    background = float(np.median(image[outside])) if outside.any() else float(image.min())
    empty = outside & (image == background)
    stripped = bool(outside.any()) and float(empty.sum()) > 0.5 * float(outside.sum())
    low, top = (float(v) for v in np.percentile(brain, [1, 99]))
    zero = min(background, low)
    scaled = np.clip((image - zero) / max(top - zero, 1e-6), 0, None).astype(np.float32)
    if stripped:
        scaled[empty] = 0
    return Anatomy(scaled, anatomy.labels, anatomy.affine, anatomy.sform_code, anatomy.source), stripped


def _label_means(image: np.ndarray, labels: np.ndarray) -> dict:
    def mean(ids):
        values = image[np.isin(labels, ids)]
        return float(values.mean()) if values.size else float("nan")

    return {
        "precentral": mean(landmarks.PRECENTRAL),
        "white_matter": mean(landmarks.LOBAR_WHITE_MATTER),
        "internal_capsule": mean((93, 94)),
        "brain": float(image[labels > 0].mean()),
    }


def _volumes_ml(labels: np.ndarray, voxel_ml: float) -> dict:
    return {
        "precentral": float(np.isin(labels, landmarks.PRECENTRAL).sum() * voxel_ml),
        "ventricles": float(np.isin(labels, landmarks.LATERAL_VENTRICLES).sum() * voxel_ml),
        "brain": float((labels > 0).sum() * voxel_ml),
    }


def render(
    anatomy: Anatomy,
    phenotype: PatientPhenotype | None,
    model: DiseaseModel,
    site: Site | None,
    rng: np.random.Generator,
    stripped: bool = True,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Disease (if a patient), scanner placement, one resampling, then the scanner (if a site).

    `anatomy` must be a magnitude image (`to_magnitude`). Returns (image, labels, min Jacobian,
    the image before the scanner effects).
    """
    voxel_size = anatomy.voxel_size
    image, displacement, min_jacobian = anatomy.image, None, 1.0
    if phenotype is not None and phenotype.severity > 0:
        image, displacement = apply_disease(anatomy, phenotype, model)
        min_jacobian = float(jacobian_determinant(displacement, voxel_size).min())
    rotation = translation = None
    if site is not None:
        rotation = rng.uniform(-1, 1, size=3) * site.jitter_rotation_deg
        translation = rng.uniform(-1, 1, size=3) * site.jitter_translation_mm
    coordinates = sampling_coordinates(anatomy.image.shape, voxel_size, displacement, rotation, translation)
    image = resample(image, coordinates, order=1)
    labels = resample(anatomy.labels, coordinates, order=0)
    clean = image
    if site is not None:
        inside = (anatomy.image > 0) | (anatomy.labels > 0)
        support = resample(inside.astype(np.uint8), coordinates, order=0) if stripped else None
        image = apply_scanner(image, support, site, voxel_size, rng)
    return image, labels, min_jacobian, clean


def nifti_bytes(data: np.ndarray, affine: np.ndarray, sform_code: int) -> bytes:
    """Deterministic .nii.gz bytes (gzip header without time stamp or file name)."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_sform(affine, code=sform_code)
    image.header.set_qform(affine, code=sform_code)
    return gzip.compress(image.to_bytes(), compresslevel=3, mtime=0)


def _render_task(task: dict) -> dict:
    """One output subject: load, simulate, write image + label map; return measurements."""
    source = load_anatomy(task["image"], task["mask"])
    anatomy, stripped = to_magnitude(source)
    phenotype = task["phenotype"]
    rng = _rng(task["seed"], _SUBJECT, task["index"])
    image, labels, min_jacobian, clean = render(anatomy, phenotype, task["disease"], task["site"], rng, stripped)
    # Integer scanner units, as scanners deliver them (and smaller, faster files).
    image = np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)
    out = Path(task["out_dir"])
    atomic_write_bytes(out / task["image_path"], nifti_bytes(image, anatomy.affine, anatomy.sform_code))
    atomic_write_bytes(out / task["mask_path"], nifti_bytes(labels, anatomy.affine, anatomy.sform_code))

    voxel_ml = float(np.prod(anatomy.voxel_size)) / 1000
    before, after = _volumes_ml(anatomy.labels, voxel_ml), _volumes_ml(labels, voxel_ml)
    result = {"subject": task["subject"], "min_jacobian": min_jacobian}
    for key in before:
        result[f"{key}_volume_ml"] = after[key]
        result[f"{key}_volume_change"] = after[key] / before[key] - 1 if before[key] else float("nan")
    # One image feature three ways: the healthy source, after the disease (before the scanner),
    # and as delivered by the site's scanner. Disease effect vs site effect, measured.
    for name, (values, where) in {
        "source": (anatomy.image, anatomy.labels),
        "disease": (clean, labels),
        "delivered": (image.astype(np.float32), labels),
    }.items():
        means = _label_means(values, where)
        result[f"precentral_to_white_matter_{name}"] = means["precentral"] / means["white_matter"]
        result[f"internal_capsule_to_white_matter_{name}"] = means["internal_capsule"] / means["white_matter"]
    result["brain_intensity"] = _label_means(image.astype(np.float32), labels)["brain"]
    return result


def _subject_ids(n: int, seed: int) -> list[str]:
    order = _rng(seed, _CASE_MIX, 2).permutation(n)
    return [f"sub-{i + 1:04d}" for i in order]


def generate_cohort(healthy: str | Path, out_dir: str | Path, config: CohortConfig = CohortConfig()) -> dict:
    """Simulate the cohort into `out_dir`; returns the cohort.json summary."""
    out = Path(out_dir)
    frame = read_healthy(healthy)
    if config.max_subjects is not None and config.max_subjects < len(frame):
        keep = np.sort(_rng(config.seed, _CASE_MIX, 3).permutation(len(frame))[: config.max_subjects])
        frame = frame.iloc[keep].reset_index(drop=True)
    frame, excluded = usable_subjects(frame)
    sites = plan_sites(len(frame), config)
    cohort = assign_subjects(frame, sites, config.seed)
    source = frame.iloc[cohort["source_index"].to_numpy()].reset_index(drop=True)
    cohort["source_subject"] = source["subject"].to_numpy()
    cohort["age"] = source["age"].to_numpy()
    cohort["sex"] = source["sex"].to_numpy()
    cohort = draw_patients(cohort, sites, config)
    cohort.insert(0, "subject", _subject_ids(len(cohort), config.seed))
    cohort["image"] = [f"images/{r.site}/{r.subject}_T1.nii.gz" for r in cohort.itertuples()]
    cohort["mask"] = [f"images/{r.site}/{r.subject}_labels.nii.gz" for r in cohort.itertuples()]

    by_name = {site.name: site for site in sites}
    tasks = []
    for index, row in cohort.iterrows():
        phenotype = None
        if row["group"] == "als":
            phenotype = PatientPhenotype(row["severity"], row["onset"], row["onset_region"], row["onset_side"], row["asymmetry"])
        tasks.append(
            {
                "index": int(row["source_index"]),
                "seed": config.seed,
                "subject": row["subject"],
                "image": source.at[index, "image"],
                "mask": source.at[index, "mask"],
                "phenotype": phenotype,
                "disease": config.disease,
                "site": by_name[row["site"]],
                "out_dir": str(out),
                "image_path": row["image"],
                "mask_path": row["mask"],
            }
        )
    if config.jobs > 1:
        with ProcessPoolExecutor(max_workers=config.jobs) as pool:
            results = list(pool.map(_render_task, tasks, chunksize=1))
    else:
        results = [_render_task(task) for task in tasks]
    measured = pd.DataFrame(results)
    cohort = cohort.merge(measured, on="subject", how="left").sort_values("subject").reset_index(drop=True)

    _write_tables(out, cohort, sites)
    summary = _summary(cohort, sites, config)
    summary["excluded_subjects"] = excluded
    atomic_write_json(out / "cohort.json", summary)
    if config.figure:
        from ndae.cohort.figure import example_figure

        control = cohort[cohort["group"] == "control"]
        pick = (control if len(control) else cohort).iloc[0]
        example_figure(
            frame.iloc[int(pick["source_index"])], out / "cohort_example.png", config.disease, config.seed
        )
    return summary


def _fmt(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, lineterminator="\n", float_format="%.6g")


def _write_tables(out: Path, cohort: pd.DataFrame, sites: list[Site]) -> None:
    manifest = cohort.copy()
    manifest["time"] = manifest["time"].round(2)
    manifest["event"] = manifest["event"].astype("Int64")
    manifest = manifest[MANIFEST_COLUMNS]
    atomic_write_text(out / "manifest.csv", _fmt(manifest))
    for site in sites:
        local = manifest[manifest["site"] == site.name].copy()
        site_dir = out / "sites" / site.name
        for column in ("image", "mask"):
            local[column] = [os.path.relpath(out / p, site_dir) for p in local[column]]
        atomic_write_text(site_dir / "manifest.csv", _fmt(local))
    truth_columns = [
        "subject", "severity", "onset", "risk", "event_time", "censor_time", "time", "event", "site", "group",
        "age", "sex", "onset_region", "onset_side", "asymmetry", "source_subject", "min_jacobian",
        "precentral_volume_change", "ventricles_volume_change", "brain_volume_change",
        "precentral_volume_ml", "ventricles_volume_ml", "brain_volume_ml",
        "precentral_to_white_matter_source", "precentral_to_white_matter_disease",
        "precentral_to_white_matter_delivered", "internal_capsule_to_white_matter_source",
        "internal_capsule_to_white_matter_disease", "internal_capsule_to_white_matter_delivered", "brain_intensity",
    ]  # fmt: skip
    truth = cohort[truth_columns].copy()
    truth["event"] = truth["event"].astype("Int64")
    atomic_write_text(out / "truth.csv", _fmt(truth))


def _summary(cohort: pd.DataFrame, sites: list[Site], config: CohortConfig) -> dict:
    patients = cohort[cohort["group"] == "als"]
    controls = cohort[cohort["group"] == "control"]
    per_site = {}
    for site in sites:
        here = cohort[cohort["site"] == site.name]
        als = here[here["group"] == "als"]
        per_site[site.name] = {
            "subjects": int(len(here)),
            "controls": int((here["group"] == "control").sum()),
            "patients": int(len(als)),
            "bulbar_onset": int((als["onset"] == "bulbar").sum()),
            "mean_age": float(here["age"].mean()) if len(here) else None,
            "mean_severity": float(als["severity"].mean()) if len(als) else None,
            "scanner": {k: v for k, v in site.to_dict().items() if k not in ("name", "size", "patients")},
        }
    # Site effect vs disease effect on one image feature a site-blind model would see.
    feature = "precentral_to_white_matter"
    site_means = cohort.groupby("site")[f"{feature}_delivered"].mean()
    scanner_shift = cohort[f"{feature}_delivered"] - cohort[f"{feature}_disease"]
    disease_shift = patients[f"{feature}_disease"] - patients[f"{feature}_source"]
    site_effect = {
        "feature": "mean precentral / mean white-matter intensity (scale-free, so gain cancels)",
        "mean_by_site_delivered": {k: float(v) for k, v in site_means.items()},
        "between_site_range_delivered": float(site_means.max() - site_means.min()) if len(site_means) > 1 else 0.0,
        "scanner_shift_by_site": {k: float(v) for k, v in scanner_shift.groupby(cohort["site"]).mean().items()},
        "disease_shift_mean": float(disease_shift.mean()) if len(patients) else None,
        "disease_shift_at_severity_above_0.7": float(disease_shift[patients["severity"] > 0.7].mean())
        if (patients["severity"] > 0.7).any() else None,
        "brain_intensity_median_by_site": {
            k: float(v) for k, v in cohort.groupby("site")["brain_intensity"].median().items()
        },
    }
    return {
        "seed": config.seed,
        "subjects": int(len(cohort)),
        "controls": int(len(controls)),
        "patients": int(len(patients)),
        "sites": per_site,
        "survival": survival_summary(patients) if len(patients) else {},
        "site_effect": site_effect,
        "injected_effects_mean_over_patients": {
            "precentral_volume_change": float(patients["precentral_volume_change"].mean()) if len(patients) else None,
            "ventricles_volume_change": float(patients["ventricles_volume_change"].mean()) if len(patients) else None,
            "brain_volume_change": float(patients["brain_volume_change"].mean()) if len(patients) else None,
            "min_jacobian": float(patients["min_jacobian"].min()) if len(patients) else None,
        },
        "disease_model": asdict(config.disease),
        "survival_model": asdict(config.survival),
    }
