"""The prepared-subject cache: `<subject>.npz` (arrays) + `<subject>.json` (provenance).

The JSON records the SHA-256 of the input image and mask and the preprocessing config; a
subject whose record matches is skipped, so `ndae prepare` resumes after a kill (each subject
is written atomically, the JSON last, so a half-finished subject is simply redone).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ndae.data.preprocess import PrepareConfig, PreparedSubject, prepare_subject
from ndae.io import atomic_save_npz, atomic_write_json


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance(row: pd.Series, config: PrepareConfig) -> dict:
    mask = row.get("mask")
    has_mask = isinstance(mask, str) and mask != ""
    return {
        "subject": row["subject"],
        "image": row["image"],
        "image_sha256": file_sha256(row["image"]),
        "mask": mask if has_mask else None,
        "mask_sha256": file_sha256(mask) if has_mask else None,
        "config": json.loads(config.to_json()),
    }


def is_cached(out_dir: Path, record: dict) -> bool:
    json_path, npz_path = _paths(out_dir, record["subject"])
    if not (json_path.exists() and npz_path.exists()):
        return False
    try:
        saved = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    keys = ("image_sha256", "mask_sha256", "config")
    return all(saved.get(key) == record[key] for key in keys)


def save_prepared(out_dir: Path, prepared: PreparedSubject, record: dict) -> None:
    json_path, npz_path = _paths(out_dir, prepared.subject)
    atomic_save_npz(
        npz_path,
        image=prepared.image.astype(np.float16),  # 3 significant digits: ample for [-1, 1] MRI
        mask=prepared.mask,
        labels=prepared.labels,
        slices=prepared.slices,
        slice_z_mm=prepared.slice_z_mm,
        grid_affine=prepared.grid_affine,
        transform_mat=np.frombuffer(prepared.transform_mat, dtype=np.uint8),
    )
    atomic_write_json(json_path, {**record, "registered": prepared.registered, **prepared.meta})


def load_prepared(out_dir: str | Path, subject: str) -> PreparedSubject:
    json_path, npz_path = _paths(Path(out_dir), subject)
    with np.load(npz_path) as arrays:
        return PreparedSubject(
            subject=subject,
            image=arrays["image"].astype(np.float32),
            mask=arrays["mask"],
            labels=arrays["labels"],
            slices=arrays["slices"],
            slice_z_mm=arrays["slice_z_mm"],
            grid_affine=arrays["grid_affine"],
            registered=bool(arrays["transform_mat"].size),
            transform_mat=arrays["transform_mat"].tobytes(),
            meta=json.loads(json_path.read_text()),
        )


def prepare_manifest(
    manifest: pd.DataFrame, out_dir: str | Path, config: PrepareConfig = PrepareConfig(), *, progress: bool = True
) -> dict[str, int]:
    """Prepare every subject of a validated manifest into `out_dir`; returns counts."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"prepared": 0, "cached": 0}
    rows = list(manifest.iterrows())
    for _, row in tqdm(rows, desc="prepare", unit="subject", disable=not progress):
        record = provenance(row, config)
        if is_cached(out_dir, record):
            counts["cached"] += 1
            continue
        mask = record["mask"]
        prepared = prepare_subject(row["image"], mask, row["subject"], config)
        save_prepared(out_dir, prepared, record)
        counts["prepared"] += 1
    return counts


def _paths(out_dir: Path, subject: str) -> tuple[Path, Path]:
    return out_dir / f"{subject}.json", out_dir / f"{subject}.npz"
