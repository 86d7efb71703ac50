"""The cohort folder on disk: manifests, truth, deterministic NIfTI bytes, and cohort.json as the
completion marker (`check_complete`)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ndae.cohort.sites import Site
from ndae.errors import NdaeError
from ndae.io import atomic_write_bytes, atomic_write_json, atomic_write_text

MANIFEST_COLUMNS = ["subject", "site", "image", "age", "sex", "group", "mask", "time", "event"]
TRUTH_COLUMNS = [
    "subject", "severity", "onset", "risk", "event_time", "censor_time", "time", "event", "site", "group",
    "age", "sex", "onset_region", "onset_side", "asymmetry", "source_subject", "min_jacobian",
    "precentral_volume_change", "ventricles_volume_change", "brain_volume_change",
    "precentral_volume_ml", "ventricles_volume_ml", "brain_volume_ml",
    "precentral_to_white_matter_source", "precentral_to_white_matter_disease",
    "precentral_to_white_matter_delivered", "internal_capsule_to_white_matter_source",
    "internal_capsule_to_white_matter_disease", "internal_capsule_to_white_matter_delivered", "brain_intensity",
]  # fmt: skip


def nifti_bytes(data: np.ndarray, affine: np.ndarray, sform_code: int) -> bytes:
    """Deterministic .nii.gz bytes (gzip header without time stamp or file name)."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_sform(affine, code=sform_code)
    image.header.set_qform(affine, code=sform_code)
    return gzip.compress(image.to_bytes(), compresslevel=3, mtime=0)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, sform_code: int) -> None:
    atomic_write_bytes(path, nifti_bytes(data, affine, sform_code))


def _csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, lineterminator="\n", float_format="%.6g")


def write_tables(out: Path, cohort: pd.DataFrame, sites: list[Site]) -> None:
    """manifest.csv (all sites), sites/<site>/manifest.csv (paths relative to it), truth.csv."""
    manifest = cohort.copy()
    manifest["time"] = manifest["time"].round(2)
    manifest["event"] = manifest["event"].astype("Int64")
    manifest = manifest[MANIFEST_COLUMNS]
    atomic_write_text(out / "manifest.csv", _csv(manifest))
    for site in sites:
        local = manifest[manifest["site"] == site.name].copy()
        site_dir = out / "sites" / site.name
        for column in ("image", "mask"):
            local[column] = [os.path.relpath(out / p, site_dir) for p in local[column]]
        atomic_write_text(site_dir / "manifest.csv", _csv(local))
    truth = cohort[TRUTH_COLUMNS].copy()
    truth["event"] = truth["event"].astype("Int64")
    atomic_write_text(out / "truth.csv", _csv(truth))


# -- completion marker -----------------------------------------------------------------------
# cohort.json is written last, atomically, with "complete": true and the parameters the cohort
# was generated with; generate_cohort removes it before writing anything else. A folder killed
# half-way (or by an older ndae) therefore has no marker, and a finished one says how it was made.

MARKER = "cohort.json"
PARAMETERS = (
    "sites", "seed", "patients", "patients_per_anatomy", "site_sizes", "controls_only_site",
    "patients_only_site", "max_subjects", "healthy_manifest", "disease",
)  # fmt: skip


class CohortFolderError(NdaeError):
    """A cohort folder that cannot be used as it is."""


class IncompleteCohortError(CohortFolderError):
    """No completion marker, or files the marker's cohort must have are missing."""


class CohortMismatchError(CohortFolderError):
    """A complete cohort generated with other parameters than the caller expects."""


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def disease_name(config) -> str:
    """The named disease setting of `config` ("custom" when its model is not that setting's);
    cohort.json's summary holds every parameter of the model itself."""
    from ndae.cohort.disease import DISEASE_SETTINGS

    name = getattr(config, "disease_name", "als")
    return name if name in DISEASE_SETTINGS and DISEASE_SETTINGS[name]() == config.disease else "custom"


def cohort_parameters(config, healthy_manifest: Path) -> dict:
    """What cohort.json records under "parameters" (`config`: the CohortConfig)."""
    path = Path(healthy_manifest).resolve()
    return {
        "sites": config.sites,
        "seed": config.seed,
        "patients": config.patients,
        "patients_per_anatomy": config.patients_per_anatomy,
        "site_sizes": None if config.site_sizes is None else [int(n) for n in config.site_sizes],
        "controls_only_site": config.controls_only_site,
        "patients_only_site": config.patients_only_site,
        "max_subjects": config.max_subjects,
        "disease": disease_name(config),
        "healthy_manifest": str(path),
        "healthy_manifest_sha256": file_sha256(path),
    }


def remove_marker(out: Path) -> None:
    """Before anything else is written: from here on the folder is not a complete cohort."""
    (Path(out) / MARKER).unlink(missing_ok=True)


def write_marker(out: Path, summary: dict, parameters: dict) -> dict:
    """cohort.json with the summary, the parameters and "complete": true; call after every file."""
    marked = {**summary, "parameters": parameters, "complete": True}
    atomic_write_json(Path(out) / MARKER, marked)
    return marked


def _read_marker(folder: Path) -> dict:
    path = folder / MARKER
    regenerate = "generation was interrupted, or an older ndae made it: generate the cohort again"
    if not folder.is_dir():
        raise IncompleteCohortError(f"{folder}: no cohort folder there")
    if not path.is_file():
        raise IncompleteCohortError(f"{folder}: incomplete cohort: no {MARKER} (written last, once every file is there); {regenerate}")
    try:
        marker = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IncompleteCohortError(f"{path}: unreadable ({error}); {regenerate}") from error
    if not isinstance(marker, dict) or marker.get("complete") is not True:
        raise IncompleteCohortError(f"{path}: no \"complete\": true, so the cohort is not known to be complete; {regenerate}")
    if not isinstance(marker.get("parameters"), dict) or not isinstance(marker.get("sites"), dict):
        raise IncompleteCohortError(f"{path}: no \"parameters\" or \"sites\"; {regenerate}")
    return marker


def _missing_files(folder: Path, marker: dict) -> list[str]:
    tables = ["manifest.csv", "truth.csv", *(f"sites/{site}/manifest.csv" for site in marker["sites"])]
    missing = [name for name in tables if not (folder / name).is_file()]
    if "manifest.csv" in missing:
        return missing
    try:
        manifest = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:
        return missing + [f"manifest.csv unreadable ({error})"]
    if not {"image", "mask"} <= set(manifest.columns):
        return missing + ["manifest.csv columns image, mask"]
    images = [p for p in [*manifest["image"], *manifest["mask"]] if not (folder / p).is_file()]
    if images:
        shown = ", ".join(images[:5]) + (f" and {len(images) - 5} more" if len(images) > 5 else "")
        missing.append(f"{len(images)} image file(s): {shown}")
    if len(manifest) != marker.get("subjects"):
        missing.append(f"manifest.csv rows: {len(manifest)}, cohort.json says {marker.get('subjects')} subjects")
    return missing


def _differences(marker: dict, expected: dict) -> list[str]:
    recorded = marker["parameters"]
    differences = []
    for given_key, wanted in expected.items():
        key = str(given_key).replace("-", "_")
        if key not in PARAMETERS:
            raise CohortFolderError(f"check_complete: unknown parameter {given_key!r} (known: {', '.join(PARAMETERS)})")
        have = recorded.get(key)
        if key == "disease" and have is None:
            have = "als"  # cohorts made before named disease settings all had the default
        if key == "healthy_manifest":
            path = Path(wanted).expanduser()
            path = path / "manifest.csv" if path.is_dir() else path
            same = file_sha256(path) == recorded.get("healthy_manifest_sha256") if path.is_file() \
                else str(path.resolve()) == have
            if not same:
                differences.append(f"healthy manifest {have} (sha256 {str(recorded.get('healthy_manifest_sha256'))[:12]}…), not {path}")
            continue
        if key == "site_sizes" and wanted is not None:
            wanted = [int(n) for n in wanted]
        if have != wanted:
            differences.append(f"{key.replace('_', '-')} {have!r}, not {wanted!r}")
    return differences


def check_complete(cohort_dir: str | Path, expected: dict | None = None) -> dict:
    """The cohort.json of a complete cohort folder, generated with `expected`'s parameters.

    `expected`: any of PARAMETERS (hyphens or underscores), e.g. {"sites": 3, "seed": 0,
    "patients_per_anatomy": 4, "healthy_manifest": path}; the healthy manifest is compared by
    content (sha256) when the file exists, else by path. Raises IncompleteCohortError naming the
    folder and what is missing, or CohortMismatchError naming each parameter that differs.
    """
    folder = Path(cohort_dir)
    marker = _read_marker(folder)
    missing = _missing_files(folder, marker)
    if missing:
        raise IncompleteCohortError(f"{folder}: incomplete cohort, missing: {'; '.join(missing)}")
    differences = _differences(marker, dict(expected or {}))
    if differences:
        raise CohortMismatchError(f"{folder}: this cohort was generated with {'; '.join(differences)}")
    return marker
