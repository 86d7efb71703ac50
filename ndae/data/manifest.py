"""The manifest: the data contract of the whole system.

CSV with columns `subject, site, image, age, sex, group` and optional `mask, time, event`.
`group` is `control` or `als`; `time` in months (>= 0); `event` 0/1. Paths are absolute or
relative to the manifest's folder. Validation reports every bad row at once (the first
`MAX_LISTED` of them, with the count of the rest).

Subject and site ids name files, so they must match `ndae.data.subject_ids.ID_PATTERN`
(1-128 characters from `A-Z a-z 0-9 . _ -`, starting with a letter or digit; no spaces); a
subject appears once (also up to case). Each row's image is its own: two rows naming the same
image file (same path, symlink or hard link) are refused, since a manifest that repeats one
scan (10,000 rows of one file) is a mistake that would otherwise cost hours of preprocessing.
A manifest with no rows is refused.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ndae.data.nifti import image_file_problem
from ndae.data.subject_ids import id_problem
from ndae.errors import ManifestError

REQUIRED_COLUMNS = ("subject", "site", "image", "age", "sex", "group")
OPTIONAL_COLUMNS = ("mask", "time", "event")
GROUPS = ("control", "als")
SEXES = ("M", "F")
AGE_RANGE = (0.0, 120.0)
MAX_LISTED = 100  # bad rows spelled out in one error; the rest are counted


def read_manifest(path: str | Path, *, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a manifest; image/mask paths are returned absolute."""
    path = Path(path)
    problem = _manifest_file_problem(path)
    if problem:
        raise ManifestError(f"{path}: {problem}")
    lines = _check_field_counts(path)
    try:
        frame = pd.read_csv(path, dtype={"subject": str, "site": str, "sex": str, "group": str},
                            index_col=False, skip_blank_lines=False)
    except Exception as error:
        raise ManifestError(f"{path}: not a readable CSV ({error})") from error
    # Blank lines are skipped (and kept out of the row numbers' way: a row is named by its line).
    if len(frame) != len(lines):  # the csv module and pandas split records differently: count rows instead
        lines = [i + 2 for i in range(len(frame))]
    frame = frame[~frame.isna().all(axis=1)]
    line_numbers = [lines[i] for i in frame.index]
    return validate_manifest(frame.reset_index(drop=True), base_dir=path.parent, source=str(path),
                             check_files=check_files, line_numbers=line_numbers)


def validate_manifest(
    frame: pd.DataFrame, *, base_dir: str | Path = ".", source: str = "manifest", check_files: bool = True,
    line_numbers: list[int] | None = None,
) -> pd.DataFrame:
    """Validate a manifest table; `line_numbers[i]`: the CSV line of row i (default i + 2)."""
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise ManifestError(f"{source}: missing required column(s): {', '.join(missing)}")
    if len(frame) == 0:
        raise ManifestError(f"{source}: no subjects (a header but no rows)")
    frame = frame.reset_index(drop=True).copy()
    lines = list(line_numbers) if line_numbers is not None else [i + 2 for i in range(len(frame))]  # +2: header, 1-based
    base_dir = Path(base_dir)
    problems: list[str] = []

    def bad(index: int, message: str) -> None:
        problems.append(f"row {lines[index]} (subject {frame.at[index, 'subject']!r}): {message}")

    duplicated = frame["subject"].duplicated(keep=False)
    folded = frame["subject"].map(lambda s: s.casefold() if isinstance(s, str) else s)
    first_by_folded: dict[str, int] = {}
    for column in ("image", "mask"):
        if column in frame.columns:
            frame[column] = [_resolve(base_dir, value) for value in frame[column]]
    file_problems: dict[str, str | None] = {}  # each distinct file is checked once
    image_owner: dict[object, int] = {}
    for index, row in frame.iterrows():
        subject = row["subject"]
        problem = id_problem(None if pd.isna(subject) else subject)
        if problem == "is empty":
            bad(index, "empty subject")
        elif problem:
            bad(index, f"subject {problem}")
        elif duplicated[index]:
            bad(index, "duplicate subject")
        elif folded[index] in first_by_folded:
            other = first_by_folded[folded[index]]
            bad(index, f"duplicate subject: {subject!r} and row {lines[other]}'s {frame.at[other, 'subject']!r} "
                       "differ only in case (one file on a case-insensitive disk)")
        else:
            first_by_folded[folded[index]] = index
        problem = id_problem(None if pd.isna(row["site"]) else row["site"])
        if problem == "is empty":
            bad(index, "empty site")
        elif problem:
            bad(index, f"site {problem}")
        if row["group"] not in GROUPS:
            bad(index, f"group {row['group']!r} is not one of {', '.join(GROUPS)}")
        if row["sex"] not in SEXES:
            bad(index, f"sex {row['sex']!r} is not one of {', '.join(SEXES)}")
        age = _as_float(row["age"])
        if age is None or not (AGE_RANGE[0] <= age <= AGE_RANGE[1]):
            bad(index, f"age {row['age']!r} is not a number in {AGE_RANGE[0]:g}–{AGE_RANGE[1]:g}")
        if pd.isna(row["image"]):
            bad(index, "image path is empty")
        elif check_files:
            problem = _file_problem(row["image"], file_problems)
            if problem:
                bad(index, _describe("image", row["image"], problem))
            else:
                key = _file_identity(row["image"])
                if key in image_owner:
                    other = image_owner[key]
                    bad(index, f"image {row['image']} is also the image of row {lines[other]} "
                               f"(subject {frame.at[other, 'subject']!r}): each row needs its own scan")
                else:
                    image_owner[key] = index
        if "mask" in frame.columns and not pd.isna(row["mask"]) and check_files:
            problem = _file_problem(row["mask"], file_problems)
            if problem:
                bad(index, _describe("mask", row["mask"], problem))
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
        raise ManifestError(f"{source}: {len(problems)} bad row(s):\n  {_listing(problems)}")
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


def _manifest_file_problem(path: Path) -> str | None:
    if not path.exists():
        return "manifest does not exist"
    if path.is_dir():
        return "is a folder, not a manifest CSV"
    if not path.is_file():  # a device or pipe (/dev/zero) would be read for ever
        return "is not a regular file"
    return None


def _check_field_counts(path: Path) -> list[int]:
    """The CSV line of each data record; refuses records with more fields than the header
    (pandas would silently take the extra column as the row index)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise ManifestError(f"{path}: empty file (no header)")
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise ManifestError(f"{path}: column(s) named twice in the header: {', '.join(repeated)}")
            lines, problems = [], []
            for record in reader:
                lines.append(reader.line_num)
                if len(record) > len(header):
                    problems.append(f"row {reader.line_num}: {len(record)} fields, the header has {len(header)} "
                                    "(an unquoted comma in a value?)")
    except (UnicodeDecodeError, csv.Error) as error:
        raise ManifestError(f"{path}: not a readable UTF-8 CSV ({error})") from error
    if problems:
        raise ManifestError(f"{path}: {len(problems)} bad row(s):\n  {_listing(problems)}")
    return lines


def _file_problem(path: str, seen: dict[str, str | None]) -> str | None:
    if path not in seen:
        seen[path] = image_file_problem(path)
    return seen[path]


def _describe(column: str, path: str, problem: str) -> str:
    if problem == "file does not exist":
        return f"{column} file not found: {path}"
    return f"{column} {path}: {problem}"


def _file_identity(path: str) -> object:
    """The same file under any name (symlink, hard link): device and inode."""
    info = os.stat(path)
    return (info.st_dev, info.st_ino)


def _listing(problems: list[str]) -> str:
    shown = problems[:MAX_LISTED]
    more = len(problems) - len(shown)
    return "\n  ".join(shown + ([f"... and {more} more"] if more else []))


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
