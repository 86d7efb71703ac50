"""The prepared-subject cache: `<subject>.npz` (arrays) + `<subject>.json` (provenance).

The JSON records the SHA-256 of the input image and mask and the preprocessing config; a
subject whose record matches is skipped, so `ndae prepare` resumes after a kill (each subject
is written atomically, the JSON last, so a half-finished subject is simply redone).

One cache per manifest: `default_cache_dir(manifest)` (`$NDAE_CACHE/prepared/<key of the
manifest's absolute path>`) is where `ndae prepare` writes unless given `--out`, and where
`train`, `encode`, `evaluate`, `deviations --maps`, `audit --empirical` and a SuperNode without
a `cache-dir` read unless given another folder. Simulated sites (`ndae demo`, `flwr run .` in
simulation) share `simulation_cache_root()` instead, one folder per cohort site named by what the
cohort holds, not where its copy lies (`ndae.federation.site.data.site_cache_dir`), so a rerun
prepares nothing. Whatever the folder, a subject is reused only while its image's and mask's
SHA-256 and the preprocessing settings match its record: a changed scan or setting is prepared
again, never served stale. File names come from `subject_ids.subject_file` only, so no subject id
can name a file outside the cache.

The cache holds patient images: its folders are made 0700 and its files written 0600 (each a
temporary file renamed into place, so a full or read-only disk leaves nothing half-written and
stops the run with one error naming the folder). The `.npz` bytes depend only on the arrays (no
time stamps), so a parallel run (`jobs` > 1, see `ndae.data.prepare_pool`) writes the same
files as a serial one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pandas as pd

from ndae.data.demo import cache_root
from ndae.data.nifti import check_image_file
from ndae.data.preprocess import PrepareConfig, PreparedSubject, prepare_subject
from ndae.data.subject_ids import subject_file
from ndae.errors import InvalidImageError, ManifestError, NdaeError
from ndae.io import atomic_write_bytes, atomic_write_json

# A fixed zip time stamp: numpy's savez stamps each member with the current time.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def default_cache_dir(manifest_path: str | Path) -> Path:
    """The manifest's prepared-subject folder when no other is given (see the module docstring)."""
    key = hashlib.sha256(str(Path(manifest_path).resolve()).encode()).hexdigest()[:12]
    return cache_root() / "prepared" / key


def simulation_cache_root() -> Path:
    """Where simulated sites keep their prepared subjects when the run config names no cache-dir."""
    return cache_root() / "prepared" / "simulated"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance(row: pd.Series, config: PrepareConfig) -> dict:
    mask = row.get("mask")
    has_mask = isinstance(mask, str) and mask != ""
    # Type, size and header first: hashing /dev/zero or a folder would hang or crash.
    for path in (row["image"], mask) if has_mask else (row["image"],):
        check_image_file(path)
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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(saved, dict):  # valid JSON but not a record (edited or foreign): redo it
        return False
    keys = ("image_sha256", "mask_sha256", "config")
    return all(saved.get(key) == record[key] for key in keys)


def save_prepared(out_dir: Path, prepared: PreparedSubject, record: dict) -> None:
    """Write one subject (npz, then the JSON that marks it done), private; a write that fails
    (disk full, read-only) leaves no partial file and ends in one `NdaeError` naming the folder."""
    json_path, npz_path = _paths(out_dir, prepared.subject)
    arrays = {
        "image": prepared.image.astype(np.float16),  # 3 significant digits: ample for [-1, 1] MRI
        "mask": prepared.mask,
        "labels": prepared.labels,
        "slices": prepared.slices,
        "slice_z_mm": prepared.slice_z_mm,
        "grid_affine": prepared.grid_affine,
        "transform_mat": np.frombuffer(prepared.transform_mat, dtype=np.uint8),
    }
    try:
        make_private_dir(out_dir)
        atomic_write_bytes(npz_path, npz_bytes(arrays), private=True)
        atomic_write_json(json_path, {**record, "registered": prepared.registered, **prepared.meta}, private=True)
    except OSError as error:
        raise NdaeError(f"{out_dir}: cannot write the prepared subject {prepared.subject!r} "
                        f"({error.strerror or error}); nothing half-written is left, the subjects "
                        "already prepared are kept: free space or fix the folder's permissions and run again") from error


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """What `np.savez_compressed` writes, without its time stamps: equal arrays, equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asanyarray(value), allow_pickle=False)
    return buffer.getvalue()


def make_private_dir(folder: Path) -> None:
    """Create `folder` and its missing parents readable by the owner only (0700); a folder that
    exists already is left as its owner set it."""
    missing = []
    current = Path(folder)
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:  # made by a concurrent run meanwhile
            continue
        os.chmod(path, 0o700)  # mkdir's mode passes through the umask; this does not


def load_prepared(out_dir: str | Path, subject: str) -> PreparedSubject:
    json_path, npz_path = _paths(Path(out_dir), subject)
    try:
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
    except FileNotFoundError as error:
        raise NdaeError(f"{error.filename}: subject {subject!r} is not prepared in {out_dir} "
                        "(run `ndae prepare` for its manifest)") from error
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:  # JSONDecodeError is a ValueError
        raise NdaeError(f"{out_dir}: the cached files of subject {subject!r} are unreadable "
                        f"({type(error).__name__}: {error}); delete {npz_path.name} and {json_path.name} "
                        "and prepare again") from error


def prepare_manifest(
    manifest: pd.DataFrame, out_dir: str | Path, config: PrepareConfig = PrepareConfig(), *, progress: bool = True,
    jobs: int = 1,
) -> dict[str, int]:
    """Prepare every subject of a validated manifest into `out_dir`; returns counts.

    Every subject is tried: those that work are cached, and one `InvalidImageError` then lists
    every image that did not (so a consortium member fixes them all in one go). `jobs` > 1
    prepares that many subjects at once in worker processes; the files written and the errors
    reported are the same as with one job."""
    from tqdm.auto import tqdm

    from ndae.data.prepare_pool import check_prepare_jobs, ordered_map

    jobs = check_prepare_jobs(jobs)
    out_dir = Path(out_dir)
    rows = [row for _, row in manifest.iterrows()]
    for row in rows:  # every file name is checked before anything is written
        subject_file(out_dir, row["subject"], ".npz")
    failures: list[str] = []
    records: list[dict | None] = []
    for row in rows:
        try:
            records.append(provenance(row, config))
        except InvalidImageError as error:
            records.append(None)
            failures.append(f"subject {row['subject']!r}: {error}")
    _refuse_identical_images(rows, records)
    try:
        make_private_dir(out_dir)
    except OSError as error:
        raise NdaeError(f"{out_dir}: cannot create the prepared-subject folder ({error.strerror or error})") from error
    counts = {"prepared": 0, "cached": 0}
    todo = []
    for row, record in zip(rows, records):
        if record is None:
            continue
        if is_cached(out_dir, record):
            counts["cached"] += 1
        else:
            todo.append((row["image"], record["mask"], row["subject"], config, record))
    with ordered_map(_prepare_task, todo, jobs) as results:
        bar = tqdm(total=len(todo), desc="prepare", unit="subject", disable=not progress)
        for task in todo:
            subject, record = task[2], task[4]
            try:
                prepared, problem = next(results)
            except BrokenProcessPool as error:  # a worker killed (out of memory?) or crashed in a library
                raise NdaeError(f"{task[0]}: a worker process died while preparing subject {subject!r} or one "
                                f"beside it ({error}); the {counts['prepared']} subject(s) prepared so far are kept "
                                "in the cache: run again with fewer --jobs") from error
            bar.update()
            if problem is not None:
                failures.append(f"subject {subject!r}: {problem}")
                continue
            save_prepared(out_dir, prepared, record)
            counts["prepared"] += 1
        bar.close()
    if failures:
        done = counts["prepared"] + counts["cached"]
        listing = "\n  ".join(failures)
        raise InvalidImageError(f"{len(failures)} of {len(rows)} subject(s) could not be prepared "
                                f"({done} others are in {out_dir}):\n  {listing}")
    return counts


def _prepare_task(task: tuple) -> tuple[PreparedSubject | None, str | None]:
    """One subject (in a worker process or in this one): the result, or why its image is unusable."""
    image, mask, subject, config, _ = task
    try:
        return prepare_subject(image, mask, subject, config), None
    except InvalidImageError as error:
        return None, str(error)


def _refuse_identical_images(rows: list[pd.Series], records: list[dict | None]) -> None:
    """Two subjects whose images are byte-identical copies: one scan entered twice."""
    first: dict[str, str] = {}
    problems = []
    for row, record in zip(rows, records):
        if record is None:
            continue
        digest = record["image_sha256"]
        if digest in first:
            problems.append(f"subject {row['subject']!r}: image {row['image']} has the same content as "
                            f"subject {first[digest]!r}'s")
        else:
            first[digest] = row["subject"]
    if problems:
        listing = "\n  ".join(problems[:100] + ([f"... and {len(problems) - 100} more"] if len(problems) > 100 else []))
        raise ManifestError(f"{len(problems)} subject(s) repeat another subject's scan (each needs its own):\n  {listing}")


def _paths(out_dir: Path, subject: str) -> tuple[Path, Path]:
    return subject_file(out_dir, subject, ".json"), subject_file(out_dir, subject, ".npz")
