"""A BIDS dataset as a manifest: `participants.tsv` (participant_id, age, sex, group; optional
site, time, event, onset) and `sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_…]_T1w.nii[.gz]`.

Every participant either becomes a manifest row or is named with the reason it cannot be used,
so nobody silently drops out of a study. A small walker of the raw layout rather than pybids:
only the T1w images and participants.tsv are read, and pybids' database indexing and its
dependencies buy nothing for that.

Choices (stated, because BIDS allows more than one image per subject): the first session in
sort order that has a T1w image, and within it the image whose entities sort first (run-1 before
run-2); `notes` says which one was chosen among how many.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ndae.data.manifest import AGE_RANGE
from ndae.data.nifti import image_file_problem
from ndae.data.subject_ids import id_problem
from ndae.errors import ManifestError

T1W = re.compile(r"^(sub-[^_/]+)(?:_ses-([^_/]+))?(?:_[a-z]+-[^_/]+)*_T1w\.nii(?:\.gz)?$")
GROUP_NAMES = {"control": "control", "controls": "control", "hc": "control", "healthy": "control",
               "healthy control": "control", "ctrl": "control", "als": "als", "patient": "als", "pals": "als"}
SEX_NAMES = {"m": "M", "male": "M", "f": "F", "female": "F"}
MISSING = {"", "n/a", "na", "nan"}


@dataclass
class BidsManifest:
    rows: pd.DataFrame  # the manifest (image paths absolute)
    excluded: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["subject", "reason"]))
    notes: list[str] = field(default_factory=list)  # which image was chosen where there were several


def _t1w_images(root: Path) -> dict[str, list[tuple[str, Path]]]:
    """subject -> [(session or '', image path)] of every T1w under sub-*/[ses-*/]anat/."""
    found: dict[str, list[tuple[str, Path]]] = {}
    for subject_dir in sorted(p for p in root.glob("sub-*") if p.is_dir()):
        for anat in sorted([subject_dir / "anat", *subject_dir.glob("ses-*/anat")]):
            if not anat.is_dir():
                continue
            for image in sorted(anat.iterdir()):
                match = T1W.match(image.name)
                if match and match.group(1) == subject_dir.name:
                    found.setdefault(subject_dir.name, []).append((match.group(2) or "", image))
    return found


def _read_participants(root: Path) -> pd.DataFrame:
    path = root / "participants.tsv"
    if not path.is_file():
        raise ManifestError(f"{path}: missing (a BIDS dataset lists its participants in participants.tsv)")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as error:
        raise ManifestError(f"{path}: not a readable tab-separated file ({str(error).splitlines()[0][:200]})") from error
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ("participant_id", "age", "sex", "group") if c not in table.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(table.columns)})")
    return table


def _value(row: pd.Series, column: str) -> str | None:
    if column not in row.index:
        return None
    text = str(row[column]).strip()
    return None if text.lower() in MISSING else text


def _row_problem(row: pd.Series) -> tuple[dict | None, str | None]:
    """(manifest fields, None) or (None, why this participant cannot be used)."""
    age_text, sex_text, group_text = _value(row, "age"), _value(row, "sex"), _value(row, "group")
    try:
        age = float(age_text) if age_text is not None else None
    except ValueError:
        return None, f"age {age_text!r} is not a number (years)"
    if age is None:
        return None, "age is missing (n/a)"
    if not (np.isfinite(age) and AGE_RANGE[0] <= age <= AGE_RANGE[1]):
        return None, f"age {age_text} is outside {AGE_RANGE[0]:g}-{AGE_RANGE[1]:g} years"
    if sex_text is None:
        return None, "sex is missing (n/a)"
    sex = SEX_NAMES.get(sex_text.lower())
    if sex is None:
        return None, f"sex {sex_text!r} is not M/F/male/female (numeric codes are ambiguous)"
    if group_text is None:
        return None, "group is missing (n/a)"
    group = GROUP_NAMES.get(group_text.lower())
    if group is None:
        return None, f"group {group_text!r} is neither a control ({', '.join(sorted(k for k, v in GROUP_NAMES.items() if v == 'control'))}) nor a patient (als, patient, pals)"
    fields = {"age": age, "sex": sex, "group": group}
    time_text, event_text = _value(row, "time"), _value(row, "event")
    if time_text is not None:
        try:
            fields["time"] = float(time_text)
        except ValueError:
            return None, f"time {time_text!r} is not a number of months"
        if not (np.isfinite(fields["time"]) and fields["time"] >= 0):
            return None, f"time {time_text} must be a number of months >= 0"
    if event_text is not None:
        if event_text not in ("0", "1"):
            return None, f"event {event_text!r} must be 0 or 1"
        fields["event"] = int(event_text)
    if group == "als" and ("time" in row.index or "event" in row.index) and ("time" not in fields or "event" not in fields):
        return None, "a patient without time and event (the dataset has survival columns)"
    onset = _value(row, "onset")
    if onset is not None:
        fields["onset"] = onset.lower()
    return fields, None


def bids_to_manifest(root: str | Path, site: str | None = None) -> BidsManifest:
    """Walk the dataset at `root`; the manifest's rows and every excluded participant with why.
    `site`: the site of every row where participants.tsv has no `site` column (default: the
    dataset folder's name)."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder (expected the root of a BIDS dataset)")
    participants = _read_participants(root)
    images = _t1w_images(root)
    default_site = site or re.sub(r"[^A-Za-z0-9._-]+", "-", root.resolve().name).strip("-._") or "site"
    problem = id_problem(default_site)
    if problem:
        raise ManifestError(f"--site: {problem}")
    rows, excluded, notes, seen = [], [], [], set()
    for _, row in participants.iterrows():
        subject = str(row["participant_id"]).strip()
        if not subject.startswith("sub-"):
            subject = f"sub-{subject}"  # BIDS allows the bare label in participants.tsv
        if subject in seen:
            excluded.append((subject, "listed more than once in participants.tsv"))
            continue
        seen.add(subject)
        problem = id_problem(subject)
        if problem:
            excluded.append((subject, f"participant_id {problem}"))
            continue
        fields, why = _row_problem(row)
        if why:
            excluded.append((subject, why))
            continue
        found = images.get(subject, [])
        if not found:
            excluded.append((subject, "no T1w image (sub-*/[ses-*/]anat/*_T1w.nii[.gz])"))
            continue
        session, image = found[0]
        problem = image_file_problem(image)
        if problem:
            excluded.append((subject, f"T1w image {image.relative_to(root)} {problem}"))
            continue
        row_site = _value(row, "site") or default_site
        problem = id_problem(row_site)
        if problem:
            excluded.append((subject, f"site {problem}"))
            continue
        sessions = sorted({s for s, _ in found})
        if len(found) > 1:
            notes.append(f"{subject}: {image.name} chosen of {len(found)} T1w images"
                         + (f" in {len(sessions)} sessions" if len(sessions) > 1 else ""))
        rows.append({"subject": subject, "site": row_site, "image": str(image), **fields})
    for subject in sorted(set(images) - seen):
        excluded.append((subject, "has T1w images but no row in participants.tsv (no age, sex, group)"))
    frame = pd.DataFrame(rows)
    if not frame.empty:
        ordered = ["subject", "site", "image", "age", "sex", "group",
                   *[c for c in ("time", "event", "onset") if c in frame.columns]]
        frame = frame[ordered]
        if "event" in frame.columns:
            frame["event"] = frame["event"].astype("Int64")
    return BidsManifest(frame, pd.DataFrame(excluded, columns=["subject", "reason"]), notes)
