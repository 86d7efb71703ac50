"""bench_survival --share-dae: a DAE is reused only across cohorts whose controls are byte-identical."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.bench_survival import eval_folder_name, share_trained_dae


def _cohort(work: Path, name: str, control_bytes: bytes) -> Path:
    cohort = work / name
    (cohort / "images").mkdir(parents=True)
    (cohort / "images" / "c1.nii.gz").write_bytes(control_bytes)
    (cohort / "images" / "p1.nii.gz").write_bytes(b"patient " + name.encode())
    (cohort / "manifest.csv").write_text("subject,site,image,age,sex,group\n"
                                         "c1,s1,images/c1.nii.gz,50,M,control\np1,s1,images/p1.nii.gz,60,F,als\n")
    return cohort


def test_shares_only_between_identical_controls(tmp_path):
    args = argparse.Namespace(work=str(tmp_path), preset="tiny", steps=200, image_deviation_steps=0)
    als = _cohort(tmp_path, "cohort-seed0-k4", b"control image")
    finished = tmp_path / eval_folder_name(args, als, 0)
    (finished / "dae").mkdir(parents=True)
    (finished / "dae" / "checkpoint.pt").write_bytes(b"weights")
    (finished / "evaluation.json").write_text("{}")
    mild = _cohort(tmp_path, "cohort-seed0-k4-mild", b"control image")
    out = tmp_path / eval_folder_name(args, mild, 0)
    assert share_trained_dae(args, mild, out, 0)
    assert (out / "dae" / "checkpoint.pt").read_bytes() == b"weights"
    # another cohort seed's name, or controls that differ by one byte: nothing is shared
    other = _cohort(tmp_path, "cohort-seed0-k4-cortex-only", b"control imagE")
    assert not share_trained_dae(args, other, tmp_path / eval_folder_name(args, other, 0), 0)
    assert not share_trained_dae(args, mild, tmp_path / eval_folder_name(args, mild, 1), 1)  # no seed-1 run
    seed1 = _cohort(tmp_path, "cohort-seed1-k4-mild", b"control image")
    assert not share_trained_dae(args, seed1, tmp_path / eval_folder_name(args, seed1, 0), 0)
