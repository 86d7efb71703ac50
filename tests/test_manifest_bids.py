"""`ndae manifest --bids`: a BIDS dataset (participants.tsv + T1w images) becomes a manifest, and
every participant that cannot be used is named with why."""

import os

import pandas as pd
import pytest

from ndae.cli import main
from ndae.data.manifest import read_manifest


def _scan(bids, relative, source):
    target = bids / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source, target)


@pytest.fixture()
def bids(tmp_path, ixi_dir):
    scans = sorted((ixi_dir / "T1").glob("*.nii.gz"))[:3]
    root = tmp_path / "my-study"
    root.mkdir()
    _scan(root, "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz", scans[0])
    _scan(root, "sub-01/ses-02/anat/sub-01_ses-02_T1w.nii.gz", scans[1])  # a second session: not used
    _scan(root, "sub-02/anat/sub-02_run-1_T1w.nii.gz", scans[2])
    _scan(root, "sub-03/anat/sub-03_T1w.nii.gz", scans[0])  # usable image, but sex unusable
    (root / "sub-04" / "anat").mkdir(parents=True)  # in participants.tsv, no image
    _scan(root, "sub-05/anat/sub-05_T1w.nii.gz", scans[1])  # image, not in participants.tsv
    (root / "sub-06" / "anat").mkdir(parents=True)
    (root / "sub-06" / "anat" / "sub-06_T1w.nii.gz").write_bytes(b"")  # an empty file
    (root / "sub-07" / "anat").mkdir(parents=True)
    (root / "sub-07" / "anat" / "sub-07_T2w.nii.gz").symlink_to(scans[2])  # no T1w
    rows = ["participant_id\tage\tsex\tgroup\ttime\tevent",
            "sub-01\t61.5\tF\tcontrol\tn/a\tn/a",
            "sub-02\t70\tmale\tALS\t18.5\t1",
            "sub-03\t55\t1\tcontrol\tn/a\tn/a",
            "sub-04\t50\tM\tcontrol\tn/a\tn/a",
            "sub-06\t52\tM\tcontrol\tn/a\tn/a",
            "sub-07\t66\tF\tals\t12\t0",
            "sub-08\tn/a\tF\tcontrol\tn/a\tn/a",
            "sub-09\t60\tF\tals\tn/a\tn/a"]
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


def test_a_bids_dataset_becomes_a_manifest_and_names_every_subject_left_out(bids, tmp_path, capsys):
    out = tmp_path / "out" / "manifest.csv"
    assert main(["manifest", "--bids", str(bids), "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    manifest = read_manifest(out)  # the project's own validation, files checked
    assert list(manifest["subject"]) == ["sub-01", "sub-02"]
    assert list(manifest["site"]) == ["my-study", "my-study"]
    assert list(manifest["group"]) == ["control", "als"] and list(manifest["sex"]) == ["F", "M"]
    assert manifest["image"][0].endswith("sub-01_ses-01_T1w.nii.gz")  # the first session
    assert manifest.loc[1, "time"] == 18.5 and manifest.loc[1, "event"] == 1
    excluded = pd.read_csv(out.with_name("manifest_excluded.csv")).set_index("subject")["reason"]
    assert set(excluded.index) == {"sub-03", "sub-04", "sub-05", "sub-06", "sub-07", "sub-08", "sub-09"}
    assert "sex '1'" in excluded["sub-03"]
    assert "no T1w image" in excluded["sub-04"] and "no T1w image" in excluded["sub-07"]
    assert "no row in participants.tsv" in excluded["sub-05"]
    assert "is empty" in excluded["sub-06"]
    assert "age is missing" in excluded["sub-08"]
    assert "without time and event" in excluded["sub-09"]
    for subject in excluded.index:
        assert f"excluded {subject}:" in printed
    assert "sub-01: sub-01_ses-01_T1w.nii.gz chosen of 2 T1w images in 2 sessions" in printed


def test_a_site_column_and_the_site_flag(bids, tmp_path, capsys):
    out = tmp_path / "manifest.csv"
    assert main(["manifest", "--bids", str(bids), "--out", str(out), "--site", "hospital-a"]) == 0
    assert set(pd.read_csv(out)["site"]) == {"hospital-a"}
    table = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    table.insert(1, "site", ["north", "south", "x", "x", "x", "x", "x", "x"])
    table.to_csv(bids / "participants.tsv", sep="\t", index=False)
    assert main(["manifest", "--bids", str(bids), "--out", str(out), "--force"]) == 0
    assert list(pd.read_csv(out)["site"]) == ["north", "south"]


@pytest.mark.parametrize("problem, expected", [
    ("no participants", "participants.tsv: missing"),
    ("no group column", "missing column(s) group"),
    ("nobody usable", "no participant can be used"),
    ("not a folder", "not a folder"),
])
def test_bad_datasets_end_in_one_line_and_write_nothing(tmp_path, capsys, problem, expected):
    root = tmp_path / "ds"
    if problem != "not a folder":
        root.mkdir()
    if problem == "no group column":
        (root / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t50\tM\n")
    if problem == "nobody usable":
        (root / "participants.tsv").write_text("participant_id\tage\tsex\tgroup\nsub-01\t50\tM\tcontrol\n")
    out = tmp_path / "manifest.csv"
    assert main(["manifest", "--bids", str(root), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert expected in error and "Traceback" not in error and len(error.strip().splitlines()) == 1
    assert not out.exists()


def test_an_existing_manifest_is_not_replaced_without_force(bids, tmp_path, capsys):
    out = tmp_path / "manifest.csv"
    out.write_text("keep me\n")
    assert main(["manifest", "--bids", str(bids), "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err and out.read_text() == "keep me\n"
