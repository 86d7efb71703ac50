"""The manifest: the data contract of the whole system.

CSV with columns `subject, site, image, age, sex, group` and optional `mask, time, event`.
`group` is `control` or `als`; `time` in months (>= 0); `event` 0/1. Paths are absolute or
relative to the manifest's folder. Validation reports every bad row at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ndae.errors import ManifestError

REQUIRED_COLUMNS = ("subject", "site", "image", "age", "sex", "group")
OPTIONAL_COLUMNS = ("mask", "time", "event")
GROUPS = ("control", "als")
SEXES = ("M", "F")
AGE_RANGE = (0.0, 120.0)


def read_manifest(path: str | Path, *, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a manifest; image/mask paths are returned absolute."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: manifest does not exist")
    try:
        frame = pd.read_csv(path, dtype={"subject": str, "site": str, "sex": str, "group": str})
    except Exception as error:
        raise ManifestError(f"{path}: not a readable CSV ({error})") from error
    return validate_manifest(frame, base_dir=path.parent, source=str(path), check_files=check_files)


def validate_manifest(
    frame: pd.DataFrame, *, base_dir: str | Path = ".", source: str = "manifest", check_files: bool = True
) -> pd.DataFrame:
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise ManifestError(f"{source}: missing required column(s): {', '.join(missing)}")
    frame = frame.copy()
    base_dir = Path(base_dir)
    problems: list[str] = []

    def bad(index: int, message: str) -> None:
        subject = frame.at[index, "subject"]
        # +2: header line, and CSV lines are 1-based.
        problems.append(f"row {index + 2} (subject {subject!r}): {message}")

    duplicated = frame["subject"].duplicated(keep=False)
    for column in ("image", "mask"):
        if column in frame.columns:
            frame[column] = [_resolve(base_dir, value) for value in frame[column]]
    for index, row in frame.iterrows():
        if pd.isna(row["subject"]) or str(row["subject"]).strip() == "":
            bad(index, "empty subject")
        elif duplicated[index]:
            bad(index, "duplicate subject")
        if pd.isna(row["site"]) or str(row["site"]).strip() == "":
            bad(index, "empty site")
        if row["group"] not in GROUPS:
            bad(index, f"group {row['group']!r} is not one of {', '.join(GROUPS)}")
        if row["sex"] not in SEXES:
            bad(index, f"sex {row['sex']!r} is not one of {', '.join(SEXES)}")
        age = _as_float(row["age"])
        if age is None or not (AGE_RANGE[0] <= age <= AGE_RANGE[1]):
            bad(index, f"age {row['age']!r} is not a number in {AGE_RANGE[0]:g}–{AGE_RANGE[1]:g}")
        if pd.isna(row["image"]):
            bad(index, "image path is empty")
        elif check_files and not Path(row["image"]).exists():
            bad(index, f"image file not found: {row['image']}")
        if "mask" in frame.columns and not pd.isna(row["mask"]) and check_files and not Path(row["mask"]).exists():
            bad(index, f"mask file not found: {row['mask']}")
        if "time" in frame.columns and not pd.isna(row["time"]):
            time = _as_float(row["time"])
            if time is None or time < 0:
                bad(index, f"time {row['time']!r} must be a number of months >= 0")
        if "event" in frame.columns and not pd.isna(row["event"]):
            if _as_float(row["event"]) not in (0.0, 1.0):
                bad(index, f"event {row['event']!r} must be 0 or 1")
        if row["group"] == "als" and "time" in frame.columns and pd.isna(row["time"]):
            bad(index, "an ALS patient needs a time (months)")
        if row["group"] == "als" and "event" in frame.columns and pd.isna(row["event"]):
            bad(index, "an ALS patient needs an event (0/1)")
    if problems:
        listing = "\n  ".join(problems)
        raise ManifestError(f"{source}: {len(problems)} bad row(s):\n  {listing}")
    frame["age"] = frame["age"].astype(float)
    if "time" in frame.columns:
        frame["time"] = frame["time"].astype(float)
    if "event" in frame.columns:
        frame["event"] = frame["event"].astype("Int64")
    return frame


def write_manifest(frame: pd.DataFrame, path: str | Path, *, relative_to: str | Path | None = None) -> None:
    """Write a manifest atomically, making image/mask paths relative to its folder when possible."""
    from ndae.io import atomic_write_text

    path = Path(path)
    base = Path(relative_to) if relative_to is not None else path.parent
    frame = frame.copy()
    for column in ("image", "mask"):
        if column in frame.columns:
            frame[column] = [_relative(base, value) for value in frame[column]]
    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))


def _resolve(base_dir: Path, value) -> str | float:
    if pd.isna(value) or str(value).strip() == "":
        return np.nan
    value = Path(str(value))
    return str(value if value.is_absolute() else (base_dir / value).resolve())


def _relative(base: Path, value) -> str | float:
    if pd.isna(value):
        return value
    try:
        return str(Path(value).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(value)


def _as_float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None
