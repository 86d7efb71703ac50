"""The manifest: the data contract of the whole system.

CSV with columns `subject, site, image, age, sex, group` and optional `mask, time, event`.
`group` is `control` or `als`; `time` in months (>= 0); `event` 0 (censored) or 1 (event), never
`true`/`yes`; `age` and `time` are plain decimal numbers (not Python's `4_0`, `inf`, `nan`). A NUL
byte anywhere is refused (pandas would end the field there). Paths are absolute or
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
import re
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
EVENT_ENCODING = "0 (censored) or 1 (event)"  # the only spellings accepted, also as 0.0 / 1.0


def read_manifest(path: str | Path, *, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a manifest; image/mask paths are returned absolute."""
    path = Path(path)
    problem = _manifest_file_problem(path)
    if problem:
        raise ManifestError(f"{path}: {problem}")
    lines = _check_field_counts(path)
    try:
        # The checked columns as text: pandas would otherwise turn `true` into 1 and `4_0` into 40.
        frame = pd.read_csv(path, dtype={name: str for name in ("subject", "site", "sex", "group", "age", "time", "event")},
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

    subjects = frame["subject"].tolist()

    def bad(index: int, message: str) -> None:
        problems.append(f"row {lines[index]} (subject {subjects[index]!r}): {message}")

    for column in ("image", "mask"):
        if column in frame.columns:
            frame[column] = _resolve_all(base_dir, frame[column].tolist())
    # Plain lists, not pandas rows: per-row pandas access made a 100,000-row manifest take a minute.
    columns = {name: frame[name].tolist() for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if name in frame.columns}
    absent = {name: frame[name].isna().tolist() for name in columns}
    sites, groups, sexes, images = columns["site"], columns["group"], columns["sex"], columns["image"]
    masks, times, events = columns.get("mask"), columns.get("time"), columns.get("event")
    ages = [_as_float(value) for value in columns["age"]]
    time_values = ([None if gap else _as_float(value) for value, gap in zip(times, absent["time"])]
                   if times is not None else None)
    event_values = ([None if gap else _as_event(value) for value, gap in zip(events, absent["event"])]
                    if events is not None else None)
    seen_subjects: dict[str, int] = {}
    for index, subject in enumerate(subjects):
        if isinstance(subject, str):
            seen_subjects[subject] = seen_subjects.get(subject, 0) + 1
    first_by_folded: dict[str, int] = {}
    file_problems: dict[str, str | None] = {}  # each distinct file is checked once
    image_owner: dict[object, int] = {}
    for index, subject in enumerate(subjects):
        problem = id_problem(None if absent["subject"][index] else subject)
        if problem == "is empty":
            bad(index, "empty subject")
        elif problem:
            bad(index, f"subject {problem}")
        elif seen_subjects[subject] > 1:
            bad(index, "duplicate subject")
        elif subject.casefold() in first_by_folded:
            other = first_by_folded[subject.casefold()]
            bad(index, f"duplicate subject: {subject!r} and row {lines[other]}'s {subjects[other]!r} "
                       "differ only in case (one file on a case-insensitive disk)")
        else:
            first_by_folded[subject.casefold()] = index
        problem = id_problem(None if absent["site"][index] else sites[index])
        if problem == "is empty":
            bad(index, "empty site")
        elif problem:
            bad(index, f"site {problem}")
        if groups[index] not in GROUPS:
            bad(index, f"group {groups[index]!r} is not one of {', '.join(GROUPS)}")
        if sexes[index] not in SEXES:
            bad(index, f"sex {sexes[index]!r} is not one of {', '.join(SEXES)}")
        age = ages[index]
        if age is None or not (AGE_RANGE[0] <= age <= AGE_RANGE[1]):
            bad(index, f"age {_shown(columns['age'][index])} is not a number in {AGE_RANGE[0]:g}–{AGE_RANGE[1]:g}")
        image = images[index]
        if absent["image"][index]:
            bad(index, "image path is empty")
        elif check_files:
            problem = _file_problem(image, file_problems)
            if problem:
                bad(index, _describe("image", image, problem))
            else:
                key = _file_identity(image)
                if key in image_owner:
                    other = image_owner[key]
                    bad(index, f"image {image} is also the image of row {lines[other]} "
                               f"(subject {subjects[other]!r}): each row needs its own scan")
                else:
                    image_owner[key] = index
        if masks is not None and not absent["mask"][index] and check_files:
            problem = _file_problem(masks[index], file_problems)
            if problem:
                bad(index, _describe("mask", masks[index], problem))
        if times is not None and not absent["time"][index]:
            if time_values[index] is None or time_values[index] < 0:
                bad(index, f"time {_shown(times[index])} must be a number of months >= 0")
        if events is not None and not absent["event"][index] and event_values[index] is None:
            bad(index, f"event {_shown(events[index])} must be {EVENT_ENCODING}")
        if groups[index] == "als" and times is not None and absent["time"][index]:
            bad(index, "an ALS patient needs a time (months)")
        if groups[index] == "als" and events is not None and absent["event"][index]:
            bad(index, "an ALS patient needs an event (0/1)")
    if problems:
        raise ManifestError(f"{source}: {len(problems)} bad row(s):\n  {_listing(problems)}")
    frame["age"] = np.asarray(ages, float)
    if time_values is not None:
        frame["time"] = np.asarray([np.nan if value is None else value for value in time_values], float)
    if event_values is not None:
        frame["event"] = pd.array(event_values, dtype="Int64")
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
            if any("\0" in name for name in header):
                raise ManifestError(f"{path}: the header contains a NUL byte (a binary file, or a damaged CSV)")
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise ManifestError(f"{path}: column(s) named twice in the header: {', '.join(repeated)}")
            lines, problems = [], []
            for record in reader:
                lines.append(reader.line_num)
                if len(record) > len(header):
                    problems.append(f"row {reader.line_num}: {len(record)} fields, the header has {len(header)} "
                                    "(an unquoted comma in a value?)")
                # pandas ends a field at a NUL byte: "s1\0evil" would be read as "s1".
                for name, value in zip(header, record):
                    if "\0" in value:
                        problems.append(f"row {reader.line_num}: column {name!r} contains a NUL byte")
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
    text = str(value)
    if os.path.isabs(text):
        return str(Path(text))
    return os.path.realpath(os.path.join(base_dir, text))  # what Path.resolve() gives, faster


def _relative(base: Path, value) -> str | float:
    if pd.isna(value):
        return value
    try:
        return str(Path(value).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(value)


# A decimal number as people and spreadsheets write it. Python's float() also takes "4_0" (40),
# "nan", "inf" and "infinity"; pandas would take "true" as 1: none of those is a number here.
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _resolve_all(base_dir: Path, values: list) -> list:
    """`_resolve` of each value; a path named by many rows is resolved once."""
    resolved: dict[str, str | float] = {}
    out = []
    for value in values:
        if not isinstance(value, str):
            out.append(_resolve(base_dir, value))
            continue
        if value not in resolved:
            resolved[value] = _resolve(base_dir, value)
        out.append(resolved[value])
    return out


def _as_float(value) -> float | None:
    """A finite number from a number or its plain decimal spelling (surrounding spaces allowed);
    None for anything else (booleans included)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
    elif isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        number = float(value)
    else:
        return None
    return number if np.isfinite(number) else None


def _as_event(value) -> int | None:
    number = _as_float(value)
    return int(number) if number in (0.0, 1.0) else None


def _shown(value) -> str:
    """A value for an error message: a plain number as written, anything else quoted."""
    if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        return value.strip()
    return repr(value)
