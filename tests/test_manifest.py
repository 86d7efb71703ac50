"""Manifest validation reports every bad row at once, naming the row and the field."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ndae.data.manifest import read_manifest, write_manifest
from ndae.errors import ManifestError


def _write(tmp_path, rows, name="manifest.csv"):
    # Each row gets its own small valid NIfTI (rows may not share a scan; headers are checked):
    # the first keeps GOOD's a.nii.gz, the others scan<i>.nii.gz; "missing.nii.gz" stays missing.
    rows = [dict(row, image=f"scan{i}.nii.gz") if i and row["image"] == GOOD["image"] else dict(row)
            for i, row in enumerate(rows)]
    for row in rows:
        if row["image"] != "missing.nii.gz":
            nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(tmp_path / row["image"]))
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


GOOD = {"subject": "s1", "site": "A", "image": "a.nii.gz", "age": 60, "sex": "M", "group": "als", "time": 12.5, "event": 1}


def test_good_manifest_resolves_relative_paths(tmp_path):
    frame = read_manifest(_write(tmp_path, [GOOD]))
    assert frame.loc[0, "image"] == str((tmp_path / "a.nii.gz").resolve())
    assert frame.loc[0, "time"] == 12.5


def test_missing_column_is_named(tmp_path):
    rows = [{k: v for k, v in GOOD.items() if k != "sex"}]
    with pytest.raises(ManifestError, match="missing required column\\(s\\): sex"):
        read_manifest(_write(tmp_path, rows))


def test_all_bad_rows_reported_at_once(tmp_path):
    rows = [
        GOOD,
        {**GOOD, "subject": "s1"},  # duplicate
        {**GOOD, "subject": "s3", "group": "patient"},
        {**GOOD, "subject": "s4", "age": 250},
        {**GOOD, "subject": "s5", "time": -3},
        {**GOOD, "subject": "s6", "event": 2},
        {**GOOD, "subject": "s7", "image": "missing.nii.gz"},
        {**GOOD, "subject": "s8", "sex": "X"},
    ]
    with pytest.raises(ManifestError) as error:
        read_manifest(_write(tmp_path, rows))
    message = str(error.value)
    assert "8 bad row(s)" in message  # both copies of the duplicate count
    for fragment in [
        "row 2 (subject 's1'): duplicate subject",
        "row 4 (subject 's3'): group 'patient'",
        "row 5 (subject 's4'): age",
        "row 6 (subject 's5'): time -3",
        "row 7 (subject 's6'): event 2",
        "row 8 (subject 's7'): image file not found",
        "row 9 (subject 's8'): sex 'X'",
    ]:
        assert fragment in message, fragment


def test_patient_without_outcome(tmp_path):
    rows = [GOOD, {**GOOD, "subject": "s2", "time": None}]
    with pytest.raises(ManifestError, match="needs a time"):
        read_manifest(_write(tmp_path, rows))


def test_write_then_read_round_trip(tmp_path):
    frame = read_manifest(_write(tmp_path, [GOOD, {**GOOD, "subject": "c1", "group": "control", "time": None, "event": None}]))
    out = tmp_path / "copy" / "manifest.csv"
    (tmp_path / "copy").mkdir()
    write_manifest(frame, out, relative_to=tmp_path)
    again = read_manifest(out, check_files=False)
    assert list(again["subject"]) == ["s1", "c1"]
