"""Manifest values are read exactly as written: no NUL byte cuts a field short, no number is
guessed from `4_0` or `true`, and a huge bad manifest is refused in seconds."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ndae.data.manifest import read_manifest, validate_manifest
from ndae.errors import ManifestError

HEADER = "subject,site,image,age,sex,group,time,event"


def _scan(folder, name="a.nii.gz"):
    path = folder / name
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(path))
    return path


def _write(folder, lines, name="manifest.csv", mode="w"):
    path = folder / name
    text = "\n".join([HEADER, *lines]) + "\n"
    if mode == "wb":
        path.write_bytes(text.encode())
    else:
        path.write_text(text)
    return path


def test_a_nul_byte_in_a_field_is_named_not_truncated(tmp_path):
    _scan(tmp_path)
    path = _write(tmp_path, ["s1\0evil,A,a.nii.gz,60,M,control,,"], mode="wb")
    with pytest.raises(ManifestError, match=r"row 2: column 'subject' contains a NUL byte"):
        read_manifest(path)


def test_a_nul_byte_in_the_header_is_named(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_bytes(b"subject,site\0,image,age,sex,group\ns1,A,a.nii.gz,60,M,control\n")
    with pytest.raises(ManifestError, match="header .*NUL byte"):
        read_manifest(path)


@pytest.mark.parametrize("column, value", [("age", "4_0"), ("age", "0x3C"), ("age", "6e1_0"),
                                           ("time", "1_2"), ("event", "1_0")])
def test_underscores_and_other_python_literals_are_not_numbers(tmp_path, column, value):
    _scan(tmp_path)
    row = {"subject": "s1", "site": "A", "image": "a.nii.gz", "age": "60", "sex": "M", "group": "als",
           "time": "12", "event": "1"}
    row[column] = value
    path = _write(tmp_path, [",".join(row.values())])
    with pytest.raises(ManifestError, match=f"row 2 .*{column} '{value}'"):
        read_manifest(path)


@pytest.mark.parametrize("value", ["true", "false", "True", "yes", "2", "-1", "0.5"])
def test_event_accepts_only_0_or_1(tmp_path, value):
    _scan(tmp_path)
    path = _write(tmp_path, [f"s1,A,a.nii.gz,60,M,als,12,{value}"])
    with pytest.raises(ManifestError, match=rf"row 2 .*event '?{value}'? must be 0 \(censored\) or 1 \(event\)"):
        read_manifest(path)


def test_a_boolean_event_column_is_refused_in_a_table_too(tmp_path):
    _scan(tmp_path)
    frame = pd.DataFrame([{"subject": "s1", "site": "A", "image": "a.nii.gz", "age": 60.0, "sex": "M",
                           "group": "als", "time": 12.0, "event": True}])
    with pytest.raises(ManifestError, match="event True must be 0"):
        validate_manifest(frame, base_dir=tmp_path)


def test_plain_numbers_in_their_usual_spellings_still_read(tmp_path):
    for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz"):
        _scan(tmp_path, name)
    path = _write(tmp_path, ["s1,A,a.nii.gz,60,M,als,12.5,1", "s2,A,b.nii.gz, 61.5 ,F,als,3e1,0.0",
                             "s3,A,c.nii.gz,+7,F,control,,"])
    frame = read_manifest(path)
    assert frame["age"].tolist() == [60.0, 61.5, 7.0]
    assert frame["time"].tolist()[:2] == [12.5, 30.0] and pd.isna(frame["time"].iloc[2])
    assert frame["event"].tolist()[:2] == [1, 0] and str(frame["event"].dtype) == "Int64"


def test_a_hundred_thousand_bad_rows_are_refused_in_seconds(tmp_path):
    image = _scan(tmp_path)
    lines = [f"s{i},A,{image},abc,M,control,," for i in range(100_000)]
    path = _write(tmp_path, lines)
    # CPU seconds of this process: the shared test machine's load must not decide the verdict.
    started = time.process_time()
    with pytest.raises(ManifestError) as error:
        read_manifest(path)
    elapsed = time.process_time() - started
    message = str(error.value)
    # Every row is bad twice over: its age, and (from row 3 on) a scan another row already names.
    assert "199999 bad row(s)" in message and "row 2 (subject 's0'): age 'abc'" in message
    assert "... and 199899 more" in message
    assert elapsed < 3.5, elapsed  # CPU seconds; row-by-row pandas access took twice that and more
