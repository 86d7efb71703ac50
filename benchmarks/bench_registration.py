"""Affine registration of IXI scans to MNI152 (ANTsPy) on one CPU core: seconds per scan.

    python -m benchmarks.bench_registration [--ixi ../shared/data/ixi] [--subjects 3]
"""

from __future__ import annotations

import argparse
import os

# The section reports seconds per scan on one core (a figure that does not depend on the machine's
# core count): ITK reads this when ANTs is first imported.
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"

import time  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import write_section  # noqa: E402
from ndae.data.nifti import load_nifti  # noqa: E402
from ndae.data.registration import register_to_mni  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ixi", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "ixi")
    parser.add_argument("--subjects", type=int, default=3)
    args = parser.parse_args()
    subjects = sorted(p.name.replace("_T1.nii.gz", "") for p in (args.ixi / "T1").glob("*_T1.nii.gz"))[: args.subjects]
    rows = []
    for subject in subjects:
        image = load_nifti(args.ixi / "T1" / f"{subject}_T1.nii.gz")
        labels = load_nifti(args.ixi / "labels" / f"{subject}_T1_DLMUSE.nii.gz", is_label=True)
        brain = nib.Nifti1Image(image.get_fdata(dtype=np.float32) * (np.asarray(labels.dataobj) > 0), image.affine)
        start = time.perf_counter()
        register_to_mni(brain)
        rows.append((subject, time.perf_counter() - start))
        print(f"{subject}: {rows[-1][1]:.1f} s")
    seconds = np.array([r[1] for r in rows])
    body = "| subject | seconds (1 core) |\n|---|---|\n" + "".join(f"| {s} | {t:.1f} |\n" for s, t in rows)
    body += f"\nMean {seconds.mean():.1f} s, max {seconds.max():.1f} s per scan (target: under ~10 s). "
    body += "ANTs `Affine` (rigid then affine, mutual information, 4 levels), skull-stripped scan → MNI152 2 mm brain.\n"
    print(write_section("registration", "Registration to MNI152 (one CPU core)", body))


if __name__ == "__main__":
    main()
